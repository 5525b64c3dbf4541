// biome-ignore lint/style/noRestrictedImports: payload, not a choice: incompressible bytes for the upload probe
import { randomBytes } from "node:crypto";

export type EgressUpload = (
  chunks: AsyncIterable<Uint8Array>,
) => Promise<{ bytesReceived: number; durationMs: number }>;

export const DEFAULT_EGRESS_PROBE_BYTES = 4 * 1024 * 1024;
export const DEFAULT_EGRESS_CHUNK_BYTES = 64 * 1024;

async function* randomChunks(totalBytes: number, chunkBytes: number): AsyncGenerator<Uint8Array> {
  let remaining = totalBytes;
  while (remaining > 0) {
    const size = Math.min(chunkBytes, remaining);
    // Random bytes, so that compression on the path cannot inflate the measured rate.
    yield randomBytes(size);
    remaining -= size;
  }
}

function requirePositiveInteger(name: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0) {
    throw new RangeError(`${name} must be a positive integer, got "${value}"`);
  }
}

/**
 * Upload bandwidth to the coordinator, in whole Mbps (at least 1). The rate uses the bytes
 * and duration the receiving side reports, since bytes still in local socket buffers when the
 * sender finishes have not yet crossed the network.
 */
export async function measureEgressMbps(
  upload: EgressUpload,
  options: { totalBytes?: number; chunkBytes?: number } = {},
): Promise<number> {
  const totalBytes = options.totalBytes ?? DEFAULT_EGRESS_PROBE_BYTES;
  const chunkBytes = options.chunkBytes ?? DEFAULT_EGRESS_CHUNK_BYTES;
  requirePositiveInteger("totalBytes", totalBytes);
  requirePositiveInteger("chunkBytes", chunkBytes);

  const { bytesReceived, durationMs } = await upload(randomChunks(totalBytes, chunkBytes));
  if (!Number.isFinite(bytesReceived) || bytesReceived <= 0) {
    throw new Error(`egress probe: the coordinator received no data (${bytesReceived} bytes)`);
  }
  if (!Number.isFinite(durationMs) || durationMs < 0) {
    throw new Error(`egress probe: invalid duration ${durationMs} ms`);
  }
  // A sub-millisecond upload (loopback) would otherwise divide by zero or near zero.
  const seconds = Math.max(durationMs, 1) / 1000;
  const mbps = (bytesReceived * 8) / 1e6 / seconds;
  return Math.max(1, Math.round(mbps));
}

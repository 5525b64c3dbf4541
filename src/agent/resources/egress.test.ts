import { describe, expect, it } from "vitest";
import { type EgressUpload, measureEgressMbps } from "./egress.js";

/** A fake coordinator: drains the stream and reports a fixed duration. */
function fakeUpload(durationMs: number, seen: Uint8Array[] = []): EgressUpload {
  return async (chunks) => {
    let bytesReceived = 0;
    for await (const chunk of chunks) {
      seen.push(chunk);
      bytesReceived += chunk.byteLength;
    }
    return { bytesReceived, durationMs };
  };
}

describe("measureEgressMbps", () => {
  it("REQ-010 computes Mbps from the bytes and time the receiver reports", async () => {
    const seen: Uint8Array[] = [];
    // 4 MiB in one second = 33.55 Mbps.
    expect(await measureEgressMbps(fakeUpload(1000, seen))).toBe(34);
    expect(seen).toHaveLength(64);
    expect(seen.every((chunk) => chunk.byteLength === 64 * 1024)).toBe(true);
  });

  it("REQ-010 sends random data so compression cannot inflate the rate", async () => {
    const seen: Uint8Array[] = [];
    await measureEgressMbps(fakeUpload(1000, seen), { totalBytes: 8192, chunkBytes: 4096 });
    const [first, second] = seen;
    expect(first).toBeDefined();
    expect(new Set(first).size).toBeGreaterThan(16);
    expect(Buffer.from(first!).equals(Buffer.from(second!))).toBe(false);
  });

  it("honours totalBytes and chunkBytes, with a short last chunk", async () => {
    const seen: Uint8Array[] = [];
    // 100 000 bytes in 100 ms = 8 Mbps.
    const mbps = await measureEgressMbps(fakeUpload(100, seen), {
      totalBytes: 100_000,
      chunkBytes: 30_000,
    });
    expect(seen.map((chunk) => chunk.byteLength)).toEqual([30_000, 30_000, 30_000, 10_000]);
    expect(mbps).toBe(8);
  });

  it.each([
    [0, 33_554],
    [0.2, 33_554],
    [1, 33_554],
    [2, 16_777],
  ])("floors a duration of %d ms at 1 ms", async (durationMs, expected) => {
    expect(await measureEgressMbps(fakeUpload(durationMs))).toBe(expected);
  });

  it("REQ-010 returns at least 1 Mbps", async () => {
    expect(await measureEgressMbps(fakeUpload(60_000), { totalBytes: 1000 })).toBe(1);
  });

  it("uses bytesReceived, not bytes sent", async () => {
    const upload: EgressUpload = async (chunks) => {
      for await (const _ of chunks) {
        // drain
      }
      return { bytesReceived: 1_000_000, durationMs: 1000 };
    };
    expect(await measureEgressMbps(upload)).toBe(8);
  });

  it.each([
    [{ bytesReceived: 0, durationMs: 1000 }, "received no data"],
    [{ bytesReceived: Number.NaN, durationMs: 1000 }, "received no data"],
    [{ bytesReceived: 1000, durationMs: -1 }, "invalid duration"],
    [{ bytesReceived: 1000, durationMs: Number.NaN }, "invalid duration"],
  ])("rejects a nonsensical report %j", async (report, message) => {
    await expect(measureEgressMbps(async () => report)).rejects.toThrow(message);
  });

  it.each([
    [{ totalBytes: 0 }, "totalBytes"],
    [{ totalBytes: 1.5 }, "totalBytes"],
    [{ chunkBytes: -1 }, "chunkBytes"],
  ])("rejects options %j", async (options, name) => {
    await expect(measureEgressMbps(fakeUpload(1), options)).rejects.toThrow(name);
  });
});

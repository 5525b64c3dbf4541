import { statfs } from "node:fs/promises";

const BYTES_PER_GIB = 1024 ** 3;

/** Rounds to two decimals: enough for scheduling, and stable across heartbeats. */
export function roundGiB(gib: number): number {
  return Math.round(gib * 100) / 100;
}

/**
 * Size of the filesystem holding dataDir. Free space is what an unprivileged process can
 * use (bavail), not bfree, because the agent does not run workloads in the root reserve.
 */
export async function statStorageGiB(
  dataDir: string,
): Promise<{ totalGiB: number; freeGiB: number }> {
  const stats = await statfs(dataDir);
  return {
    totalGiB: roundGiB((stats.blocks * stats.bsize) / BYTES_PER_GIB),
    freeGiB: roundGiB((stats.bavail * stats.bsize) / BYTES_PER_GIB),
  };
}

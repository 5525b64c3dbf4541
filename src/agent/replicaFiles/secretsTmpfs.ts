/**
 * The one tmpfs per agent that holds replicas' secret files (REQ-063, ADR 0055): secret
 * values live in memory, never on the node's disk. It stays mounted while any replica
 * has files in it (replicas outlive agent restarts, ADR 0031) and is unmounted when the
 * agent stops with none left.
 */
import { execFile } from "node:child_process";
import { mkdir, readdir, readFile, rmdir } from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * 256 MiB: a cap, not a reservation (tmpfs takes memory as files are written). A secret
 * is at most 256 KiB (limits.ts) and a swap briefly holds two versions, so this is ~500
 * replica-secrets at the largest size and thousands at ordinary ones.
 */
export const secretsTmpfsSizeMiB = 256;
/** mount and umount are local calls; one that hangs this long is a wedged kernel or fs. */
const mountTimeoutMs = 10_000;

/** Whether `dir` is a mount point in this mount namespace (/proc/self/mountinfo). */
export async function isMountPoint(dir: string): Promise<boolean> {
  const resolved = path.resolve(dir);
  const text = await readFile("/proc/self/mountinfo", "utf8");
  for (const line of text.split("\n")) {
    // Field 5 is the mount point, with spaces and the like octal-escaped.
    const mountPoint = line.split(" ")[4];
    if (mountPoint === undefined) continue;
    const decoded = mountPoint.replace(/\\([0-7]{3})/g, (_m, octal: string) =>
      String.fromCharCode(Number.parseInt(octal, 8)),
    );
    if (decoded === resolved) return true;
  }
  return false;
}

/**
 * Mounts the tmpfs at `dir` unless it is mounted already (an agent restarted while
 * replicas ran). Mode 0711: the replicas' users pass through it to their own 0500
 * directories (bwrap binds them as the replica's user), but cannot list it.
 */
export async function ensureSecretsTmpfs(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if (await isMountPoint(dir)) return;
  await run(
    "mount",
    [
      "-t",
      "tmpfs",
      "-o",
      `mode=0711,size=${secretsTmpfsSizeMiB}m,nosuid,nodev,noexec`,
      "cloudless-secrets",
      dir,
    ],
    { timeout: mountTimeoutMs },
  );
}

/**
 * Unmounts the tmpfs when no replica has files in it; returns whether it did. A replica
 * that still runs keeps it (and the next agent finds it mounted).
 */
export async function releaseSecretsTmpfs(dir: string): Promise<boolean> {
  if (!(await isMountPoint(dir).catch(() => false))) return false;
  const entries = await readdir(dir).catch(() => []);
  if (entries.length > 0) return false;
  await run("umount", [dir], { timeout: mountTimeoutMs });
  await rmdir(dir).catch(() => undefined);
  return true;
}

/**
 * Which files a piece of code fsyncs, seen from the kernel: the code runs in a child Node
 * under `strace -f -y`, which prints the path behind each file descriptor. Durability
 * ("the rename is on disk too") cannot be observed any other way without pulling the plug.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { repoRoot } from "./processes.js";

/** False where strace is missing or ptrace is not permitted (some containers). */
export const straceWorks = spawnSync("strace", ["-qq", "-e", "trace=none", "true"]).status === 0;

const runTimeoutMs = 30_000;

/**
 * Runs `moduleCode` (an ES module; it may import TypeScript through tsx) under strace and
 * returns the paths of every file and directory it fsynced or fdatasynced, in order.
 */
export async function pathsSyncedBy(moduleCode: string): Promise<string[]> {
  const dir = await mkdtemp(path.join(tmpdir(), "cloudless-strace-"));
  const out = path.join(dir, "strace.out");
  try {
    const child = spawn(
      "strace",
      ["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", out, process.execPath].concat([
        "--import",
        "tsx",
        "--input-type=module",
        "-e",
        moduleCode,
      ]),
      { cwd: repoRoot, stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), runTimeoutMs);
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    clearTimeout(timer);
    if (code !== 0) throw new Error(`the traced code exited with ${code}: ${stderr}`);
    const trace = await readFile(out, "utf8");
    return [...trace.matchAll(/\b(?:fsync|fdatasync)\(\d+<([^>]*)>/g)].map((match) => match[1]!);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

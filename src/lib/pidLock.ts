import { readFileSync } from "node:fs";
import { link, readFile, unlink, writeFile } from "node:fs/promises";
import * as path from "node:path";

/**
 * An exclusive lock on a directory, held by a file that names its holder (ADR 0029):
 *
 *   {"pid":4242,"startTicks":"1234567","command":"cloudless agent","acquiredAt":"2026-…"}
 *
 * startTicks is the holder's start time (/proc/<pid>/stat field 22, clock ticks since
 * boot): with the pid it names one process for the life of the machine, so a pid the
 * kernel gave to another process since is not mistaken for the holder. A lock whose
 * holder is gone, was replaced by another process with the same pid, or (for a lock
 * without a start time, as older versions wrote: the bare pid) is not a cloudless
 * process, is stale and taken over. A live holder gets a one-line error naming it.
 *
 * The file appears complete or not at all (written aside, then hard-linked into place),
 * so a reader never judges a half-written lock. Two processes taking over the same
 * stale lock at the same instant can both succeed; that needs two starts on one data
 * dir within a millisecond of each other, and is accepted.
 */
export interface LockHolder {
  pid: number;
  /** Clock ticks since boot at which the holder started; absent in old lock files. */
  startTicks?: string;
  /** What the holder is, e.g. "cloudless agent". */
  command?: string;
  acquiredAt?: string;
}

export interface PidLock {
  release(): Promise<void>;
}

const maxCommandChars = 200;

/** Start time of a process in clock ticks since boot, or undefined (gone, or no /proc). */
export function processStartTicks(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // comm (field 2) may hold spaces and parentheses; the fields resume after the last ")".
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** "cloudless agent" for `node …/bin/cloudless agent --data-dir …`. */
function describeThisProcess(): string {
  const [, script, subcommand] = process.argv;
  const program = script ? path.basename(script) : path.basename(process.execPath);
  return [program, subcommand].filter(Boolean).join(" ").slice(0, maxCommandChars);
}

function parseHolder(text: string): LockHolder | undefined {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return { pid: Number(trimmed) };
  try {
    const parsed = JSON.parse(trimmed) as Partial<LockHolder>;
    if (!Number.isInteger(parsed.pid) || (parsed.pid as number) <= 0) return undefined;
    return {
      pid: parsed.pid as number,
      ...(typeof parsed.startTicks === "string" ? { startTicks: parsed.startTicks } : {}),
      ...(typeof parsed.command === "string"
        ? { command: parsed.command.slice(0, maxCommandChars) }
        : {}),
      ...(typeof parsed.acquiredAt === "string" ? { acquiredAt: parsed.acquiredAt } : {}),
    };
  } catch {
    return undefined;
  }
}

function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Whether the holder named by a lock file still runs (see the rules above). */
export function holderIsLive(holder: LockHolder): boolean {
  // An earlier instance in this very process (a restarted in-process agent) held it.
  if (holder.pid === process.pid) return false;
  if (!pidExists(holder.pid)) return false;
  const ticks = processStartTicks(holder.pid);
  if (holder.startTicks !== undefined && ticks !== undefined) return ticks === holder.startTicks;
  if (ticks === undefined) return true; // no /proc here: a live pid is all we can know
  // An old lock (bare pid): live only while that pid is a cloudless process.
  try {
    // The program or its script is the cloudless program (bin/cloudless, or the built
    // entry run directly); a path that merely contains the word (a Node installed under
    // /opt/cloudless-ci) does not make a process ours.
    const argv = readFileSync(`/proc/${holder.pid}/cmdline`, "utf8").split("\0").slice(0, 2);
    return argv.some(
      (arg) => path.basename(arg) === "cloudless" || /\/dist\/(cli|cmd)\/main\.js$/.test(arg),
    );
  } catch {
    return false;
  }
}

/** The holder a lock file names, and whether it is live; undefined when there is no lock. */
export async function readLockHolder(
  lockPath: string,
): Promise<{ holder: LockHolder | undefined; live: boolean } | undefined> {
  let text: string;
  try {
    text = await readFile(lockPath, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  const holder = parseHolder(text);
  return { holder, live: holder !== undefined && holderIsLive(holder) };
}

/** "process 4242 (cloudless agent, since 2026-…)" */
export function describeHolder(holder: LockHolder): string {
  const details = [holder.command, holder.acquiredAt ? `since ${holder.acquiredAt}` : undefined]
    .filter(Boolean)
    .join(", ");
  return `process ${holder.pid}${details ? ` (${details})` : ""}`;
}

/**
 * The directory is locked by a live process, or the lock could not be taken; the message
 * names the holder and what to do. Callers report it as Unavailable (lib/ knows nothing of
 * the API's error codes, ADR 0038).
 */
export class DirectoryInUseError extends Error {
  override readonly name = "DirectoryInUseError";
}

export async function acquirePidLock(lockPath: string, what: string): Promise<PidLock> {
  const startTicks = processStartTicks(process.pid);
  const me: LockHolder = {
    pid: process.pid,
    ...(startTicks !== undefined ? { startTicks } : {}),
    command: describeThisProcess(),
    acquiredAt: new Date().toISOString(),
  };
  const content = `${JSON.stringify(me)}\n`;
  const aside = `${lockPath}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  await writeFile(aside, content, { mode: 0o600 });
  try {
    // Three rounds: a stale lock is removed in one, taken in the next; more means a race.
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await link(aside, lockPath);
        return {
          async release() {
            // Only our own lock: a holder that took over after we were judged stale keeps its.
            const current = await readFile(lockPath, "utf8").catch(() => undefined);
            if (current === content) await unlink(lockPath).catch(() => undefined);
          },
        };
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      }
      const found = await readLockHolder(lockPath);
      if (found?.live && found.holder) {
        throw new DirectoryInUseError(
          `${what} is in use by ${describeHolder(found.holder)}; stop it first or use another --data-dir`,
        );
      }
      await unlink(lockPath).catch(() => undefined);
    }
    throw new DirectoryInUseError(`could not lock ${what}; try again`);
  } finally {
    await unlink(aside).catch(() => undefined);
  }
}

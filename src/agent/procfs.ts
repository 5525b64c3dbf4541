/**
 * Small readers of /proc (Linux), shared by the host-port reservations and the probes'
 * port-ownership check. Every reader returns undefined for a process that is gone or
 * cannot be read, never throws.
 */
import { readFileSync } from "node:fs";

export interface ProcStat {
  pid: number;
  /** The command name (at most 15 characters, as the kernel keeps it). */
  comm: string;
  /** R, S, D, Z, X…: Z and X mean the process has ended. */
  state: string;
  /** Parent pid. */
  ppid: number;
  /** Session id: a process spawned detached leads its own session, and its children join it. */
  session: number;
  /** Start time in clock ticks since boot: with the pid it names one process, never a reused pid. */
  startTicks: string;
}

/** /proc/<pid>/stat, parsed. */
export function readProcStat(pid: number | "self"): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  return parseProcStat(text);
}

/** Parses the text of /proc/<pid>/stat (exported for tests). */
export function parseProcStat(text: string): ProcStat | undefined {
  // comm (field 2) may hold spaces and parentheses; the fields resume after the last ")".
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 0 || close < open) return undefined;
  const pid = Number(text.slice(0, open).trim());
  const fields = text.slice(close + 2).split(" ");
  const state = fields[0];
  const ppid = Number(fields[1]);
  const session = Number(fields[3]);
  const startTicks = fields[19];
  if (!Number.isInteger(pid) || state === undefined || startTicks === undefined) return undefined;
  return { pid, comm: text.slice(open + 1, close), state, ppid, session, startTicks };
}

/**
 * A name for the process `pid` that an operator recognises: the program it runs (the
 * base name of argv[0]), else its kernel command name. The command name alone can be a
 * thread's: Node 24 names its main thread "MainThread", and that is what /proc shows.
 */
export function processName(pid: number): string | undefined {
  try {
    const argv0 = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0] ?? "";
    const base = argv0.slice(argv0.lastIndexOf("/") + 1).trim();
    if (base !== "") return base;
  } catch {
    // gone, or not ours to read: the command name may still be readable
  }
  return readProcStat(pid)?.comm;
}

/** Whether the process `pid` that started at `startTicks` is still running. */
export function isProcessAlive(pid: number, startTicks: string): boolean {
  const stat = readProcStat(pid);
  return (
    stat !== undefined && stat.state !== "Z" && stat.state !== "X" && stat.startTicks === startTicks
  );
}

/**
 * CPU and memory of processes, read from /proc (Linux): CPU time from /proc/<pid>/stat,
 * resident memory from /proc/<pid>/status. A Sampler polls a set of processes and
 * keeps samples tagged with the phase the benchmark was in.
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import os from "node:os";

let clockTicks: number | undefined;

function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
    } catch {
      clockTicks = 100;
    }
    if (!Number.isFinite(clockTicks) || clockTicks <= 0) clockTicks = 100;
  }
  return clockTicks;
}

export interface ProcReading {
  pid: number;
  /** user + system CPU time, in seconds. */
  cpuSeconds: number;
  rssMiB: number;
  ppid: number;
}

export function readProc(pid: number): ProcReading | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name may contain spaces and parentheses: fields start after the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ppid = Number(fields[1]);
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const rssKb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? 0);
    return { pid, cpuSeconds: (utime + stime) / ticksPerSecond(), rssMiB: rssKb / 1024, ppid };
  } catch {
    return undefined;
  }
}

export function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
  } catch {
    return "";
  }
}

/** Every descendant of pid (children, grandchildren…), from a scan of /proc. */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const reading = readProc(Number(entry));
    if (!reading) continue;
    const list = children.get(reading.ppid) ?? [];
    list.push(reading.pid);
    children.set(reading.ppid, list);
  }
  const found: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const next = queue.shift()!;
    for (const child of children.get(next) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

/** Busy and total jiffies of the whole machine, from /proc/stat. */
function machineJiffies(): { busy: number; total: number } | undefined {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
    const values = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (values[3] ?? 0) + (values[4] ?? 0);
    const total = values.reduce((sum, value) => sum + value, 0);
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}

export interface Sample {
  atMs: number;
  phase: string;
  /** Per watched process: CPU % of one core since the previous sample, and RSS. */
  procs: Record<string, { cpuPercent?: number; cpuSeconds?: number; rssMiB: number }>;
  /** Whole machine: % of all cores busy since the previous sample. */
  machineBusyPercent: number;
  loadAvg1: number;
}

export interface PhaseSummary {
  samples: number;
  /** CPU time used in the phase (all cores, this group), in seconds. */
  cpuSeconds: number;
  cpuPercentAvg: number;
  cpuPercentMax: number;
  rssMiBMedian: number;
  rssMiBMax: number;
}

/** Polls watched processes every intervalMs; phase() tags what follows. */
export class Sampler {
  readonly samples: Sample[] = [];
  private readonly watched = new Map<string, () => number[]>();
  private previous = new Map<string, { cpuSeconds: number; atMs: number }>();
  private previousMachine = machineJiffies();
  private currentPhase = "start";
  /** When each phase began (wall clock), in order. */
  readonly phaseLog: { name: string; startMs: number }[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly intervalMs = 1000) {}

  /** Watch a named group of processes (their CPU and RSS add up). */
  watch(name: string, pids: () => number[]): void {
    this.watched.set(name, pids);
  }

  unwatch(name: string): void {
    this.watched.delete(name);
    this.previous.delete(name);
  }

  /** Starts a phase; the sample taken now closes the previous one. */
  phase(name: string): void {
    if (this.timer !== undefined) this.sample();
    this.currentPhase = name;
    this.phaseLog.push({ name, startMs: Date.now() });
  }

  /** The phases as wall-clock windows, the last one ending at endMs. */
  windows(endMs: number): { name: string; startMs: number; endMs: number }[] {
    return this.phaseLog.map((phase, i) => ({
      name: phase.name,
      startMs: phase.startMs,
      endMs: this.phaseLog[i + 1]?.startMs ?? endMs,
    }));
  }

  get phaseName(): string {
    return this.currentPhase;
  }

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  sample(): Sample {
    const atMs = Date.now();
    const procs: Sample["procs"] = {};
    for (const [name, pids] of this.watched) {
      let cpuSeconds = 0;
      let rssMiB = 0;
      for (const pid of pids()) {
        const reading = readProc(pid);
        if (!reading) continue;
        cpuSeconds += reading.cpuSeconds;
        rssMiB += reading.rssMiB;
      }
      const before = this.previous.get(name);
      this.previous.set(name, { cpuSeconds, atMs });
      procs[name] =
        before && atMs > before.atMs
          ? {
              cpuPercent: Math.max(
                0,
                (100 * (cpuSeconds - before.cpuSeconds)) / ((atMs - before.atMs) / 1000),
              ),
              cpuSeconds: Math.max(0, cpuSeconds - before.cpuSeconds),
              rssMiB,
            }
          : { rssMiB };
    }
    const machine = machineJiffies();
    const beforeMachine = this.previousMachine;
    this.previousMachine = machine;
    const machineBusyPercent =
      machine && beforeMachine && machine.total > beforeMachine.total
        ? (100 * (machine.busy - beforeMachine.busy)) / (machine.total - beforeMachine.total)
        : 0;
    const sample: Sample = {
      atMs,
      phase: this.currentPhase,
      procs,
      machineBusyPercent,
      loadAvg1: os.loadavg()[0] ?? 0,
    };
    this.samples.push(sample);
    return sample;
  }

  /** CPU and RSS of one watched group over the samples of a phase. */
  summary(name: string, phase: string): PhaseSummary | undefined {
    const selected = this.samples
      .filter((s) => s.phase === phase)
      .flatMap((s) => {
        const reading = s.procs[name];
        return reading !== undefined && reading.rssMiB > 0 ? [reading] : [];
      });
    if (selected.length === 0) return undefined;
    // The first sample of a group has no CPU baseline.
    const cpu = selected.flatMap((p) => (p.cpuPercent === undefined ? [] : [p.cpuPercent]));
    const rss = selected.map((p) => p.rssMiB).sort((a, b) => a - b);
    const cpuSeconds = selected.reduce((sum, p) => sum + (p.cpuSeconds ?? 0), 0);
    return {
      samples: selected.length,
      cpuSeconds: round1(cpuSeconds),
      cpuPercentAvg: cpu.length ? round1(cpu.reduce((a, b) => a + b, 0) / cpu.length) : 0,
      cpuPercentMax: cpu.length ? round1(Math.max(...cpu)) : 0,
      rssMiBMedian: round1(rss[Math.floor(rss.length / 2)]!),
      rssMiBMax: round1(rss[rss.length - 1]!),
    };
  }

  machineSummary(phase: string): { busyPercentAvg: number; loadAvg1Max: number } | undefined {
    const selected = this.samples.filter((s) => s.phase === phase);
    if (selected.length === 0) return undefined;
    return {
      busyPercentAvg: round1(
        selected.reduce((sum, s) => sum + s.machineBusyPercent, 0) / selected.length,
      ),
      loadAvg1Max: round1(Math.max(...selected.map((s) => s.loadAvg1))),
    };
  }
}

export function round1(value: number): number {
  return Math.round(value * 10) / 10;
}

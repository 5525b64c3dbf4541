import { readFileSync } from "node:fs";
import os from "node:os";
import { statStorageGiB } from "./storage.js";

export interface UsageSample {
  cpuMillicoresUsed: number;
  memoryMiBUsed: number;
}

export interface UsageSources {
  cpus?: () => os.CpuInfo[];
  totalMemoryBytes?: () => number;
  freeMemoryBytes?: () => number;
  /** Contents of /proc/meminfo, or undefined where it does not exist. */
  readMeminfo?: () => string | undefined;
}

const BYTES_PER_MIB = 1024 * 1024;

function readProcMeminfo(): string | undefined {
  try {
    return readFileSync("/proc/meminfo", "utf8");
  } catch {
    return undefined;
  }
}

/** Returns the value of a "Key:   123 kB" line of /proc/meminfo, in bytes. */
function meminfoBytes(text: string, key: string): number | undefined {
  const match = new RegExp(`^${key}:\\s+(\\d+)\\s*kB\\s*$`, "m").exec(text);
  return match?.[1] === undefined ? undefined : Number(match[1]) * 1024;
}

/**
 * Host CPU and memory in use, for heartbeats. CPU use needs two readings of the cumulative
 * per-core times, so each call reports the use since the previous call.
 */
export class UsageSampler {
  private readonly cpus: () => os.CpuInfo[];
  private readonly totalMemoryBytes: () => number;
  private readonly freeMemoryBytes: () => number;
  private readonly readMeminfo: () => string | undefined;
  private previous: { busyMs: number; totalMs: number } | undefined;

  constructor(sources: UsageSources = {}) {
    this.cpus = sources.cpus ?? os.cpus;
    this.totalMemoryBytes = sources.totalMemoryBytes ?? os.totalmem;
    this.freeMemoryBytes = sources.freeMemoryBytes ?? os.freemem;
    this.readMeminfo = sources.readMeminfo ?? readProcMeminfo;
  }

  sample(): UsageSample {
    return { cpuMillicoresUsed: this.sampleCpu(), memoryMiBUsed: this.sampleMemory() };
  }

  async storageFreeGiB(dataDir: string): Promise<number> {
    return (await statStorageGiB(dataDir)).freeGiB;
  }

  private sampleCpu(): number {
    const cpus = this.cpus();
    let busyMs = 0;
    let totalMs = 0;
    for (const cpu of cpus) {
      const { user, nice, sys, idle, irq } = cpu.times;
      busyMs += user + nice + sys + irq;
      totalMs += user + nice + sys + idle + irq;
    }
    const previous = this.previous;
    this.previous = { busyMs, totalMs };
    if (previous === undefined) return 0;
    const deltaTotalMs = totalMs - previous.totalMs;
    const deltaBusyMs = busyMs - previous.busyMs;
    // No time passed (or counters went backwards after CPU hotplug): nothing to report.
    if (deltaTotalMs <= 0 || deltaBusyMs < 0) return 0;
    const busyFraction = Math.min(1, deltaBusyMs / deltaTotalMs);
    return Math.round(busyFraction * cpus.length * 1000);
  }

  private sampleMemory(): number {
    const totalBytes = this.totalMemoryBytes();
    // MemAvailable counts reclaimable page cache as available; freemem() does not, and would
    // make every long-running Linux host look almost full.
    const meminfo = this.readMeminfo();
    const availableBytes =
      meminfo === undefined ? undefined : meminfoBytes(meminfo, "MemAvailable");
    const usedBytes = totalBytes - (availableBytes ?? this.freeMemoryBytes());
    return Math.max(0, Math.round(usedBytes / BYTES_PER_MIB));
  }
}

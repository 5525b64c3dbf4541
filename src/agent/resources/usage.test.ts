import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { UsageSampler } from "./usage.js";

const MiB = 1024 * 1024;

function cpu(busyMs: number, idleMs: number): os.CpuInfo {
  return {
    model: "fake",
    speed: 1000,
    times: { user: busyMs, nice: 0, sys: 0, idle: idleMs, irq: 0 },
  };
}

const tempDirs: string[] = [];
afterEach(async () => {
  await Promise.all(tempDirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

describe("UsageSampler", () => {
  it("REQ-010 reports cpu use from the change in cpu times since the last sample", () => {
    const readings = [
      [cpu(1000, 9000), cpu(2000, 8000)],
      // Core 0: 75 of 100 ms busy; core 1: 25 of 100 ms busy → 1 core's worth in total.
      [cpu(1075, 9025), cpu(2025, 8075)],
      // Fully busy on both cores.
      [cpu(1175, 9025), cpu(2125, 8075)],
      // No time passed.
      [cpu(1175, 9025), cpu(2125, 8075)],
    ];
    let call = 0;
    const sampler = new UsageSampler({ cpus: () => readings[call++] ?? [], readMeminfo: () => "" });
    expect(sampler.sample().cpuMillicoresUsed).toBe(0);
    expect(sampler.sample().cpuMillicoresUsed).toBe(1000);
    expect(sampler.sample().cpuMillicoresUsed).toBe(2000);
    expect(sampler.sample().cpuMillicoresUsed).toBe(0);
  });

  it("REQ-010 prefers MemAvailable from /proc/meminfo", () => {
    const sampler = new UsageSampler({
      totalMemoryBytes: () => 8192 * MiB,
      freeMemoryBytes: () => 1024 * MiB,
      readMeminfo: () =>
        "MemTotal:        8388608 kB\nMemFree:         1048576 kB\nMemAvailable:    6291456 kB\n",
    });
    expect(sampler.sample().memoryMiBUsed).toBe(2048);
  });

  it("falls back to total minus free memory without /proc/meminfo", () => {
    const sampler = new UsageSampler({
      totalMemoryBytes: () => 8192 * MiB,
      freeMemoryBytes: () => 1024 * MiB,
      readMeminfo: () => undefined,
    });
    expect(sampler.sample().memoryMiBUsed).toBe(7168);
  });

  it("REQ-010 samples this machine", async () => {
    const sampler = new UsageSampler();
    const first = sampler.sample();
    expect(first.cpuMillicoresUsed).toBe(0);
    expect(first.memoryMiBUsed).toBeGreaterThan(0);
    expect(first.memoryMiBUsed).toBeLessThanOrEqual(os.totalmem() / MiB);
    const second = sampler.sample();
    expect(second.cpuMillicoresUsed).toBeGreaterThanOrEqual(0);
    expect(second.cpuMillicoresUsed).toBeLessThanOrEqual(os.cpus().length * 1000);

    const dataDir = await mkdtemp(path.join(os.tmpdir(), "cloudless-usage-"));
    tempDirs.push(dataDir);
    expect(await sampler.storageFreeGiB(dataDir)).toBeGreaterThan(0);
  });
});

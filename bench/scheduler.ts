/**
 * Scheduler benchmark on the scheduler harness (bench/schedulerMicro.ts builds the
 * cluster): decision latency P50/P95/P99 in HdrHistograms and placements per second,
 * at several cluster sizes, with and without spread and anti-affinity.
 *
 * A decision is one schedule() call for one pending replica, including its per-call
 * setup (working copy, indexes), which is what the coordinator pays per pending replica.
 * Placements/s schedules one batch of replicas in a single call, as a controller pass
 * does with everything pending, and divides the placements by the time it took.
 */
import { performance } from "node:perf_hooks";
import * as hdr from "hdr-histogram-js";
import { schedule } from "../src/control/scheduler/schedule.js";
import type { ClusterSnapshot, PendingReplica } from "../src/control/scheduler/types.js";
import { seededRng } from "../src/lib/rng.js";
import { benchCluster, scenarios } from "./schedulerMicro.js";

export interface LatencySummary {
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
  /** CPU time per decision (this process), P50 and P99: apart from waiting on a busy machine. */
  cpuP50Ms: number;
  cpuP99Ms: number;
  decisions: number;
}

export interface SizeResult extends LatencySummary {
  /** Placements/s of a binpack batch (one schedule() call). */
  placementsPerSec: number;
  scenarios: Record<
    string,
    LatencySummary & { placementsPerSec?: number; placementsPerCpuSec?: number }
  >;
}

export interface SchedulerOptions {
  sizes: number[];
  iterations: number;
  batchSize: number;
  batchRuns: number;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

function newHistogram(): hdr.Histogram {
  // Microseconds, 1 µs to 60 s, 3 significant digits.
  return hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 60_000_000,
    numberOfSignificantValueDigits: 3,
    autoResize: true,
  });
}

function summarize(wall: hdr.Histogram, cpu: hdr.Histogram): LatencySummary {
  const ms = (us: number) => Math.round(us) / 1000;
  return {
    p50Ms: ms(wall.getValueAtPercentile(50)),
    p95Ms: ms(wall.getValueAtPercentile(95)),
    p99Ms: ms(wall.getValueAtPercentile(99)),
    maxMs: ms(wall.maxValue),
    meanMs: ms(wall.mean),
    cpuP50Ms: ms(cpu.getValueAtPercentile(50)),
    cpuP99Ms: ms(cpu.getValueAtPercentile(99)),
    decisions: wall.totalCount,
  };
}

function decide(snapshot: ClusterSnapshot, pending: PendingReplica[], seed: number) {
  const cpuStart = process.cpuUsage();
  const start = performance.now();
  const plan = schedule({ snapshot, pending, nowMs: 0, rng: seededRng(seed) });
  const wallMs = performance.now() - start;
  const cpu = process.cpuUsage(cpuStart);
  if (plan.placements.length + plan.unschedulable.length !== pending.length) {
    throw new Error("scheduler lost a replica");
  }
  return { wallMs, cpuMs: (cpu.user + cpu.system) / 1000, placed: plan.placements.length };
}

const yieldToLoop = () => new Promise((resolve) => setImmediate(resolve));

export async function runSchedulerBench(
  options: SchedulerOptions,
): Promise<Record<string, SizeResult>> {
  const results: Record<string, SizeResult> = {};
  const log = options.log ?? (() => undefined);
  for (const nodeCount of options.sizes) {
    const snapshot = benchCluster(nodeCount).snapshot();
    const pooledWall = newHistogram();
    const pooledCpu = newHistogram();
    const perScenario: SizeResult["scenarios"] = {};
    for (const [name, make] of Object.entries(scenarios)) {
      const wall = newHistogram();
      const cpu = newHistogram();
      // JIT warm-up, not recorded.
      for (let i = 0; i < Math.min(100, options.iterations); i++) decide(snapshot, [make(i)], i);
      for (let i = 0; i < options.iterations; i++) {
        if (options.signal?.aborted) throw new Error("scheduler benchmark aborted");
        const sample = decide(snapshot, [make(1_000 + i)], i);
        const wallUs = Math.max(1, Math.round(sample.wallMs * 1000));
        const cpuUs = Math.max(1, Math.round(sample.cpuMs * 1000));
        wall.recordValue(wallUs);
        cpu.recordValue(cpuUs);
        pooledWall.recordValue(wallUs);
        pooledCpu.recordValue(cpuUs);
        if (i % 50 === 49) await yieldToLoop();
      }
      perScenario[name] = summarize(wall, cpu);
      wall.destroy();
      cpu.destroy();
      await yieldToLoop();
    }
    for (const name of ["binpack", "spread+anti"]) {
      const make = scenarios[name]!;
      const rates: number[] = [];
      const cpuRates: number[] = [];
      for (let run = 0; run < options.batchRuns; run++) {
        if (options.signal?.aborted) throw new Error("scheduler benchmark aborted");
        const pending = Array.from({ length: options.batchSize }, (_, k) =>
          make(100_000 + run * options.batchSize + k),
        );
        const sample = decide(snapshot, pending, run);
        rates.push(sample.placed / (sample.wallMs / 1000));
        cpuRates.push(sample.placed / (Math.max(sample.cpuMs, 0.001) / 1000));
        await yieldToLoop();
      }
      rates.sort((a, b) => a - b);
      cpuRates.sort((a, b) => a - b);
      perScenario[name]!.placementsPerSec = Math.round(rates[Math.floor(rates.length / 2)] ?? 0);
      perScenario[name]!.placementsPerCpuSec = Math.round(
        cpuRates[Math.floor(cpuRates.length / 2)] ?? 0,
      );
    }
    const pooled = summarize(pooledWall, pooledCpu);
    pooledWall.destroy();
    pooledCpu.destroy();
    results[`nodes${nodeCount}`] = {
      ...pooled,
      placementsPerSec: perScenario.binpack?.placementsPerSec ?? 0,
      scenarios: perScenario,
    };
    log(
      `scheduler ${nodeCount} nodes: p50 ${pooled.p50Ms} ms, p99 ${pooled.p99Ms} ms, ${results[`nodes${nodeCount}`]!.placementsPerSec} placements/s`,
    );
  }
  return results;
}

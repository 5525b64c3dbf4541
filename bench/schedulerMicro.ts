/**
 * Micro-benchmark of scheduler decision latency (target: P99 ≤ 5 ms at 5,000 nodes).
 *   npx tsx bench/schedulerMicro.ts [iterations]
 * Prints wall-clock P50/P95/P99 (and CPU time) per decision. A decision is one schedule() call for one replica,
 * including the per-call setup (working copy, zone index, workload counts), because that
 * is what the coordinator pays per pending replica. The batch rows divide a 100-replica
 * call by 100. It lives in bench/ because it needs a clock and console; the core itself may not.
 * No assertions here; the benchmark issue builds regression tracking on top of it.
 */
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import { schedule } from "../src/control/scheduler/schedule.js";
import {
  makeReplica,
  type NodeTemplate,
  SchedulerHarness,
} from "../src/control/scheduler/testing/harness.js";
import type { ClusterSnapshot, PendingReplica } from "../src/control/scheduler/types.js";
import { type Rng, seededRng } from "../src/lib/rng.js";

const regions = ["eu-west", "eu-central", "us-east"];
const zones = ["a", "b", "c"];
const shapes = [
  { cpuMillicores: 2000, memoryMiB: 4096 },
  { cpuMillicores: 4000, memoryMiB: 8192 },
  { cpuMillicores: 8000, memoryMiB: 16384 },
  { cpuMillicores: 16000, memoryMiB: 32768 },
];

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[Math.floor(rng.next() * items.length)]!;
}

/** A heterogeneous fleet: 9 zones, mixed shapes, partial load, some down/cordoned/tainted. */
export function benchCluster(nodeCount: number, seed = 42): SchedulerHarness {
  const rng = seededRng(seed);
  const h = new SchedulerHarness();
  h.addNodes(nodeCount, (i): NodeTemplate => {
    const region = regions[i % regions.length]!;
    const shape = pick(rng, shapes);
    const load = rng.next() * 0.7;
    const roll = rng.next();
    return {
      region,
      zone: `${region}-${zones[Math.floor(i / regions.length) % zones.length]}`,
      status: roll < 0.02 ? "NotReady" : "Ready",
      cordoned: roll >= 0.02 && roll < 0.03,
      taints:
        roll >= 0.03 && roll < 0.08
          ? [{ key: "gpu", value: "true", effect: "NoSchedule" }]
          : roll >= 0.08 && roll < 0.13
            ? [{ key: "spot", value: "true", effect: "PreferNoSchedule" }]
            : [],
      labels: { tier: rng.next() < 0.5 ? "edge" : "core", arch: "amd64" },
      capacity: { ...shape, storageGiB: 200, bandwidthMbps: 1000 },
      allocated: {
        cpuMillicores: Math.floor(shape.cpuMillicores * load),
        memoryMiB: Math.floor(shape.memoryMiB * load),
        storageGiB: Math.floor(200 * load),
        bandwidthMbps: Math.floor(500 * load),
      },
      egressMbps: rng.next() < 0.1 ? 0 : 100 + Math.floor(rng.next() * 900),
      reliability: 0.8 + rng.next() * 0.2,
      costPerHour: rng.next() < 0.5 ? undefined : 0.01 + rng.next() * 0.5,
    };
  });
  // Two live replicas per node across 200 workloads, plus the spread workload's own 60.
  for (let i = 0; i < nodeCount * 2; i++) {
    h.addExisting({ workloadKey: `bench/w${i % 200}`, node: h.nodes[i % nodeCount]!.name });
  }
  for (let i = 0; i < 60; i++) {
    h.addExisting({ workloadKey: "bench/web", node: h.nodes[(i * 7919) % nodeCount]!.name });
  }
  return h;
}

export const scenarios: Record<string, (i: number) => PendingReplica> = {
  binpack: (i) => makeReplica(`r${i}`, "bench/api"),
  "spread+anti": (i) =>
    makeReplica(`r${i}`, "bench/web", {
      placement: { strategy: "spread", antiAffinity: true, spreadAcrossZones: true },
    }),
  constrained: (i) =>
    makeReplica(`r${i}`, "bench/db", {
      placement: {
        regions: { required: ["eu-west", "eu-central"], preferred: ["eu-west"] },
        zones: { required: [], preferred: ["eu-west-a"] },
        nodeSelector: { tier: "core" },
        tolerations: [{ key: "spot", operator: "Exists" }],
      },
    }),
};

function percentile(sortedMs: Float64Array, p: number): number {
  return sortedMs[Math.min(sortedMs.length - 1, Math.ceil(p * sortedMs.length) - 1)]!;
}

interface Sample {
  wallMs: number;
  /** Process CPU time: on a shared machine this shows the work apart from waiting. */
  cpuMs: number;
}

function decide(snapshot: ClusterSnapshot, pending: PendingReplica[], seed: number): Sample {
  const cpuStart = process.cpuUsage();
  const start = performance.now();
  const plan = schedule({ snapshot, pending, nowMs: 0, rng: seededRng(seed) });
  const wallMs = performance.now() - start;
  const cpu = process.cpuUsage(cpuStart);
  // Keep the result observable so the work cannot be optimised away.
  if (plan.placements.length + plan.unschedulable.length !== pending.length) {
    throw new Error("scheduler lost a replica");
  }
  return { wallMs, cpuMs: (cpu.user + cpu.system) / 1000 };
}

export function run(iterations: number): void {
  const rows: string[][] = [
    ["nodes", "scenario", "p50 ms", "p95 ms", "p99 ms", "max ms", "cpu p50", "cpu p99"],
  ];
  for (const nodeCount of [1_000, 5_000, 10_000]) {
    const snapshot = benchCluster(nodeCount).snapshot();
    const cases: [string, number, (i: number) => PendingReplica[]][] = [
      ...Object.entries(scenarios).map(
        ([name, make]): [string, number, (i: number) => PendingReplica[]] => [
          name,
          1,
          (i) => [make(i)],
        ],
      ),
      [
        "batch100 binpack",
        100,
        (i) => Array.from({ length: 100 }, (_, k) => scenarios.binpack!(i * 100 + k)),
      ],
      [
        "batch100 spread+anti",
        100,
        (i) => Array.from({ length: 100 }, (_, k) => scenarios["spread+anti"]!(i * 100 + k)),
      ],
    ];
    for (const [name, perCall, make] of cases) {
      const calls = perCall === 1 ? iterations : Math.max(20, Math.floor(iterations / 20));
      for (let i = 0; i < Math.min(200, calls); i++) decide(snapshot, make(i), i); // JIT warm-up
      const wall = new Float64Array(calls);
      const cpu = new Float64Array(calls);
      for (let i = 0; i < calls; i++) {
        const sample = decide(snapshot, make(i), i);
        wall[i] = sample.wallMs / perCall;
        cpu[i] = sample.cpuMs / perCall;
      }
      wall.sort();
      cpu.sort();
      const fmt = (ms: number) => ms.toFixed(3);
      rows.push([
        String(nodeCount),
        name,
        fmt(percentile(wall, 0.5)),
        fmt(percentile(wall, 0.95)),
        fmt(percentile(wall, 0.99)),
        fmt(wall[wall.length - 1]!),
        fmt(percentile(cpu, 0.5)),
        fmt(percentile(cpu, 0.99)),
      ]);
    }
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  for (const row of rows) console.log(row.map((cell, c) => cell.padStart(widths[c]!)).join("  "));
  console.log(
    "\nA decision = one schedule() call for one replica (batch rows: a 100-replica call / 100).",
  );
}

// Importable (benchCluster) without running.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  run(Number(process.argv[2] ?? 1000));
}

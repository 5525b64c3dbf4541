/**
 * All benchmarks: `npm run bench` (builds first), or `npx tsx bench/run.ts [flags]`.
 *
 *   --quick                     100 nodes, 1,000 replicas, 15 s steady: under 2 minutes
 *   --nodes N --replicas R      e2e fleet and replica count (full: 5000 / 50000)
 *   --steady DURATION           steady run, e.g. 10m, 90s (full: 10m)
 *   --nodes-per-process N       hollow nodes per process (default 1000; quick 50)
 *   --replicas-per-workload N   (default 100; quick 50)
 *   --replica-start-ms MS       fake runtime start delay (default 200)
 *   --join-concurrency N        nodes joining at once per hollow process (default 32)
 *   --fault-fraction F          share of nodes killed, then silenced (default 0.1)
 *   --scheduler-iterations N    decisions per scenario and size (full 2000, quick 150)
 *   --only LIST                 scheduler,e2e,idle,network (default: all)
 *   --store sqlite|etcd         the coordinator's store (default sqlite; etcd: a one-member etcd
 *                               started for the run, `etcd` must be installed)
 *   --heap-snapshot             V8 heap snapshot of the coordinator at the end of the run
 *                               (after the failovers), summarised in the results
 *   --cpu-prof                  V8 CPU profile of the coordinator, summarised in the results,
 *                               and of each hollow process (in profiles/hollow)
 *   --out DIR                   where results.json, RESULTS.md and profiles go (default bench/)
 *   --coordinator-log FILE      append the coordinator's log to FILE (with --coordinator-log-level)
 *   --note TEXT                 a line shown under the title (e.g. why a run is below full size)
 *
 * Every benchmark has its own time limit and cleans up every process it started, even on
 * failure; a failed benchmark is reported in the results, the others still run.
 */
import { execFileSync } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { parseDurationMs } from "../src/lib/duration.js";
import { runE2e } from "./e2e.js";
import { runIdleUp } from "./idle.js";
import { Resources, withTimeLimit } from "./lib/children.js";
import { summarizeProfile } from "./lib/cpuProfile.js";
import { summarizeHeapSnapshot } from "./lib/heapSnapshot.js";
import { Sampler } from "./lib/procStats.js";
import { runNetworkBench } from "./network.js";
import { renderMarkdown } from "./report.js";
import { runSchedulerBench } from "./scheduler.js";

const repoRoot = fileURLToPath(new URL("..", import.meta.url));
const runStart = Date.now();

function log(line: string): void {
  const seconds = ((Date.now() - runStart) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[${seconds}s] ${line}\n`);
}

function num(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${flag} ${value}: expected a number`);
  return n;
}

function git(args: string[]): string {
  try {
    return execFileSync("git", args, { cwd: repoRoot, encoding: "utf8" }).trim();
  } catch {
    return "";
  }
}

const { values } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    nodes: { type: "string" },
    replicas: { type: "string" },
    steady: { type: "string" },
    "nodes-per-process": { type: "string" },
    "replicas-per-workload": { type: "string" },
    "replica-start-ms": { type: "string" },
    "join-concurrency": { type: "string" },
    "fault-fraction": { type: "string" },
    "scheduler-iterations": { type: "string" },
    only: { type: "string" },
    "cpu-prof": { type: "boolean", default: false },
    "heap-snapshot": { type: "boolean", default: false },
    out: { type: "string" },
    seed: { type: "string" },
    note: { type: "string" },
    "coordinator-log": { type: "string" },
    "coordinator-log-level": { type: "string" },
    store: { type: "string", default: "sqlite" },
  },
});

const quick = values.quick ?? false;
const storeFlag = values.store ?? "sqlite";
if (storeFlag !== "sqlite" && storeFlag !== "etcd") {
  throw new Error(`--store ${storeFlag}: use sqlite (the default) or etcd`);
}
const store: "sqlite" | "etcd" = storeFlag;
const steadyMs = values.steady ? parseDurationMs(values.steady) : quick ? 15_000 : 10 * 60_000;
if (steadyMs === undefined) throw new Error(`--steady ${values.steady}: expected e.g. 10m or 90s`);
const config = {
  quick,
  nodes: num("nodes", values.nodes, quick ? 100 : 5000),
  replicas: num("replicas", values.replicas, quick ? 1000 : 50_000),
  steadyMs,
  nodesPerProcess: num("nodes-per-process", values["nodes-per-process"], quick ? 50 : 1000),
  replicasPerWorkload: num(
    "replicas-per-workload",
    values["replicas-per-workload"],
    quick ? 50 : 100,
  ),
  replicaStartMs: num("replica-start-ms", values["replica-start-ms"], 200),
  joinConcurrency: num("join-concurrency", values["join-concurrency"], 32),
  faultFraction: num("fault-fraction", values["fault-fraction"], 0.1),
  schedulerSizes: [1000, 5000, 10_000],
  schedulerIterations: num(
    "scheduler-iterations",
    values["scheduler-iterations"],
    quick ? 300 : 2000,
  ),
  batchSize: quick ? 300 : 1000,
  batchRuns: quick ? 1 : 5,
  seed: num("seed", values.seed, 42),
  only: new Set((values.only ?? "scheduler,e2e,idle,network").split(",").map((s) => s.trim())),
  cpuProf: values["cpu-prof"] ?? false,
  outDir: path.resolve(values.out ?? path.join(repoRoot, "bench")),
};
// Quick mode has a budget for the whole run; a benchmark that would overrun it is cut short.
const budgetMs = quick ? 105_000 : 4 * 3600_000;
const deadline = runStart + budgetMs;

// biome-ignore lint/suspicious/noExplicitAny: results are a loose JSON document
const results: Record<string, any> = {
  quick,
  ...(values.note ? { note: values.note } : {}),
  date: new Date().toISOString(),
  commit: `${git(["rev-parse", "--short", "HEAD"])}${git(["status", "--porcelain"]) ? " (with uncommitted changes)" : ""}`,
  machine: {
    cpuModel: os.cpus()[0]?.model.trim() ?? "unknown",
    cores: os.availableParallelism(),
    ramGiB: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.platform()} ${os.release()}`,
    node: process.version,
    loadAvgStart: Math.round((os.loadavg()[0] ?? 0) * 10) / 10,
  },
  sizes: {
    store,
    nodes: config.nodes,
    replicas: config.replicas,
    hollowProcesses: Math.ceil(config.nodes / config.nodesPerProcess),
    nodesPerProcess: config.nodesPerProcess,
    replicasPerWorkload: config.replicasPerWorkload,
    replicaStartMs: config.replicaStartMs,
    joinConcurrencyPerProcess: config.joinConcurrency,
    steadyS: Math.round(config.steadyMs / 1000),
    faultFraction: config.faultFraction,
    schedulerSizes: config.schedulerSizes,
    schedulerIterations: config.schedulerIterations,
  },
  scheduler: {},
  e2e: {},
  membership: {},
  failover: {},
  memory: {},
  steady: {},
  coordinator: {},
  idle: {},
  network: {},
  phases: {},
  errors: [] as { bench: string; message: string }[],
  durationsS: {},
};

const liveResources = new Set<Resources>();
let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    interrupted = true;
    log(`${signal}: cleaning up`);
    void Promise.all([...liveResources].map((r) => r.cleanup(3_000))).finally(() =>
      process.exit(130),
    );
  });
}

/** Runs one benchmark with its limit and its own resources; failures become results. */
async function bench(
  name: string,
  limitMs: number,
  work: (resources: Resources, signal: AbortSignal) => Promise<void>,
): Promise<void> {
  if (!config.only.has(name) || interrupted) return;
  const remaining = deadline - Date.now();
  if (remaining < 5_000) {
    results.errors.push({ bench: name, message: "skipped: the run's time budget is used up" });
    return;
  }
  const started = Date.now();
  const resources = new Resources();
  liveResources.add(resources);
  log(`--- ${name}`);
  try {
    await withTimeLimit(name, Math.min(limitMs, remaining), (signal) => work(resources, signal));
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    log(`ERROR ${name}: ${message}`);
    results.errors.push({ bench: name, message });
  } finally {
    await resources.cleanup();
    liveResources.delete(resources);
    results.durationsS[name] = Math.round((Date.now() - started) / 1000);
  }
}

async function main(): Promise<void> {
  log(
    `cloudless bench${quick ? " --quick" : ""}: ${config.nodes} nodes, ${config.replicas} replicas, steady ${config.steadyMs / 1000} s`,
  );
  await mkdir(config.outDir, { recursive: true });

  await bench("scheduler", quick ? 30_000 : 20 * 60_000, async (_resources, signal) => {
    results.scheduler = await runSchedulerBench({
      sizes: config.schedulerSizes,
      iterations: config.schedulerIterations,
      batchSize: config.batchSize,
      batchRuns: config.batchRuns,
      signal,
      log,
    });
  });

  const e2eLimits = quick
    ? { joinMs: 30_000, placeMs: 30_000, failoverMs: 20_000 }
    : { joinMs: 300_000, placeMs: 600_000, failoverMs: 180_000 };
  const e2eLimitMs =
    60_000 + e2eLimits.joinMs + e2eLimits.placeMs + config.steadyMs + 2 * e2eLimits.failoverMs;
  await bench("e2e", e2eLimitMs, async (resources) => {
    const sampler = new Sampler(1000);
    sampler.start();
    const profileDir = config.cpuProf ? path.join(config.outDir, "profiles") : undefined;
    if (profileDir) await mkdir(profileDir, { recursive: true });
    const heapDir = values["heap-snapshot"] ? path.join(config.outDir, "profiles") : undefined;
    if (heapDir) await mkdir(heapDir, { recursive: true });
    const profileStart = Date.now();
    let coordinatorExitedAtMs: number | undefined;
    try {
      // Leave room for the idle benchmark and the report in quick mode.
      const e2eDeadline = quick ? deadline - 22_000 : runStart + e2eLimitMs + 60_000;
      const e2e = await runE2e({
        store,
        repoRoot,
        resources,
        sampler,
        nodes: config.nodes,
        replicas: config.replicas,
        nodesPerProcess: config.nodesPerProcess,
        replicasPerWorkload: config.replicasPerWorkload,
        steadyMs: config.steadyMs,
        replicaStartMs: config.replicaStartMs,
        joinConcurrency: config.joinConcurrency,
        faultFraction: config.faultFraction,
        pollMs: config.replicas > 5_000 ? 1000 : 250,
        seed: config.seed,
        ...(profileDir ? { cpuProfDir: profileDir } : {}),
        ...(heapDir ? { heapSnapshotDir: heapDir } : {}),
        ...(values["coordinator-log"]
          ? {
              coordinatorLog: {
                path: path.resolve(values["coordinator-log"]),
                level: values["coordinator-log-level"] ?? "info",
              },
            }
          : {}),
        deadlineMs: Math.max(Date.now() + 30_000, e2eDeadline),
        limits: e2eLimits,
        log,
      });
      results.membership = e2e.membership;
      results.e2e = e2e.e2e;
      results.steady = e2e.steady;
      results.failover = e2e.failover;
      results.memory = { ...results.memory, ...e2e.memory };
      results.coordinator = e2e.coordinator;
      results.phases = e2e.phases;
      results.coordinatorMetrics = e2e.coordinatorMetrics ?? {};
      coordinatorExitedAtMs = e2e.coordinatorExitedAtMs;
      if (e2e.heapSnapshotFile) {
        results.heap = await summarizeHeapSnapshot(e2e.heapSnapshotFile);
        log(`heap snapshot: ${results.heap.totalMiB} MiB in ${results.heap.nodes} objects`);
      }
      for (const message of e2e.errors) results.errors.push({ bench: "e2e", message });
    } finally {
      sampler.stop();
    }
    if (profileDir) {
      const { readdir, stat } = await import("node:fs/promises");
      const files = (await readdir(profileDir)).filter((f) => f.endsWith(".cpuprofile"));
      const fresh: string[] = [];
      for (const file of files) {
        if ((await stat(path.join(profileDir, file))).mtimeMs >= profileStart) fresh.push(file);
      }
      const newest = fresh.sort().at(-1);
      if (newest) {
        results.profile = await summarizeProfile(path.join(profileDir, newest), {
          ...(coordinatorExitedAtMs !== undefined
            ? { windows: sampler.windows(coordinatorExitedAtMs), endWallMs: coordinatorExitedAtMs }
            : {}),
        });
        log(`coordinator CPU profile: ${path.join(profileDir, newest)}`);
      } else {
        results.errors.push({ bench: "e2e", message: "--cpu-prof: no profile was written" });
      }
    }
  });

  await bench("idle", 60_000, async (resources) => {
    const idle = await runIdleUp({
      repoRoot,
      resources,
      settleMs: quick ? 2_000 : 10_000,
      limitMs: 40_000,
      log,
    });
    results.idle = idle;
    results.memory.idleUpRssMiB = idle.idleUpRssMiB;
  });

  // Service networking (issue 14): lab links, wireguard-go, the mesh, its proxy and relay,
  // endpoint fan-out to hollow nodes. Needs root; each part skips with its reason.
  await bench("network", quick ? 90_000 : 15 * 60_000, async (_resources, signal) => {
    results.network = await runNetworkBench({ quick, signal, log });
  });
}

try {
  await main();
} catch (error) {
  results.errors.push({
    bench: "run",
    message: error instanceof Error ? error.message : String(error),
  });
} finally {
  results.machine.loadAvgEnd = Math.round((os.loadavg()[0] ?? 0) * 10) / 10;
  results.durationS = Math.round((Date.now() - runStart) / 1000);
  await writeFile(
    path.join(config.outDir, "results.json"),
    `${JSON.stringify(results, null, 2)}\n`,
  );
  await writeFile(path.join(config.outDir, "RESULTS.md"), renderMarkdown(results));
  log(`wrote ${path.join(config.outDir, "results.json")} and RESULTS.md in ${results.durationS} s`);
  for (const error of results.errors) log(`error: ${error.bench}: ${error.message}`);
}

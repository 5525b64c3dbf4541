/**
 * End-to-end benchmarks against a real coordinator (SQLite store) started as a child
 * process, with hollow-node processes (dist/sim/hollowNodes.js) as the fleet:
 *
 *   join      N fresh nodes enroll and say hello → time until every one is Ready
 *   place     workloads totalling R replicas → time until all are Running (placements/s)
 *   steady    S seconds of heartbeats: coordinator CPU and RSS, false NotReady/Lost verdicts
 *   streamLoss  10% of nodes killed (connections cut) → per lost replica, time until a
 *             replacement runs elsewhere (P50/P95/P99)
 *   silent    another 10% silenced (connections open, nothing sent) → the same
 *
 * "Running" is measured twice: on the node (the fake runtime reports the moment a replica
 * runs; exact and free for the coordinator) and in the coordinator's API (ListWorkloads
 * polled; later by up to one poll, and every poll costs the coordinator a full read).
 * Per-replica distributions use the first; "all Running" totals use the second.
 */
import { createWriteStream } from "node:fs";
import { readdir, stat, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { WorkloadView } from "../src/api/gen/cloudless/v1/workload_pb.js";
import { type ClientCredentials, loadClientConfig } from "../src/client/config.js";
import {
  type CoordinatorClients,
  checkCoordinatorIdentity,
  createClients,
} from "../src/client/transport.js";
import { seededRng } from "../src/lib/rng.js";
import { createTokens } from "../src/sim/hollowNodes.js";
import { type EtcdCluster, startEtcd } from "../test/helpers/etcd.js";
import { type Child, type Resources, sleep } from "./lib/children.js";
import { type Series, scrapeMetrics, summarizeScrapes } from "./lib/metricsScrape.js";
import type { PhaseSummary, Sampler } from "./lib/procStats.js";

export interface E2eOptions {
  /**
   * The coordinator's store: its own SQLite file, or a one-member etcd started for the
   * run on 127.0.0.1 (its CPU and memory are not in the coordinator's numbers).
   */
  store: "sqlite" | "etcd";
  repoRoot: string;
  resources: Resources;
  sampler: Sampler;
  nodes: number;
  replicas: number;
  nodesPerProcess: number;
  replicasPerWorkload: number;
  steadyMs: number;
  replicaStartMs: number;
  /** Nodes joining at once, per hollow process. */
  joinConcurrency: number;
  faultFraction: number;
  pollMs: number;
  seed: number;
  /** Write a V8 CPU profile of the coordinator into this directory. */
  cpuProfDir?: string;
  /** Write a V8 heap snapshot of the coordinator into this directory at the end of the run. */
  heapSnapshotDir?: string;
  /** Coordinator log: its standard error is appended here, at this level (diagnosis). */
  coordinatorLog?: { path: string; level: string };
  /** Absolute time (Date.now()) by which everything must be done. */
  deadlineMs: number;
  limits: { joinMs: number; placeMs: number; failoverMs: number };
  log: (line: string) => void;
}

export interface Percentiles {
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
  count: number;
}

export interface FailoverResult extends Partial<Percentiles> {
  faultedNodes: number;
  lostReplicas: number;
  replaced: number;
  unreplaced: number;
  /** Fault → NodeLost event (coordinator clock), over the faulted nodes. */
  detection?: Percentiles;
  /** Fault → ReplicasPlaced event (coordinator clock), over the affected workloads' events. */
  placed?: Percentiles;
  /** Fault → the coordinator's API shows every workload fully Running again. */
  coordinatorAllRunningMs?: number;
  falseLost?: number;
  error?: string;
}

export interface E2eResults {
  membership: Record<string, unknown>;
  e2e: Record<string, unknown>;
  steady: Record<string, unknown>;
  failover: { streamLoss: FailoverResult; silent: FailoverResult & { falseLost?: number } };
  memory: Record<string, unknown>;
  coordinator: Record<string, unknown>;
  /** CPU (seconds and % of a core) and RSS per phase: coordinator, hollow processes, machine. */
  phases: Record<string, unknown>;
  /** The coordinator's own metrics per phase: memory breakdown, event-loop lag, store/API time. */
  coordinatorMetrics?: Record<string, unknown>;
  /** When the coordinator process exited (its CPU profile ends there). */
  coordinatorExitedAtMs?: number;
  /** The coordinator's heap snapshot at the end of the steady run, when asked for. */
  heapSnapshotFile?: string;
  errors: string[];
}

export function percentiles(values: number[]): Percentiles | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number) => sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!;
  return {
    p50Ms: Math.round(at(0.5)),
    p95Ms: Math.round(at(0.95)),
    p99Ms: Math.round(at(0.99)),
    maxMs: Math.round(sorted[sorted.length - 1]!),
    count: sorted.length,
  };
}

interface Hollow {
  child: Child;
  firstIndex: number;
  count: number;
  exited: boolean;
  /** Event-loop stalls of ≥ 500 ms the process reported (end time, length); bounded. */
  stalls: { atMs: number; durationMs: number }[];
}

/** Stalls remembered per hollow process. */
const maxStallsKept = 10_000;
/**
 * A false verdict counts as the simulator's when the node's hollow process stalled for at
 * least one heartbeat interval within this window before the verdict: a phi verdict
 * comes seconds after the heartbeats stopped.
 */
const stallAttributionWindowMs = 10_000;
const stallAttributionMinMs = 1_000;

interface RunningEvent {
  node: string;
  workload: string;
  atMs: number;
}

interface MembershipEvent {
  type: string;
  node: string;
  atMs: number;
  /** The benchmark phase when it arrived. */
  phase: string;
}

interface ViewReplica {
  id: string;
  node: string;
  phase: string;
}

interface View {
  atMs: number;
  pollMs: number;
  workloads: Map<string, { desired: number; replicas: ViewReplica[] }>;
}

const namespace = "bench";
const zones = ["a", "b", "c"];

/** One e2e session: a coordinator, its hollow fleet, and the measurements on them. */
class Session {
  coordinator!: Child;
  /** The run's etcd, when the coordinator stores in etcd. */
  private etcd: EtcdCluster | undefined;
  url = "";
  adminConfig = "";
  credentials!: ClientCredentials;
  clients!: CoordinatorClients;
  private lastScrape: Series | undefined;
  /** The coordinator's own metrics per phase (from its /metrics endpoint). */
  readonly metricsByPhase: Record<string, unknown> = {};
  readonly hollows: Hollow[] = [];
  readonly running = new Map<string, RunningEvent>();
  readonly firstAck = new Map<string, number>();
  readonly started = new Map<string, number>();
  readonly failedNodes = new Map<string, string>();
  readonly membershipEvents: MembershipEvent[] = [];
  placedTotal = 0;
  lastPlacedAtMs = 0;
  /** ReplicasPlaced events of the bench's workloads: workload name and coordinator time. */
  readonly placedEvents: { workload: string; atMs: number }[] = [];
  readonly faulted = new Set<string>();
  readonly faultAt = new Map<string, number>();
  private readonly watchAbort = new AbortController();
  private readonly waiters = new Set<() => void>();
  readonly errors: string[] = [];
  workDir = "";
  private stopping = false;
  /** Uncaught exceptions and unhandled rejections in hollow processes (real agents would exit). */
  agentCrashes = 0;

  constructor(readonly options: E2eOptions) {}

  /** Wakes everything waiting for progress. */
  private notify(): void {
    for (const waiter of this.waiters) waiter();
  }

  /** Waits until check() is true, re-checking on progress and at least every 250 ms. */
  async until(
    what: string,
    check: () => boolean,
    limitMs: number,
    progress?: () => string,
  ): Promise<number> {
    const start = Date.now();
    let lastReportMs = start;
    const deadline = Math.min(start + limitMs, this.options.deadlineMs);
    let lastCheckMs = 0;
    for (;;) {
      // At most one check per 50 ms: some checks are a pass over every running replica.
      const sinceMs = Date.now() - lastCheckMs;
      if (sinceMs < 50) await sleep(50 - sinceMs);
      lastCheckMs = Date.now();
      if (check()) break;
      if (progress && lastCheckMs - lastReportMs >= 30_000) {
        lastReportMs = lastCheckMs;
        this.options.log(`  … ${what}: ${progress()}`);
      }
      if (this.hollows.length > 0 && this.hollows.every((h) => h.exited)) {
        throw new Error(`${what}: every hollow-node process has exited`);
      }
      if (Date.now() >= deadline) {
        const cut = deadline < start + limitMs ? " (cut short by the run's time budget)" : "";
        throw new Error(
          `${what}: not reached within ${Math.round((deadline - start) / 1000)} s${cut}`,
        );
      }
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, 250);
        this.waiters.add(wake);
      });
    }
    return Date.now();
  }

  async startCoordinator(): Promise<void> {
    const { resources, repoRoot, cpuProfDir } = this.options;
    this.workDir = await resources.tempDir("cloudless-bench-");
    const dataDir = path.join(this.workDir, "coordinator");
    const { heapSnapshotDir } = this.options;
    const nodeFlags = [
      ...(cpuProfDir ? ["--cpu-prof", "--cpu-prof-dir", cpuProfDir] : []),
      ...(heapSnapshotDir
        ? ["--heapsnapshot-signal=SIGUSR2", `--diagnostic-dir=${heapSnapshotDir}`]
        : []),
    ];
    let storeFlags: string[] = [];
    if (this.options.store === "etcd") {
      this.etcd = await startEtcd({ members: 1 });
      storeFlags = ["--store", `etcd://${this.etcd.endpoints.join(",")}`];
      this.options.log(`etcd at ${this.etcd.endpoints.join(",")}`);
    }
    this.coordinator = resources.spawn("coordinator", process.execPath, [
      ...nodeFlags,
      path.join(repoRoot, "bin", "cloudless"),
      "coordinator",
      "--data-dir",
      dataDir,
      "--port",
      "0",
      "--host",
      "127.0.0.1",
      "--log-level",
      this.options.coordinatorLog?.level ?? "warn",
      ...storeFlags,
    ]);
    if (this.options.coordinatorLog) {
      const log = createWriteStream(this.options.coordinatorLog.path, { flags: "a" });
      this.coordinator.onErrLine((line) => log.write(`${line}\n`));
    }
    const match = await this.coordinator.waitForLine(/listening on (https:\/\/\S+)/, 30_000);
    this.url = match[1]!;
    this.adminConfig = path.join(dataDir, "admin.conf");
    const config = await loadClientConfig(this.adminConfig);
    this.credentials = config;
    // The measuring client must outlast a coordinator that stalls: a long PING timeout
    // (the agents' 5 s one is part of what is measured, not of the instrument).
    this.clients = createClients(
      createGrpcTransport({
        baseUrl: this.url,
        defaultTimeoutMs: 300_000,
        pingIntervalMs: 30_000,
        pingTimeoutMs: 120_000,
        nodeOptions: {
          ca: config.caPem,
          cert: config.certPem,
          key: config.keyPem,
          rejectUnauthorized: true,
          checkServerIdentity: (_host, certificate) =>
            checkCoordinatorIdentity(certificate, config.clusterName),
        },
      }),
    );
    this.options.sampler.watch("coordinator", () =>
      this.coordinator.running ? [this.coordinator.pid] : [],
    );
    void this.watchEvents();
  }

  /**
   * Ends the current phase and starts the next: scrapes the coordinator's metrics (what
   * happened in the phase that ends) and retags the samples.
   */
  async enterPhase(name: string): Promise<void> {
    const ending = this.options.sampler.phaseName;
    if (this.coordinator?.running && this.url) {
      try {
        const now = await scrapeMetrics(this.url, this.credentials);
        this.metricsByPhase[ending] = summarizeScrapes(this.lastScrape, now);
        this.lastScrape = now;
      } catch (error) {
        this.options.log(`metrics scrape failed: ${String(error).slice(0, 200)}`);
      }
    }
    this.options.sampler.phase(name);
  }

  /** Membership and scheduling events, resumed after the last id if the stream ends. */
  private async watchEvents(): Promise<void> {
    let afterId = "";
    const types = ["NodeJoined", "NodeReady", "NodeNotReady", "NodeLost", "ReplicasPlaced"];
    while (!this.watchAbort.signal.aborted) {
      try {
        const stream = this.clients.events.watchEvents(
          { afterId, types },
          { signal: this.watchAbort.signal, timeoutMs: 0 },
        );
        for await (const response of stream) {
          const event = response.event;
          if (!event) continue;
          afterId = event.id;
          const atMs = event.time ? timestampMs(event.time) : Date.now();
          if (event.type === "ReplicasPlaced") {
            if (event.subject.startsWith(`workload/${namespace}/`)) {
              this.placedTotal += Number(/placed (\d+) replica/.exec(event.message)?.[1] ?? 0);
              this.lastPlacedAtMs = atMs;
              const workload = event.subject.slice(`workload/${namespace}/`.length);
              if (this.placedEvents.length < 1_000_000) this.placedEvents.push({ workload, atMs });
            }
          } else if (event.subject.startsWith("node/")) {
            this.membershipEvents.push({
              type: event.type,
              node: event.subject.slice(5),
              atMs,
              phase: this.options.sampler.phaseName,
            });
          }
          this.notify();
        }
      } catch (error) {
        if (this.watchAbort.signal.aborted) return;
        this.options.log(`event watch ended (${String(error).slice(0, 200)}); resuming`);
        await sleep(500);
      }
    }
  }

  async startFleet(): Promise<{ t0: number; tokensMs: number }> {
    const { nodes, nodesPerProcess, repoRoot, resources, replicaStartMs, joinConcurrency } =
      this.options;
    // Profiles of the simulator itself go apart from the coordinator's (--cpu-prof).
    const { cpuProfDir } = this.options;
    const profileFlags = cpuProfDir
      ? ["--cpu-prof", "--cpu-prof-dir", path.join(cpuProfDir, "hollow")]
      : [];
    const tokensStart = Date.now();
    const tokens = await createTokens(this.adminConfig, nodes, {
      batch: 50,
      description: "bench hollow node",
    });
    const tokensMs = Date.now() - tokensStart;
    this.options.log(`created ${nodes} tokens in ${tokensMs} ms`);
    const processes = Math.ceil(nodes / nodesPerProcess);
    const specs: { firstIndex: number; count: number; tokenFile: string }[] = [];
    for (let i = 0; i < processes; i++) {
      const firstIndex = i * nodesPerProcess;
      const count = Math.min(nodesPerProcess, nodes - firstIndex);
      const tokenFile = path.join(this.workDir, `tokens-${i}.txt`);
      await writeFile(tokenFile, tokens.slice(firstIndex, firstIndex + count).join("\n"), {
        mode: 0o600,
      });
      specs.push({ firstIndex, count, tokenFile });
    }
    const t0 = Date.now();
    for (const [i, spec] of specs.entries()) {
      const child = resources.spawn(`hollow-${i}`, process.execPath, [
        ...profileFlags,
        path.join(repoRoot, "dist", "sim", "hollowNodes.js"),
        "--join",
        this.url,
        "--token-file",
        spec.tokenFile,
        "--count",
        String(spec.count),
        "--first-index",
        String(spec.firstIndex),
        "--prefix",
        "hollow",
        "--zones",
        zones.join(","),
        "--data-root",
        path.join(this.workDir, `hollow-${i}`),
        "--replica-start-ms",
        String(replicaStartMs),
        "--concurrency",
        String(joinConcurrency),
        "--log-level",
        "error",
      ]);
      const hollow: Hollow = { child, ...spec, exited: false, stalls: [] };
      this.hollows.push(hollow);
      child.onLine((line) => this.onHollowLine(hollow, line));
      void child.exited.then(({ code, signal }) => {
        hollow.exited = true;
        if (!this.stopping) {
          const message = `hollow process ${i} exited early (code ${code}, signal ${signal}): ${child.stderrTail.slice(-1500)}`;
          this.options.log(message);
          this.errors.push(message);
        }
        this.notify();
      });
    }
    this.options.sampler.watch("hollow", () =>
      this.hollows.filter((h) => h.child.running).map((h) => h.child.pid),
    );
    return { t0, tokensMs };
  }

  /** Whether the node's hollow process stalled ≥ 1 s shortly before atMs. */
  simulatorStalledBefore(node: string, atMs: number): boolean {
    const hollow = this.hollowOf(node);
    return (
      hollow?.stalls.some(
        (stall) =>
          stall.durationMs >= stallAttributionMinMs &&
          stall.atMs <= atMs + 1_000 &&
          stall.atMs >= atMs - stallAttributionWindowMs,
      ) ?? false
    );
  }

  private onHollowLine(hollow: Hollow, line: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    switch (message.type) {
      case "node":
        this.started.set(message.name as string, message.atMs as number);
        break;
      case "ack":
        if (message.first && !this.firstAck.has(message.name as string)) {
          this.firstAck.set(message.name as string, message.atMs as number);
        }
        break;
      case "stall":
        if (hollow.stalls.length < maxStallsKept) {
          hollow.stalls.push({
            atMs: message.atMs as number,
            durationMs: message.durationMs as number,
          });
        }
        break;
      case "nodeFailed":
        this.failedNodes.set(message.name as string, message.message as string);
        break;
      case "running":
        for (const [node, replicaId, ns, workload, atMs] of message.replicas as [
          string,
          string,
          string,
          string,
          number,
        ][]) {
          if (ns !== namespace || this.running.has(replicaId)) continue;
          this.running.set(replicaId, { node, workload, atMs });
        }
        break;
      case "faulted":
        for (const node of message.nodes as string[]) {
          this.faultAt.set(node, message.atMs as number);
        }
        break;
      case "error":
        if (message.kind === "uncaughtException" || message.kind === "unhandledRejection") {
          // Each would have crashed one real agent process.
          this.agentCrashes++;
          if (this.agentCrashes <= 3) {
            this.errors.push(`agent crash (${message.kind}): ${String(message.message)}`);
          }
        } else {
          this.errors.push(`hollow: ${String(message.message)}`);
        }
        break;
    }
    this.notify();
  }

  hollowOf(node: string): Hollow | undefined {
    const index = Number(node.slice(node.lastIndexOf("-") + 1));
    return this.hollows.find((h) => index >= h.firstIndex && index < h.firstIndex + h.count);
  }

  /** The coordinator's view of the bench workloads (one ListWorkloads). */
  async view(): Promise<View> {
    const start = Date.now();
    const response = await retry(() => this.clients.workloads.listWorkloads({ namespace }));
    const atMs = Date.now();
    const workloads: View["workloads"] = new Map();
    for (const workload of response.workloads) {
      workloads.set(workload.name, {
        desired: workload.status?.desiredReplicas ?? 0,
        replicas: workload.replicas.map((r) => ({ id: r.id, node: r.node, phase: r.phase })),
      });
    }
    return { atMs, pollMs: atMs - start, workloads };
  }

  /**
   * Polls the coordinator until every workload has its desired count Running off `excluded`.
   * Each poll is a BASIC list (counts only); the full list, with 20,000 replicas the
   * coordinator's costliest answer (up to 1.8 s of its event loop), is asked for only once
   * the counts say every workload is ready, to check where the replicas run.
   */
  async untilCoordinatorAllRunning(
    expectedWorkloads: number,
    excluded: Set<string>,
    limitMs: number,
  ): Promise<View> {
    const deadline = Math.min(Date.now() + limitMs, this.options.deadlineMs);
    for (;;) {
      const counts = await retry(() =>
        this.clients.workloads.listWorkloads({ namespace, view: WorkloadView.BASIC }),
      );
      let ready = 0;
      let countsComplete = counts.workloads.length >= expectedWorkloads;
      for (const workload of counts.workloads) {
        ready += workload.status?.readyReplicas ?? 0;
        if ((workload.status?.readyReplicas ?? 0) < (workload.status?.desiredReplicas ?? 0)) {
          countsComplete = false;
        }
      }
      if (countsComplete) {
        const view = await this.view();
        let complete = view.workloads.size >= expectedWorkloads;
        for (const workload of view.workloads.values()) {
          const running = workload.replicas.filter(
            (r) => r.phase === "Running" && !excluded.has(r.node),
          ).length;
          if (running < workload.desired) complete = false;
        }
        if (complete) return view;
      }
      if (Date.now() + this.options.pollMs >= deadline) {
        throw new Error(
          `coordinator view: not all Running in time (${ready} ready; limit ${Math.round(limitMs / 1000)} s or the run's budget)`,
        );
      }
      await sleep(this.options.pollMs);
    }
  }

  /** Signals the coordinator to write a heap snapshot and waits until it is complete. */
  async takeHeapSnapshot(dir: string): Promise<string> {
    const before = new Set(await readdir(dir));
    process.kill(this.coordinator.pid, "SIGUSR2");
    const deadline = Date.now() + 180_000;
    let lastSize = -1;
    while (Date.now() < deadline) {
      await sleep(1_000);
      const file = (await readdir(dir)).find((f) => f.endsWith(".heapsnapshot") && !before.has(f));
      if (!file) continue;
      const size = (await stat(path.join(dir, file))).size;
      // V8 writes the snapshot from the main thread; once the coordinator answers again
      // and the size holds, it is complete.
      if (size > 0 && size === lastSize) {
        await this.view();
        return path.join(dir, file);
      }
      lastSize = size;
    }
    throw new Error(`no complete heap snapshot in ${dir} within 180 s`);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const hollow of this.hollows) hollow.child.send(JSON.stringify({ cmd: "stop" }));
    await Promise.all(
      this.hollows.map(async (hollow) => {
        const done = await Promise.race([
          hollow.child.exited.then(() => true),
          sleep(30_000).then(() => false),
        ]);
        if (!done) await hollow.child.stop(2_000, "SIGKILL");
      }),
    );
    this.watchAbort.abort();
    // SIGTERM: the coordinator stops cleanly and writes its CPU profile, if asked to.
    if (this.coordinator) await this.coordinator.stop(60_000);
    await this.etcd?.stop();
  }
}

/** Retries a call the coordinator may fail while it is overloaded (idempotent calls only). */
async function retry<T>(call: () => Promise<T>, attempts = 5): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      const retriable = /\[(unavailable|deadline_exceeded|resource_exhausted)\]/.test(
        String(error),
      );
      if (!retriable || attempt >= attempts) throw error;
      await sleep(500 * attempt);
    }
  }
}

function workloadSpec(index: number, replicas: number, spreadable: boolean) {
  const kind = index % 4;
  return {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: `w${String(index).padStart(4, "0")}`, namespace },
    spec: {
      image: "bench/pause:1",
      resources: { cpuMillicores: 100, memoryMiB: 64 },
      replicas,
      placement:
        kind === 1
          ? { spreadAcrossZones: true }
          : kind === 3 && spreadable
            ? { spreadAcrossZones: true, antiAffinity: true }
            : {},
      terminationGracePeriodSeconds: 0,
    },
  };
}

function shuffle<T>(items: T[], seed: number): T[] {
  const rng = seededRng(seed);
  const copy = [...items];
  for (let i = copy.length - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [copy[i], copy[j]] = [copy[j]!, copy[i]!];
  }
  return copy;
}

function phaseSummary(sampler: Sampler, group: string, phase: string): PhaseSummary | undefined {
  return sampler.summary(group, phase);
}

export async function runE2e(options: E2eOptions): Promise<E2eResults> {
  const { sampler, log } = options;
  const results: E2eResults = {
    membership: { nodes: options.nodes },
    e2e: { nodes: options.nodes, replicas: options.replicas },
    steady: { durationS: Math.round(options.steadyMs / 1000) },
    failover: {
      streamLoss: { faultedNodes: 0, lostReplicas: 0, replaced: 0, unreplaced: 0 },
      silent: { faultedNodes: 0, lostReplicas: 0, replaced: 0, unreplaced: 0 },
    },
    memory: {},
    coordinator: {},
    phases: {},
    errors: [],
  };
  const session = new Session(options);
  const fail = (phase: string, error: unknown) => {
    const message = `${phase}: ${error instanceof Error ? error.message : String(error)}`;
    log(`ERROR ${message}`);
    results.errors.push(message);
  };
  let workloadCount = 0;
  try {
    sampler.phase("setup");
    await session.startCoordinator();
    log(`coordinator ${session.url} (pid ${session.coordinator.pid})`);

    // --- join -------------------------------------------------------------------------
    await session.enterPhase("join");
    const { t0, tokensMs } = await session.startFleet();
    results.membership.tokensMs = tokensMs;
    try {
      const joined = () =>
        session.firstAck.size + session.failedNodes.size >= options.nodes ||
        session.hollows.every((h) => h.exited);
      await session.until(
        "all nodes Ready",
        joined,
        options.limits.joinMs,
        () => `${session.firstAck.size} Ready, ${session.failedNodes.size} failed`,
      );
      const acks = [...session.firstAck.values()];
      const joinTimes = acks.map((at) => at - t0);
      results.membership = {
        ...results.membership,
        ready: session.firstAck.size,
        failed: session.failedNodes.size,
        allReadyMs: Math.max(...joinTimes),
        perNode: percentiles(joinTimes),
        allStartedMs: Math.max(...[...session.started.values()].map((at) => at - t0)),
        processes: session.hollows.length,
        joinConcurrencyPerProcess: options.joinConcurrency,
      };
      if (session.failedNodes.size > 0) {
        const [name, message] = [...session.failedNodes][0]!;
        throw new Error(
          `${session.failedNodes.size} nodes failed to join (e.g. ${name}: ${message})`,
        );
      }
      // The coordinator's own record of the joins (its clock, same machine).
      await session
        .until(
          "NodeJoined events",
          () =>
            session.membershipEvents.filter((e) => e.type === "NodeJoined").length >= options.nodes,
          10_000,
        )
        .then(() => {
          const joinedAt = session.membershipEvents
            .filter((e) => e.type === "NodeJoined")
            .map((e) => e.atMs - t0);
          results.membership.coordinatorAllJoinedMs = Math.max(...joinedAt);
        })
        .catch(() => undefined);
      log(
        `join: ${session.firstAck.size}/${options.nodes} Ready in ${results.membership.allReadyMs} ms`,
      );
    } catch (error) {
      fail("membership", error);
      results.membership.ready = session.firstAck.size;
      throw new Error("no fleet, no further e2e benchmark");
    }

    // --- place ------------------------------------------------------------------------
    await session.enterPhase("place");
    const perWorkload = options.replicasPerWorkload;
    workloadCount = Math.ceil(options.replicas / perWorkload);
    const spreadable = perWorkload <= Math.floor(options.nodes * (1 - 2 * options.faultFraction));
    try {
      const placeStart = Date.now();
      const specs = Array.from({ length: workloadCount }, (_, i) =>
        workloadSpec(i, Math.min(perWorkload, options.replicas - i * perWorkload), spreadable),
      );
      const queue = [...specs];
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          for (;;) {
            const spec = queue.shift();
            if (!spec) return;
            await retry(() =>
              session.clients.workloads.applyWorkload({ specText: JSON.stringify(spec) }),
            );
          }
        }),
      );
      const applyMs = Date.now() - placeStart;
      log(`applied ${workloadCount} workloads in ${applyMs} ms`);
      const agentDoneAt = await session.until(
        "all replicas running on nodes",
        () => session.running.size >= options.replicas,
        options.limits.placeMs,
        () =>
          `${session.running.size} running on nodes, ${session.placedTotal} placed (events), ${session.agentCrashes} agent crashes`,
      );
      const runningTimes = [...session.running.values()].map((r) => r.atMs - placeStart);
      const agentAllRunningMs = Math.max(...runningTimes);
      const view = await session.untilCoordinatorAllRunning(
        workloadCount,
        new Set(),
        Math.max(5_000, options.limits.placeMs - (agentDoneAt - placeStart)),
      );
      const coordinatorAllRunningMs = view.atMs - placeStart;
      results.e2e = {
        ...results.e2e,
        workloads: workloadCount,
        replicasPerWorkload: perWorkload,
        placementsPerSec: Math.round(options.replicas / (coordinatorAllRunningMs / 1000)),
        coordinatorAllRunningMs,
        agentAllRunningMs,
        agentRunningPerSec: Math.round(options.replicas / (agentAllRunningMs / 1000)),
        allScheduledMs: session.lastPlacedAtMs > 0 ? session.lastPlacedAtMs - placeStart : null,
        applyMs,
        applyToRunningPerReplica: percentiles(runningTimes),
        lastPollMs: view.pollMs,
        replicaStartMs: options.replicaStartMs,
      };
      log(
        `place: ${options.replicas} replicas Running in ${coordinatorAllRunningMs} ms (coordinator view), ${agentAllRunningMs} ms on the nodes`,
      );
    } catch (error) {
      fail("e2e placement", error);
      results.e2e.runningOnNodes = session.running.size;
      results.e2e.placedPerEvents = session.placedTotal;
      throw new Error("placement incomplete, no steady run or failover");
    }

    // --- steady -----------------------------------------------------------------------
    await session.enterPhase("steady");
    const steadyStart = Date.now();
    // Keep time for the two failovers (each usually takes a few seconds beyond detection).
    const reserveMs = Math.min(2 * options.limits.failoverMs, 30_000);
    const steadyMs = Math.max(
      Math.min(options.steadyMs, 5_000),
      Math.min(options.steadyMs, options.deadlineMs - Date.now() - reserveMs),
    );
    if (steadyMs < options.steadyMs) log(`steady run shortened to ${steadyMs} ms by the deadline`);
    await sleep(steadyMs);
    const steadyEvents = session.membershipEvents.filter((e) => e.atMs >= steadyStart);
    const coordinatorSteady = phaseSummary(sampler, "coordinator", "steady");
    const hollowSteady = phaseSummary(sampler, "hollow", "steady");
    results.steady = {
      durationS: Math.round(steadyMs / 1000),
      falseNotReady: steadyEvents.filter((e) => e.type === "NodeNotReady").length,
      falseLost: steadyEvents.filter((e) => e.type === "NodeLost").length,
      coordinator: coordinatorSteady,
      hollowProcesses: hollowSteady,
      machine: sampler.machineSummary("steady"),
    };
    if (coordinatorSteady) {
      results.memory.coordinatorRssMiB = Math.round(coordinatorSteady.rssMiBMedian);
      results.memory.coordinatorRssMaxMiB = Math.round(coordinatorSteady.rssMiBMax);
      results.coordinator.steadyCpuPercent = coordinatorSteady.cpuPercentAvg;
    }
    results.memory.atNodes = options.nodes;
    results.memory.atReplicas = options.replicas;
    log(
      `steady ${Math.round(steadyMs / 1000)} s: coordinator ${coordinatorSteady?.cpuPercentAvg}% CPU, ${coordinatorSteady?.rssMiBMedian} MiB RSS; ${results.steady.falseNotReady} NotReady, ${results.steady.falseLost} Lost`,
    );

    // --- failover ---------------------------------------------------------------------
    for (const kind of ["kill", "silence"] as const) {
      const key = kind === "kill" ? "streamLoss" : "silent";
      await session.enterPhase(`failover-${key}`);
      try {
        results.failover[key] = await failover(session, kind, workloadCount);
        const r = results.failover[key];
        log(
          `failover ${key}: ${r.lostReplicas} replicas on ${r.faultedNodes} nodes; P50 ${r.p50Ms} ms, P95 ${r.p95Ms} ms, P99 ${r.p99Ms} ms; detection P50 ${r.detection?.p50Ms} ms`,
        );
      } catch (error) {
        fail(`failover ${key}`, error);
        results.failover[key].error = error instanceof Error ? error.message : String(error);
      }
    }

    // Last: writing a snapshot stops the coordinator for about 35 s at 2,000 nodes, long
    // enough for every agent's connection to time out (a failover measured after one
    // never recovered within its limit).
    if (options.heapSnapshotDir) {
      results.heapSnapshotFile = await session.takeHeapSnapshot(options.heapSnapshotDir);
      log(`coordinator heap snapshot: ${results.heapSnapshotFile}`);
    }
  } catch (error) {
    if (!(error instanceof Error && /^no fleet|^placement incomplete/.test(error.message))) {
      fail("e2e", error);
    }
  } finally {
    // False verdicts over the whole session, for nodes never faulted.
    const falseLost = session.membershipEvents.filter(
      (e) => e.type === "NodeLost" && !session.faulted.has(e.node),
    );
    const falseNotReady = session.membershipEvents.filter(
      (e) => e.type === "NodeNotReady" && !session.faulted.has(e.node),
    );
    results.e2e.agentCrashes = session.agentCrashes;
    results.failover.silent.falseLost = falseLost.length;
    results.steady.falseLostWholeRun = falseLost.length;
    results.steady.falseNotReadyWholeRun = falseNotReady.length;
    const byPhase: Record<string, { notReady: number; lost: number }> = {};
    for (const event of [...falseLost, ...falseNotReady]) {
      const entry = byPhase[event.phase] ?? { notReady: 0, lost: 0 };
      byPhase[event.phase] = entry;
      if (event.type === "NodeLost") entry.lost++;
      else entry.notReady++;
    }
    results.steady.falseVerdictsByPhase = byPhase;
    const afterStall = (events: MembershipEvent[]) =>
      events.filter((e) => session.simulatorStalledBefore(e.node, e.atMs)).length;
    results.steady.falseVerdictsAfterSimulatorStall = {
      notReady: afterStall(falseNotReady),
      lost: afterStall(falseLost),
    };
    const stalls = session.hollows.flatMap((h) => h.stalls);
    results.steady.simulatorStalls = {
      atLeast1s: stalls.filter((s) => s.durationMs >= stallAttributionMinMs).length,
      maxMs: Math.max(0, ...stalls.map((s) => s.durationMs)),
    };
    if (falseLost.length > 0) {
      results.steady.falseLostNodes = [...new Set(falseLost.map((e) => e.node))].slice(0, 20);
    }
    const peak = Math.max(
      0,
      ...sampler.samples.map((s) => s.procs.coordinator?.rssMiB ?? 0).filter((v) => v > 0),
    );
    results.memory.coordinatorPeakRssMiB = Math.round(peak);
    results.errors.push(...session.errors.slice(0, 20));
    await session.enterPhase("teardown");
    results.coordinatorMetrics = session.metricsByPhase;
    for (const phase of [
      "setup",
      "join",
      "place",
      "steady",
      "failover-streamLoss",
      "failover-silent",
    ]) {
      const coordinator = phaseSummary(sampler, "coordinator", phase);
      if (!coordinator) continue;
      results.phases[phase] = {
        coordinator,
        hollow: phaseSummary(sampler, "hollow", phase),
        machine: sampler.machineSummary(phase),
      };
    }
    await session.stop().catch((error: unknown) => fail("teardown", error));
    if (session.coordinator?.exitedAtMs !== undefined) {
      results.coordinatorExitedAtMs = session.coordinator.exitedAtMs;
    }
    sampler.unwatch("coordinator");
    sampler.unwatch("hollow");
  }
  return results;
}

async function failover(
  session: Session,
  kind: "kill" | "silence",
  workloadCount: number,
): Promise<FailoverResult> {
  const { options } = session;
  const before = await session.view();
  const knownReplicas = new Set<string>();
  for (const workload of before.workloads.values()) {
    for (const replica of workload.replicas) knownReplicas.add(replica.id);
  }
  const candidates = [...session.firstAck.keys()].filter(
    (name) => !session.faulted.has(name) && !session.failedNodes.has(name),
  );
  const count = Math.max(1, Math.round(options.nodes * options.faultFraction));
  const chosen = shuffle(candidates, options.seed + (kind === "kill" ? 1 : 2))
    .slice(0, count)
    .sort();
  const chosenSet = new Set(chosen);
  const lostByWorkload = new Map<string, number>();
  let lost = 0;
  for (const [name, workload] of before.workloads) {
    const n = workload.replicas.filter((r) => chosenSet.has(r.node)).length;
    if (n > 0) lostByWorkload.set(name, n);
    lost += n;
  }
  for (const node of chosen) session.faulted.add(node);
  // Send the fault to each node's process; each reports the time it took effect.
  const byProcess = new Map<Child, string[]>();
  for (const node of chosen) {
    const hollow = session.hollowOf(node);
    if (!hollow) continue;
    const list = byProcess.get(hollow.child) ?? [];
    list.push(node);
    byProcess.set(hollow.child, list);
  }
  const sentAt = Date.now();
  for (const [child, nodes] of byProcess) child.send(JSON.stringify({ cmd: kind, nodes }));
  await session.until(
    "fault acknowledged",
    () => chosen.every((node) => session.faultAt.has(node)),
    10_000,
  );
  const faultAt = Math.min(...chosen.map((node) => session.faultAt.get(node) ?? sentAt));

  /** Replacement start times by workload: new replicas running on healthy nodes since the fault. */
  const replacements = (): Map<string, number[]> => {
    const byWorkload = new Map<string, number[]>();
    for (const [id, event] of session.running) {
      if (
        event.atMs < faultAt ||
        knownReplicas.has(id) ||
        session.faulted.has(event.node) ||
        !lostByWorkload.has(event.workload)
      ) {
        continue;
      }
      const list = byWorkload.get(event.workload) ?? [];
      list.push(event.atMs);
      byWorkload.set(event.workload, list);
    }
    for (const list of byWorkload.values()) list.sort((a, b) => a - b);
    return byWorkload;
  };
  const replacedCount = () => {
    const found = replacements();
    let replaced = 0;
    for (const [workload, n] of lostByWorkload) {
      replaced += Math.min(n, found.get(workload)?.length ?? 0);
    }
    return replaced;
  };
  let error: string | undefined;
  try {
    // Each check is one pass over the running replicas; until() re-checks on progress.
    await session.until(
      "replacements running",
      () => replacedCount() >= lost,
      options.limits.failoverMs,
      () => `${replacedCount()} of ${lost} replaced`,
    );
  } catch (caught) {
    error = caught instanceof Error ? caught.message : String(caught);
  }
  let coordinatorAllRunningMs: number | undefined;
  if (!error) {
    try {
      const view = await session.untilCoordinatorAllRunning(
        workloadCount,
        session.faulted,
        Math.max(5_000, options.limits.failoverMs - (Date.now() - faultAt)),
      );
      coordinatorAllRunningMs = view.atMs - faultAt;
    } catch (caught) {
      error = caught instanceof Error ? caught.message : String(caught);
    }
  }
  const latencies: number[] = [];
  const found = replacements();
  for (const [workload, n] of lostByWorkload) {
    for (const atMs of (found.get(workload) ?? []).slice(0, n)) latencies.push(atMs - faultAt);
  }
  const detections = session.membershipEvents
    .filter((e) => e.type === "NodeLost" && chosenSet.has(e.node) && e.atMs >= faultAt - 1000)
    .map((e) => e.atMs - faultAt);
  const placedTimes = session.placedEvents
    .filter((e) => e.atMs >= faultAt && lostByWorkload.has(e.workload))
    .map((e) => e.atMs - faultAt);
  const placed = percentiles(placedTimes);
  const stats = percentiles(latencies);
  return {
    ...(stats ?? {}),
    faultedNodes: chosen.length,
    lostReplicas: lost,
    replaced: latencies.length,
    unreplaced: lost - latencies.length,
    ...(percentiles(detections) ? { detection: percentiles(detections)! } : {}),
    ...(placed ? { placed } : {}),
    ...(coordinatorAllRunningMs !== undefined ? { coordinatorAllRunningMs } : {}),
    ...(error ? { error } : {}),
  };
}

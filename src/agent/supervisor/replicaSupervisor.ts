import type { Clock } from "../../lib/clock.js";
import type { Rng } from "../../lib/rng.js";
import { type Logger, silentLogger } from "../../observe/logger.js";
import {
  endSpan,
  extractContext,
  failSpan,
  linksTo,
  runInSpan,
  type Span,
  startSpan,
} from "../../observe/tracing.js";
import type {
  DriverName,
  ReadOnlyMount,
  ReplicaRunSpec,
  ReplicaRuntimeStatus,
  RuntimeDriver,
} from "../drivers/driver.js";
import type { ProbeExec, ProbeFunction, ProbeKind, ProbeResult } from "../probes/probeTypes.js";
import { runProbeOnce } from "../probes/runProbeOnce.js";
import { type BackoffPolicy, defaultBackoff } from "./backoff.js";
import {
  type DeadlineCall,
  type DriverHealth,
  DriverHealthChecks,
  deadlineCall,
  describeDriverFailure,
  errorMessage,
  notConfigured,
} from "./driverCalls.js";
import {
  allocatorFor,
  HostPortAssigner,
  portNameOf,
  portsOfOthers,
  rememberForeignPort,
} from "./hostPortAssigner.js";
import type { HostPortAllocator } from "./hostPortReservations.js";
import { agentKnows, isOrphan, OrphanScanSchedule } from "./orphanScan.js";
import { type AllocatePort, buildRunSpec, type ReplicaNetworkingSettings } from "./replicaPorts.js";
import { probeWithPortOwnership, ReplicaProbes } from "./replicaProbes.js";
import { isReady, ReportEmitter, reportsOf, snapshotOf } from "./replicaReports.js";
import {
  backoffPolicy,
  decideRestart,
  decideRetryAfterFailedStart,
  failuresAfterRun,
  judgeRuntimeStatus,
  livenessFailed,
  portConflict,
  runningStatus,
  startingStatus,
  startTiming,
  type Termination,
} from "./restartPolicy.js";
import {
  graceMsOf,
  isReplacement,
  isStale,
  newRecord,
  probesChanged,
  type SupervisedReplica,
} from "./supervisedReplica.js";
import type {
  DesiredReplica,
  ReplicaPhase,
  ReplicaReport,
  SupervisorSnapshot,
} from "./supervisorTypes.js";

export interface ReplicaSupervisorOptions {
  drivers: Map<DriverName, RuntimeDriver>;
  clock: Clock;
  rng: Rng;
  logger?: Logger;
  /** Every report, whenever any of them changed (coalesced per sync round). */
  onReport: (reports: ReplicaReport[]) => void;
  /**
   * A replica's host ports or running generation changed: what snapshot() holds that an
   * agent restarted now could not learn again (the ports a running process listens on).
   */
  onDurableChange?: () => void;
  backoff?: Partial<BackoffPolicy>;
  syncIntervalMs?: number;
  /**
   * Hands out host ports. The agent passes the host-wide file reservations (ADR 0032);
   * the default binds to check (one agent alone on its host).
   */
  hostPorts?: HostPortAllocator;
  /** A plain port function instead of hostPorts (tests): no reservations, kept ports reused as they are. */
  allocatePort?: AllocatePort;
  /** Deadline on each driver call; stop gets the grace period on top. */
  driverCallTimeoutMs?: number;
  /** Deadline on a driver health check: an engine that cannot answer a ping is down. */
  healthTimeoutMs?: number;
  /** Grace period for replicas found on the node that nobody wants (their spec is unknown). */
  orphanGraceMs?: number;
  /** How often the drivers' replica lists are compared with the desired set. */
  orphanScanIntervalMs?: number;
  /** Performs one probe; default runProbeOnce (real sockets). Injected under simulated time. */
  probe?: ProbeFunction;
  /** Called with every probe result (metrics). */
  onProbeResult?: (kind: ProbeKind, result: ProbeResult) => void;
  /**
   * Service variables and DNS settings for a replica about to start (the agent's
   * network module, issue 14); read at each start, so a restart sees current services.
   */
  networking?: (spec: ReplicaRunSpec) => ReplicaNetworkingSettings;
  /**
   * Writes the secrets and configs of a replica about to start (ADR 0055) and returns its
   * mounts and the environment variables from secret keys. A failure is a failed start
   * (retried with back-off); the error's `reason`, when it has one, is the status reason.
   */
  replicaFiles?: (spec: ReplicaRunSpec, driver: RuntimeDriver) => Promise<ReplicaFilesPrepared>;
  /** A replica's resources were removed (its files go too, ADR 0055); failures are its own. */
  onRemoved?: (replicaId: string) => Promise<void>;
}

/** What the replica files hook adds to a run spec (ADR 0055). */
export interface ReplicaFilesPrepared {
  mounts: ReadOnlyMount[];
  env: Record<string, string>;
}

type HealthLookup = (driver: DriverName) => Promise<DriverHealth>;

const defaultSyncIntervalMs = 1000;
const defaultDriverCallTimeoutMs = 30_000;
const defaultHealthTimeoutMs = 5000;
const defaultOrphanGraceMs = 10_000;
const defaultOrphanScanIntervalMs = 60_000;

/**
 * The agent's level-triggered reconciler for the replicas on its own node: it compares
 * the desired set with what the runtime drivers show, and starts, restarts (with
 * crash-loop back-off), replaces and removes replicas until they match. Each replica
 * is worked on by at most one task at a time and every driver call has a deadline, so
 * a wedged engine or replica delays only itself.
 *
 * This class is the loop that applies decisions; the decisions are its parts' (ADR
 * 0040): restartPolicy.ts (what a status means, whether and when to restart, pure),
 * orphanScan.ts (what nobody wants, what the agent knows, pure), replicaProbes.ts (the
 * probes of a run and the port-ownership verdict), hostPortAssigner.ts (host ports),
 * replicaReports.ts (reports and the snapshot, pure) and driverCalls.ts (deadlines,
 * failure reasons, health checks).
 */
export class ReplicaSupervisor {
  private readonly clock: Clock;
  private readonly rng: Rng;
  private readonly logger: Logger;
  private readonly backoff: BackoffPolicy;
  private readonly syncIntervalMs: number;
  private readonly callTimeoutMs: number;
  private readonly orphanGraceMs: number;
  private readonly probe: ProbeFunction;
  /** A driver call with a deadline on the injected clock. */
  private readonly call: DeadlineCall;
  private readonly ports: HostPortAssigner;
  private readonly health: DriverHealthChecks;
  private readonly orphanScans: OrphanScanSchedule;
  private readonly reportEmitter: ReportEmitter;

  /** The one place the desired set lives (serialized by snapshot()); null until first given. */
  private desired: Map<string, DesiredReplica> | null = null;
  /** Host ports and generations from a restored snapshot, used when records are created. */
  private restored: SupervisorSnapshot["replicas"] = {};
  private readonly records = new Map<string, SupervisedReplica>();
  /** Replica ids with a task in flight (one per replica, including orphan removal). */
  private readonly busy = new Map<string, Promise<void>>();
  /** Replicas asked to sync again while their task was still running. */
  private readonly dirty = new Set<string>();
  private cancelTick: (() => void) | undefined;
  private started = false;
  private stopped = false;

  constructor(private readonly options: ReplicaSupervisorOptions) {
    this.clock = options.clock;
    this.rng = options.rng;
    this.logger = options.logger ?? silentLogger;
    this.backoff = backoffPolicy(defaultBackoff, options.backoff);
    this.syncIntervalMs = Math.max(10, options.syncIntervalMs ?? defaultSyncIntervalMs);
    this.callTimeoutMs = options.driverCallTimeoutMs ?? defaultDriverCallTimeoutMs;
    this.orphanGraceMs = options.orphanGraceMs ?? defaultOrphanGraceMs;
    this.probe = options.probe ?? runProbeOnce;
    this.call = deadlineCall(this.clock, this.callTimeoutMs);
    this.ports = new HostPortAssigner({
      allocator: allocatorFor(options),
      call: this.call,
      logger: this.logger,
    });
    this.orphanScans = new OrphanScanSchedule(
      options.orphanScanIntervalMs ?? defaultOrphanScanIntervalMs,
    );
    this.health = new DriverHealthChecks({
      call: this.call,
      timeoutMs: options.healthTimeoutMs ?? defaultHealthTimeoutMs,
      logger: this.logger,
      // What a driver that was down holds may have become unwanted meanwhile.
      onHealthy: (name) => this.orphanScans.request(name),
    });
    this.reportEmitter = new ReportEmitter(options.onReport, this.logger);
  }

  /** Replaces the whole desired set for this node; anything not in it is stopped and removed. */
  setDesired(replicas: DesiredReplica[]): void {
    const next = new Map<string, DesiredReplica>();
    for (const replica of replicas) {
      const id = replica.spec.replicaId;
      if (next.has(id)) this.logger.warn({ replica: id }, "duplicate replica in desired set");
      next.set(id, structuredClone(replica));
    }
    if (this.desired === null) {
      // Until now nothing found on the node could be judged unwanted; look again.
      for (const name of this.options.drivers.keys()) this.orphanScans.request(name);
    }
    this.desired = next;
    if (this.started && !this.stopped) this.requestSync();
  }

  /**
   * Adopts what the drivers already run (desired replicas that run are kept, not
   * restarted; replicas nobody wants are stopped and removed), then starts the loop.
   * Call setDesired() or restore() first: without a desired set nothing is removed.
   */
  async start(): Promise<void> {
    if (this.started) throw new Error("ReplicaSupervisor.start() called twice");
    this.started = true;
    for (const name of this.options.drivers.keys()) this.orphanScans.request(name);
    await this.ports.claimRestored(this.restored);
    await this.syncRound();
    this.scheduleTick();
  }

  /**
   * Stops the loop and the probes and waits for in-flight work (bounded by deadlines).
   * With stopReplicas the replicas are stopped and removed too; without, they keep
   * running for the next agent to adopt. When `hurry` aborts (a second Ctrl-C, ADR
   * 0028) replicas still in their grace period are killed at once; they are still removed.
   */
  async stop(options: { stopReplicas: boolean; hurry?: AbortSignal }): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.cancelTick?.();
    this.cancelTick = undefined;
    for (const record of this.records.values()) {
      record.cancelWake?.();
      record.cancelWake = undefined;
      this.stopProbes(record);
    }
    await Promise.allSettled([...this.busy.values()]);
    if (options.stopReplicas) {
      await Promise.allSettled(
        [...this.records.values()].map(async (record) => {
          if (await this.teardown(record, options.hurry)) {
            this.setPhase(record, "Stopped", "AgentStopped", "stopped with the agent");
            await this.ports.release(record.id, record.hostPorts);
          }
        }),
      );
    }
    this.emitIfChanged();
  }

  /** Runs one reconciliation round now; resolves when the work it started has settled. */
  async syncNow(): Promise<void> {
    await this.syncRound();
  }

  /** The current report of every replica, sorted by id. */
  reports(): ReplicaReport[] {
    return reportsOf(this.records.values());
  }

  /**
   * What the replica is wanted as now, if it is: an assignment the agent cannot read
   * keeps this instead of stopping the replica (ADR 0042).
   */
  desiredFor(replicaId: string): DesiredReplica | undefined {
    return this.desired?.get(replicaId);
  }

  /** The state to persist for autonomy (NFR-A1): plain data, safe to JSON.stringify. */
  snapshot(): SupervisorSnapshot {
    return snapshotOf(this.desired, this.records, this.restored);
  }

  /**
   * Whether this agent's own state names the replica: the desired set, a replica it
   * supervises, or one a restored snapshot knew. The drivers adopt a replica without
   * owner marks (made by an older agent) only if so (ADR 0030).
   */
  knows(replicaId: string): boolean {
    return agentKnows(replicaId, {
      desired: this.desired,
      supervised: this.records,
      restored: this.restored,
    });
  }

  /** Loads a snapshot() taken by an earlier agent; must come before start(). */
  restore(snapshot: SupervisorSnapshot): void {
    if (this.started) throw new Error("ReplicaSupervisor.restore() must be called before start()");
    if (snapshot.version !== 1) {
      throw new Error(`unsupported supervisor snapshot version ${String(snapshot.version)}`);
    }
    this.desired = null;
    if (snapshot.desired) this.setDesired(snapshot.desired);
    this.restored = structuredClone(snapshot.replicas);
  }

  // --- the loop ----------------------------------------------------------------------

  private scheduleTick(): void {
    if (this.stopped) return;
    this.cancelTick = this.clock.setTimeout(() => {
      this.cancelTick = undefined;
      this.requestSync();
      this.scheduleTick();
    }, this.syncIntervalMs);
  }

  private requestSync(): void {
    if (this.stopped || !this.started) return;
    void this.syncRound();
  }

  /**
   * Syncs one replica now (a probe verdict, a back-off that ran out, a request that
   * arrived while it was busy). Only that replica: re-running whole rounds from here
   * could keep two slow replicas triggering each other's rounds without end.
   */
  private requestReplicaSync(id: string): void {
    if (this.stopped || !this.started) return;
    const lookup: HealthLookup = (name) => {
      const driver = this.options.drivers.get(name);
      return driver ? this.health.check(name, driver) : Promise.resolve(notConfigured);
    };
    void this.runTask(id, () => this.step(id, lookup)).then(() => this.emitIfChanged());
  }

  private async syncRound(): Promise<void> {
    if (this.stopped) return;
    const health = new Map<DriverName, Promise<DriverHealth>>();
    for (const [name, driver] of this.options.drivers) {
      health.set(name, this.health.check(name, driver));
    }
    const lookup: HealthLookup = (name) => health.get(name) ?? Promise.resolve(notConfigured);

    const work: Promise<void>[] = [];
    for (const name of this.options.drivers.keys()) work.push(this.scanOrphansIfDue(name, lookup));
    const ids = new Set([...(this.desired?.keys() ?? []), ...this.records.keys()]);
    for (const id of ids) work.push(this.runTask(id, () => this.step(id, lookup)));
    await Promise.allSettled(work);
    this.emitIfChanged();
  }

  /**
   * Runs `task` unless the replica already has one in flight; then it is marked to
   * sync again as soon as that one ends, so no request is lost and none piles up.
   */
  private runTask(id: string, task: () => Promise<void>): Promise<void> {
    if (this.busy.has(id)) {
      this.dirty.add(id);
      return Promise.resolve();
    }
    this.dirty.delete(id);
    const run = (async () => {
      try {
        await task();
      } catch (error) {
        // step() handles every expected failure; this is a bug, and the loop goes on.
        this.logger.error({ err: error, replica: id }, "replica sync failed unexpectedly");
      } finally {
        this.busy.delete(id);
        if (this.dirty.delete(id)) this.requestReplicaSync(id);
      }
    })();
    this.busy.set(id, run);
    return run;
  }

  // --- one replica ---------------------------------------------------------------------

  private async step(id: string, health: HealthLookup): Promise<void> {
    if (this.stopped) return;
    const desired = this.desired?.get(id);
    let record = this.records.get(id);
    if (!desired) {
      if (record) await this.retire(record, health);
      return;
    }
    if (!record) {
      record = this.newRecordFor(desired);
      this.records.set(id, record);
    } else if (record.desired !== desired) {
      // A desired set arrived since this replica's last step (setDesired copies every
      // replica): compare once, then keep the object. Comparing canonical JSON on every
      // step of every sync tick was a seventh of a hollow process's CPU at 1,000 nodes.
      if (isReplacement(record.desired, desired)) {
        if (!(await this.replace(record, desired, health))) return;
      } else {
        const restartProbes = probesChanged(record.desired, desired);
        record.desired = desired;
        if (restartProbes && record.phase === "Running") this.startProbes(record);
      }
    }

    const name = record.desired.spec.driver;
    const driver = this.options.drivers.get(name);
    if (!driver) {
      record.driverProblem = {
        reason: "DriverUnavailable",
        message: `no ${name} driver on this node`,
      };
      return;
    }
    const driverHealth = await health(name);
    if (!driverHealth.ok) {
      record.driverProblem = {
        reason: "DriverUnavailable",
        message: `${name} driver unavailable: ${driverHealth.reason}`,
      };
      return;
    }
    let status: ReplicaRuntimeStatus;
    try {
      status = await this.call(() => driver.status(id), `${name} status`);
    } catch (error) {
      this.noteDriverProblem(record, error);
      return;
    }
    record.driverProblem = undefined;
    await this.reconcile(record, driver, status, true);
  }

  /** Acts on what the driver shows (judged by the restart policy); `allowStart` is false right after a start. */
  private async reconcile(
    record: SupervisedReplica,
    driver: RuntimeDriver,
    status: ReplicaRuntimeStatus,
    allowStart: boolean,
  ): Promise<void> {
    const verdict = judgeRuntimeStatus(
      {
        intent: record.intent,
        startAttempted: record.startAttempted,
        hasRun: record.hasRun,
        stale: isStale(record),
        restoredRunning: record.restoredRunning,
      },
      status,
    );
    switch (verdict.kind) {
      case "replaceOutdated": {
        if (!(await this.teardown(record))) return;
        record.runningGeneration = undefined;
        this.setPhase(record, "Pending", "SpecChanged", "replacing an outdated replica");
        if (allowStart) await this.startWhenDue(record, driver, false);
        return;
      }
      case "running": {
        await this.onRunning(record, driver, status);
        return;
      }
      case "notRunning": {
        if (verdict.forgetRestoredRun) record.restoredRunning = false;
        if (verdict.ended) this.onTerminated(record, verdict.ended);
        if (verdict.mayStart && record.intent === "start" && allowStart) {
          await this.startWhenDue(record, driver, verdict.exists);
        }
        return;
      }
    }
  }

  private async onRunning(
    record: SupervisedReplica,
    driver: RuntimeDriver,
    status: ReplicaRuntimeStatus,
  ): Promise<void> {
    const nowMs = this.clock.nowMs();
    // "done": someone restarted a finished replica behind our back; not ours to judge.
    if (record.intent === "done") return;
    if (record.intent === "start") {
      // Running although we have not (re)started it: left by a previous agent, or a
      // start whose deadline passed but which the engine completed later. Keep it.
      const adopted = !record.startAttempted;
      record.intent = "run";
      record.hasRun = true;
      record.runningGeneration = record.desired.generation;
      this.options.onDurableChange?.();
      record.startedAtMs = status.startedAtMs ?? nowMs;
      record.runSinceMs = nowMs;
      record.nextAttemptAtMs = 0;
      record.cancelWake?.();
      record.cancelWake = undefined;
      if (adopted) {
        this.logger.info({ replica: record.id }, "adopted running replica");
        this.setPhase(record, "Running", "Adopted", "adopted a replica that was already running");
        this.startProbes(record);
      } else {
        this.setRunning(record);
      }
      return;
    }
    if (record.phase !== "Running") this.setRunning(record);
    if (record.portConflict) {
      await this.moveOffPort(record, driver, record.portConflict);
      return;
    }
    if (record.livenessFailure !== undefined) {
      await this.killForLiveness(record, driver, record.livenessFailure);
      return;
    }
    record.failures = failuresAfterRun(record, nowMs, this.backoff);
  }

  private setRunning(record: SupervisedReplica): void {
    const { reason, message } = runningStatus(record.restarts, record.lastTermination);
    this.setPhase(record, "Running", reason, message);
    this.startProbes(record);
  }

  private async killForLiveness(
    record: SupervisedReplica,
    driver: RuntimeDriver,
    failure: string,
  ): Promise<void> {
    this.stopProbes(record);
    this.logger.warn({ replica: record.id, failure }, "liveness probe failed; stopping replica");
    const graceMs = graceMsOf(record.desired);
    try {
      await this.call(
        () => driver.stop(record.id, graceMs),
        `${driver.name} stop`,
        graceMs + this.callTimeoutMs,
      );
    } catch (error) {
      // Remembered so the next sync tries the kill again (the probes are stopped now).
      record.livenessFailure = failure;
      this.noteDriverProblem(record, error);
      return;
    }
    delete record.livenessFailure;
    this.onTerminated(record, livenessFailed(failure));
  }

  /**
   * One of the replica's host ports is held by something else (a probe found it): the
   * replica cannot be reached there, and whatever answers there must not pass its
   * probes. It is stopped and loses the port; the restart (restart policy and back-off
   * as for a crash) gets a new port, told to it in $PORT, and reports it.
   */
  private async moveOffPort(
    record: SupervisedReplica,
    driver: RuntimeDriver,
    conflict: { name: string; port: number; holder: string },
  ): Promise<void> {
    this.stopProbes(record);
    this.logger.warn(
      { replica: record.id, port: conflict.port, holder: conflict.holder },
      "host port held by another program; moving the replica to another port",
    );
    const graceMs = graceMsOf(record.desired);
    try {
      await this.call(
        () => driver.stop(record.id, graceMs),
        `${driver.name} stop`,
        graceMs + this.callTimeoutMs,
      );
    } catch (error) {
      // Remembered so the next sync tries again (the probes are stopped now).
      record.portConflict = conflict;
      this.noteDriverProblem(record, error);
      return;
    }
    // Phase and ports change together: no report shows it Running without its port.
    if (record.hostPorts[conflict.name] === conflict.port) delete record.hostPorts[conflict.name];
    record.foreignPorts = rememberForeignPort(record.foreignPorts, conflict.port);
    this.onTerminated(record, portConflict(conflict.port, conflict.holder));
    this.options.onDurableChange?.();
    await this.ports.release(record.id, { [conflict.name]: conflict.port });
  }

  /** Applies the restart policy's decision to a replica that stopped running. */
  private onTerminated(record: SupervisedReplica, termination: Termination): void {
    const nowMs = this.clock.nowMs();
    this.stopProbes(record);
    record.hasRun = true;
    record.runningGeneration = undefined;
    record.lastTermination = termination;
    if (termination.exitCode !== undefined) record.exitCode = termination.exitCode;
    else delete record.exitCode;
    const decision = decideRestart({
      restartPolicy: record.desired.restartPolicy,
      termination,
      history: record,
      nowMs,
      backoff: this.backoff,
      rng: this.rng,
    });
    if (decision.kind === "giveUp") {
      record.intent = "done";
      this.setPhase(record, decision.phase, decision.reason, decision.message);
      this.logger.info(
        { replica: record.id, phase: decision.phase, reason: termination.reason },
        "replica ended",
      );
      return;
    }
    record.failures = decision.failures;
    record.intent = "start";
    record.nextAttemptAtMs = decision.atMs;
    this.setPhase(record, decision.phase, decision.reason, decision.message);
    this.logger.info(
      {
        replica: record.id,
        delayMs: decision.delayMs,
        failures: record.failures,
        reason: termination.reason,
      },
      "replica stopped running; restart scheduled",
    );
    this.wakeAfter(record, decision.delayMs);
  }

  /** Starts the replica if its back-off allows; `exists` means a stopped copy must go first. */
  private async startWhenDue(
    record: SupervisedReplica,
    driver: RuntimeDriver,
    exists: boolean,
  ): Promise<void> {
    if (this.stopped) return;
    const timing = startTiming(record.nextAttemptAtMs, this.clock.nowMs());
    if (timing.kind === "wait") {
      this.wakeAfter(record, timing.waitMs);
      return;
    }
    const span = startReplicaSpan(record, driver.name);
    try {
      await this.startNow(record, driver, exists, span);
      if (record.intent !== "run") failSpan(span, new Error(`${record.reason}: ${record.message}`));
    } finally {
      endSpan(span);
    }
  }

  /** One start attempt; the driver calls are children of `span` (replica.start). */
  private async startNow(
    record: SupervisedReplica,
    driver: RuntimeDriver,
    exists: boolean,
    span: Span,
  ): Promise<void> {
    const name = driver.name;
    if (exists) {
      // Removed first: what is left of the last run (a process's children, a
      // container's port forwarder) must not make its own ports look taken below.
      try {
        await this.call(() => runInSpan(span, () => driver.remove(record.id)), `${name} remove`);
      } catch (error) {
        const { reason, message } = describeDriverFailure(error);
        this.onStartFailed(record, reason, message);
        return;
      }
    }
    try {
      await this.assignPorts(record, name);
    } catch (error) {
      this.onStartFailed(record, "PortAllocationFailed", errorMessage(error));
      return;
    }
    const isRestart = record.hasRun;
    const starting = startingStatus(isRestart, record.lastTermination);
    this.setPhase(record, "Starting", starting.reason, starting.message);
    record.startAttempted = true;
    let runSpec = buildRunSpec(
      record.desired.spec,
      record.hostPorts,
      this.options.networking?.(record.desired.spec),
    );
    const replicaFiles = this.options.replicaFiles;
    if (replicaFiles && (runSpec.files?.length ?? 0) > 0) {
      // Written before the start, so the replica never runs without them (ADR 0055).
      // Secret values enter only this run spec, never the desired set or the state file.
      try {
        const baseSpec = runSpec;
        const prepared = await this.call(
          () => runInSpan(span, () => replicaFiles(baseSpec, driver)),
          "replica files",
        );
        runSpec = {
          ...baseSpec,
          mounts: prepared.mounts,
          env: { ...baseSpec.env, ...prepared.env },
        };
      } catch (error) {
        const reason =
          error instanceof Error && typeof (error as { reason?: unknown }).reason === "string"
            ? (error as Error & { reason: string }).reason
            : "ReplicaFilesFailed";
        this.onStartFailed(record, reason, errorMessage(error));
        return;
      }
    }
    try {
      await this.call(() => runInSpan(span, () => driver.start(runSpec)), `${name} start`);
    } catch (error) {
      const { reason, message } = describeDriverFailure(error);
      // Another program took the port between allocation and start: pick new ones
      // next time instead of failing on the same port forever.
      if (/address already in use|port is already allocated/i.test(message)) {
        await this.ports.release(record.id, record.hostPorts);
        record.hostPorts = {};
      }
      this.onStartFailed(record, reason, message);
      return;
    }
    const nowMs = this.clock.nowMs();
    if (isRestart) record.restarts += 1;
    record.intent = "run";
    record.runSinceMs = nowMs;
    record.startedAtMs = nowMs;
    record.runningGeneration = record.desired.generation;
    this.options.onDurableChange?.();
    delete record.exitCode;
    runInSpan(span, () =>
      this.logger.info({ replica: record.id, restarts: record.restarts }, "replica started"),
    );
    // Look once more, so a healthy start reports Running in this same sync.
    try {
      const status = await this.call(
        () => runInSpan(span, () => driver.status(record.id)),
        `${name} status`,
      );
      await this.reconcile(record, driver, status, false);
    } catch (error) {
      this.noteDriverProblem(record, error);
    }
  }

  /** Gives the replica its host ports, saved (onDurableChange) before it can listen on them. */
  private assignPorts(record: SupervisedReplica, driver: DriverName): Promise<void> {
    return this.ports.assign(
      record,
      driver,
      record.desired.spec.ports,
      () => portsOfOthers(record.id, this.records, this.restored),
      () => this.options.onDurableChange?.(),
    );
  }

  /** Applies the restart policy's retry to a start that failed. */
  private onStartFailed(record: SupervisedReplica, reason: string, message: string): void {
    const retry = decideRetryAfterFailedStart({
      failures: record.failures,
      hasRun: record.hasRun,
      message,
      nowMs: this.clock.nowMs(),
      backoff: this.backoff,
      rng: this.rng,
    });
    record.failures = retry.failures;
    record.intent = "start";
    record.nextAttemptAtMs = retry.atMs;
    this.setPhase(record, retry.phase, reason, retry.message);
    this.logger.warn(
      { replica: record.id, reason, message, delayMs: retry.delayMs },
      "replica start failed",
    );
    this.wakeAfter(record, retry.delayMs);
  }

  /** Stops the old version of a replica and resets the record for the new one. */
  private async replace(
    record: SupervisedReplica,
    desired: DesiredReplica,
    health: HealthLookup,
  ): Promise<boolean> {
    const oldDriver = record.desired.spec.driver;
    const oldHealth = this.options.drivers.has(oldDriver) ? await health(oldDriver) : notConfigured;
    if (!oldHealth.ok) {
      record.driverProblem = {
        reason: "DriverUnavailable",
        message: `${oldDriver} driver unavailable: ${oldHealth.reason}`,
      };
      return false;
    }
    this.logger.info(
      { replica: record.id, from: record.desired.generation, to: desired.generation },
      "replacing replica with a new spec",
    );
    if (!(await this.teardown(record))) return false;
    record.cancelWake?.();
    const hostPorts = record.hostPorts;
    const fresh = this.newRecordFor(desired);
    Object.assign(record, fresh, { hostPorts });
    delete record.runningGeneration;
    delete record.exitCode;
    delete record.startedAtMs;
    delete record.runSinceMs;
    delete record.lastTermination;
    delete record.driverProblem;
    delete record.cancelWake;
    this.setPhase(
      record,
      "Pending",
      "SpecChanged",
      `replacing with generation ${desired.generation}`,
    );
    return true;
  }

  /** Stops and removes a replica that is no longer desired, then forgets it. */
  private async retire(record: SupervisedReplica, health: HealthLookup): Promise<void> {
    record.cancelWake?.();
    record.cancelWake = undefined;
    this.stopProbes(record);
    this.setPhase(record, "Stopped", "Removing", "stopping: no longer desired on this node");
    const name = record.desired.spec.driver;
    const driverHealth = this.options.drivers.has(name) ? await health(name) : notConfigured;
    if (!driverHealth.ok) {
      record.driverProblem = {
        reason: "DriverUnavailable",
        message: `${name} driver unavailable: ${driverHealth.reason}`,
      };
      return;
    }
    if (await this.teardown(record)) {
      this.records.delete(record.id);
      await this.ports.release(record.id, record.hostPorts);
      this.logger.info({ replica: record.id }, "replica removed");
    }
  }

  /** Stops and removes the replica on its driver; false (and a noted problem) on failure. */
  private async teardown(record: SupervisedReplica, hurry?: AbortSignal): Promise<boolean> {
    this.stopProbes(record);
    const name = record.desired.spec.driver;
    const driver = this.options.drivers.get(name);
    if (!driver) {
      record.driverProblem = {
        reason: "DriverUnavailable",
        message: `no ${name} driver on this node`,
      };
      return false;
    }
    const graceMs = graceMsOf(record.desired);
    try {
      await this.call(
        () => driver.stop(record.id, graceMs, hurry),
        `${name} stop`,
        graceMs + this.callTimeoutMs,
      );
      await this.call(() => driver.remove(record.id), `${name} remove`);
      await this.options.onRemoved?.(record.id).catch(() => undefined);
    } catch (error) {
      this.noteDriverProblem(record, error);
      return false;
    }
    delete record.driverProblem;
    return true;
  }

  // --- orphans -------------------------------------------------------------------------

  /**
   * Lists a driver's replicas and removes those nobody wants. Only once a desired set
   * is known: an agent that restarts without its state keeps everything it finds.
   */
  private async scanOrphansIfDue(name: DriverName, health: HealthLookup): Promise<void> {
    if (this.desired === null) return;
    const nowMs = this.clock.nowMs();
    if (!this.orphanScans.isDue(name, nowMs)) return;
    const driver = this.options.drivers.get(name);
    if (!driver || !(await health(name)).ok) return;
    this.orphanScans.begin(name, nowMs);
    try {
      const listed = await this.call(() => driver.list(), `${name} list`);
      const removals = listed
        .filter((id) => this.isOrphan(id, name))
        .map((id) => this.runTask(id, () => this.removeOrphan(driver, id)));
      await Promise.allSettled(removals);
    } catch (error) {
      this.orphanScans.request(name);
      this.logger.warn({ driver: name, err: errorMessage(error) }, "listing replicas failed");
    } finally {
      this.orphanScans.end(name);
    }
  }

  private isOrphan(id: string, driver: DriverName): boolean {
    return isOrphan(driver, {
      desiredDriver: this.desired?.get(id)?.spec.driver,
      supervisedDriver: this.records.get(id)?.desired.spec.driver,
    });
  }

  private async removeOrphan(driver: RuntimeDriver, id: string): Promise<void> {
    // Checked again: the desired set may have changed while the list was in flight.
    if (this.stopped || !this.isOrphan(id, driver.name)) return;
    this.logger.info({ replica: id, driver: driver.name }, "removing replica nobody wants");
    try {
      await this.call(
        () => driver.stop(id, this.orphanGraceMs),
        `${driver.name} stop`,
        this.orphanGraceMs + this.callTimeoutMs,
      );
      await this.call(() => driver.remove(id), `${driver.name} remove`);
      await this.options.onRemoved?.(id).catch(() => undefined);
      const restored = this.restored[id];
      delete this.restored[id];
      if (restored) await this.ports.release(id, restored.hostPorts);
    } catch (error) {
      this.orphanScans.request(driver.name);
      this.logger.warn({ replica: id, err: errorMessage(error) }, "removing replica failed");
    }
  }

  // --- probes ------------------------------------------------------------------------

  /**
   * Starts the probes of the replica's current run. Their verdicts act on the record:
   * a failing liveness probe has the replica killed at once (not at the next tick), a
   * readiness flip changes the report, and a port of the replica's held by someone
   * else has the replica moved (moveOffPort).
   */
  private startProbes(record: SupervisedReplica): void {
    this.stopProbes(record);
    const driver = this.options.drivers.get(record.desired.spec.driver);
    const exec: ProbeExec | undefined = driver
      ? (command, timeoutMs) =>
          this.call(
            () => driver.exec(record.id, command, timeoutMs),
            `${driver.name} exec`,
            timeoutMs + this.callTimeoutMs,
          )
      : undefined;
    const portOwner = driver?.portOwner?.bind(driver);
    const onProbeResult = this.options.onProbeResult;
    const probes = new ReplicaProbes({
      replicaId: record.id,
      desired: record.desired,
      hostPorts: record.hostPorts,
      clock: this.clock,
      probe: probeWithPortOwnership(
        this.probe,
        driver && portOwner
          ? (port, timeoutMs) =>
              this.call(() => portOwner(record.id, port), `${driver.name} port owner`, timeoutMs)
          : undefined,
        (port, holder) => this.notePortConflict(record, port, holder),
      ),
      ...(exec ? { exec } : {}),
      ...(onProbeResult ? { onResult: onProbeResult } : {}),
      logger: this.logger,
      onLiveness: (passing, message) => {
        if (passing) {
          delete record.livenessFailure;
          return;
        }
        record.livenessFailure = message || "probe failing";
        // Act now rather than at the next tick: a dead replica should not linger.
        this.requestReplicaSync(record.id);
      },
      onReadiness: (passing) => {
        const wasReady = isReady(record);
        record.readinessPassing = passing;
        if (isReady(record) !== wasReady) record.lastTransitionAtMs = this.clock.nowMs();
        this.emitIfChanged();
      },
    });
    record.probes = probes;
    probes.start();
  }

  /** Marks the conflict when `port` is one of the replica's host ports (not some other port a probe names). */
  private notePortConflict(record: SupervisedReplica, port: number, holder: string): void {
    if (record.portConflict || record.intent !== "run" || this.records.get(record.id) !== record) {
      return;
    }
    const name = portNameOf(record.hostPorts, port);
    if (name === undefined) return;
    record.portConflict = { name, port, holder };
    this.requestReplicaSync(record.id);
  }

  private stopProbes(record: SupervisedReplica): void {
    record.probes?.stop();
    delete record.probes;
    delete record.livenessFailure;
    delete record.portConflict;
    record.readinessPassing = false;
  }

  // --- records and helpers -------------------------------------------------------------

  /** A new record, taking over (and consuming) what a restored snapshot knew of the replica. */
  private newRecordFor(desired: DesiredReplica): SupervisedReplica {
    const id = desired.spec.replicaId;
    const restored = this.restored[id];
    delete this.restored[id];
    return newRecord(desired, restored, this.clock.nowMs());
  }

  private setPhase(
    record: SupervisedReplica,
    phase: ReplicaPhase,
    reason: string,
    message: string,
  ) {
    if (record.phase !== phase) record.lastTransitionAtMs = this.clock.nowMs();
    record.phase = phase;
    record.reason = reason;
    record.message = message;
  }

  private emitIfChanged(): void {
    this.reportEmitter.emitIfChanged(this.reports());
  }

  private wakeAfter(record: SupervisedReplica, delayMs: number): void {
    record.cancelWake?.();
    record.cancelWake = this.clock.setTimeout(() => {
      record.cancelWake = undefined;
      this.requestReplicaSync(record.id);
    }, delayMs);
  }

  private noteDriverProblem(record: SupervisedReplica, error: unknown): void {
    record.driverProblem = describeDriverFailure(error);
    this.logger.warn(
      { replica: record.id, reason: record.driverProblem.reason, err: errorMessage(error) },
      "driver call failed",
    );
  }
}

/**
 * The span of one start attempt. A first start continues the trace of the coordinator's
 * placement; a restart (after a crash) starts its own trace, linked to the placement, so
 * a crash-looping replica does not grow one trace without end.
 */
function startReplicaSpan(record: SupervisedReplica, driver: DriverName): Span {
  const traceparent = record.desired.traceparent;
  return startSpan(
    "replica.start",
    {
      "cloudless.replica.id": record.id,
      "cloudless.workload": `${record.desired.spec.namespace}/${record.desired.spec.workload}`,
      "cloudless.workload.revision": record.desired.generation,
      "cloudless.driver": driver,
      "cloudless.replica.restart": record.hasRun,
    },
    record.hasRun
      ? { root: true, links: linksTo(traceparent) }
      : { parent: extractContext(traceparent) },
  );
}

import { canonicalJson } from "../../lib/canonicalJson.js";
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
import {
  DriverError,
  type DriverName,
  type ReplicaRuntimeStatus,
  type RuntimeDriver,
} from "../drivers/driver.js";
import { ProbeRunner } from "../probes/probeRunner.js";
import type {
  ProbeExec,
  ProbeFunction,
  ProbeKind,
  ProbeResult,
  ProbeSpec,
} from "../probes/probeTypes.js";
import { runProbeOnce } from "../probes/runProbeOnce.js";
import { type BackoffPolicy, backoffDelay, defaultBackoff, formatDelay } from "./backoff.js";
import { DeadlineExceededError, withDeadline } from "./deadline.js";
import type { HostPortAllocator } from "./hostPortReservations.js";
import {
  type AllocatePort,
  allocateFreePort,
  allocatorFrom,
  assignHostPorts,
  buildRunSpec,
  droppedPorts,
  judgeProbe,
  localProbePort,
  resolveProbeAction,
} from "./replicaPorts.js";
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
}

type DriverHealth = { ok: true } | { ok: false; reason: string };
type HealthLookup = (driver: DriverName) => Promise<DriverHealth>;

/**
 * What the supervisor means to do next with a replica, independent of what the driver
 * shows: "start" it when its back-off allows, keep it "run"ning, or leave it "done".
 */
type Intent = "start" | "run" | "done";

interface Termination {
  /** "Completed", "Error", "OOMKilled", "LivenessProbeFailed", "Lost". */
  reason: string;
  failed: boolean;
  exitCode?: number;
  /** Short, for parentheses: "exit code 1". */
  detail: string;
  /** A sentence for a final status: "exited with code 1". */
  summary: string;
}

interface ReplicaRecord {
  id: string;
  desired: DesiredReplica;
  intent: Intent;
  hostPorts: Record<string, number>;
  phase: ReplicaPhase;
  reason: string;
  message: string;
  exitCode?: number;
  /** Reported start time of the current run. */
  startedAtMs?: number;
  /** When the current run began on our clock; the back-off resets from here. */
  runSinceMs?: number;
  restarts: number;
  /** Consecutive failures (exits, kills, failed starts) driving the back-off. */
  failures: number;
  nextAttemptAtMs: number;
  /** It ran at least once, so the next start is a restart. */
  hasRun: boolean;
  /** This supervisor has asked the driver to start it at least once. */
  startAttempted: boolean;
  /** Generation of the spec the replica on the node was started with, when known. */
  runningGeneration?: number;
  /**
   * Restored from a snapshot that saw it running: if the runtime no longer has it, it
   * was lost while no agent watched, and the restart policy decides (not a first start).
   */
  restoredRunning: boolean;
  lastTermination?: Termination;
  /** Shown instead of reason/message while the driver cannot be asked. */
  driverProblem?: { reason: string; message: string };
  liveness?: ProbeRunner;
  readiness?: ProbeRunner;
  readinessPassing: boolean;
  /** The liveness probe's last failure message while it is failing. */
  livenessFailure?: string;
  /** A probe found one of the replica's host ports held by something else (this run). */
  portConflict?: { name: string; port: number; holder: string };
  /**
   * Ports a probe found held by something else: never given to this replica again,
   * whatever a bind check says (a foreign IPv6-only listener does not stop an IPv4 bind).
   */
  foreignPorts: number[];
  lastTransitionAtMs: number;
  cancelWake?: () => void;
}

const defaultSyncIntervalMs = 1000;
const defaultDriverCallTimeoutMs = 30_000;
const defaultHealthTimeoutMs = 5000;
const defaultOrphanGraceMs = 10_000;
const defaultOrphanScanIntervalMs = 60_000;
/** Ports remembered per replica as held by others; the oldest is forgotten first. */
const maxForeignPorts = 16;

/**
 * The agent's level-triggered reconciler for the replicas on its own node: it compares
 * the desired set with what the runtime drivers show, and starts, restarts (with
 * crash-loop back-off), replaces and removes replicas until they match. Each replica
 * is worked on by at most one task at a time and every driver call has a deadline, so
 * a wedged engine or replica delays only itself.
 */
export class ReplicaSupervisor {
  private readonly clock: Clock;
  private readonly rng: Rng;
  private readonly logger: Logger;
  private readonly backoff: BackoffPolicy;
  private readonly syncIntervalMs: number;
  private readonly callTimeoutMs: number;
  private readonly healthTimeoutMs: number;
  private readonly orphanGraceMs: number;
  private readonly orphanScanIntervalMs: number;
  private readonly hostPorts: HostPortAllocator;
  private readonly probe: ProbeFunction | undefined;
  /** The host-port assignment in flight; the next one waits for it (see assignPorts). */
  private portAssignment: Promise<unknown> = Promise.resolve();

  /** The one place the desired set lives (serialized by snapshot()); null until first given. */
  private desired: Map<string, DesiredReplica> | null = null;
  /** Host ports and generations from a restored snapshot, used when records are created. */
  private restored: SupervisorSnapshot["replicas"] = {};
  private readonly records = new Map<string, ReplicaRecord>();
  /** Replica ids with a task in flight (one per replica, including orphan removal). */
  private readonly busy = new Map<string, Promise<void>>();
  /** Replicas asked to sync again while their task was still running. */
  private readonly dirty = new Set<string>();
  private readonly driverHealth = new Map<DriverName, DriverHealth>();
  private readonly healthInFlight = new Map<DriverName, Promise<DriverHealth>>();
  private readonly orphanScanRequested = new Set<DriverName>();
  private readonly lastOrphanScanAtMs = new Map<DriverName, number>();
  private readonly orphanScansInFlight = new Set<DriverName>();
  private cancelTick: (() => void) | undefined;
  private lastEmittedKey = "";
  private started = false;
  private stopped = false;

  constructor(private readonly options: ReplicaSupervisorOptions) {
    this.clock = options.clock;
    this.rng = options.rng;
    this.logger = options.logger ?? silentLogger;
    this.backoff = { ...defaultBackoff, ...options.backoff };
    if (options.backoff?.initialMs !== undefined && options.backoff.resetAfterMs === undefined) {
      this.backoff.resetAfterMs = 10 * options.backoff.initialMs;
    }
    this.syncIntervalMs = Math.max(10, options.syncIntervalMs ?? defaultSyncIntervalMs);
    this.callTimeoutMs = options.driverCallTimeoutMs ?? defaultDriverCallTimeoutMs;
    this.healthTimeoutMs = options.healthTimeoutMs ?? defaultHealthTimeoutMs;
    this.orphanGraceMs = options.orphanGraceMs ?? defaultOrphanGraceMs;
    this.orphanScanIntervalMs = options.orphanScanIntervalMs ?? defaultOrphanScanIntervalMs;
    this.hostPorts =
      options.hostPorts ??
      (options.allocatePort
        ? allocatorFrom(options.allocatePort)
        : allocatorFrom(allocateFreePort, true));
    this.probe = options.probe;
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
      for (const name of this.options.drivers.keys()) this.orphanScanRequested.add(name);
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
    for (const name of this.options.drivers.keys()) this.orphanScanRequested.add(name);
    await this.claimRestoredPorts();
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
            await this.releasePorts(record.id, record.hostPorts);
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
    return [...this.records.values()]
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
      .map((record) => this.report(record));
  }

  /** The state to persist for autonomy (NFR-A1): plain data, safe to JSON.stringify. */
  snapshot(): SupervisorSnapshot {
    const replicas: SupervisorSnapshot["replicas"] = structuredClone(this.restored);
    for (const [id, record] of this.records) {
      replicas[id] = {
        hostPorts: { ...record.hostPorts },
        ...(record.runningGeneration !== undefined
          ? { runningGeneration: record.runningGeneration }
          : {}),
        restarts: record.restarts,
      };
    }
    return {
      version: 1,
      desired: this.desired ? structuredClone([...this.desired.values()]) : null,
      replicas,
    };
  }

  /**
   * Whether this agent's own state names the replica: the desired set, a replica it
   * supervises, or one a restored snapshot knew. The drivers adopt a replica without
   * owner marks (made by an older agent) only if so (ADR 0030).
   */
  knows(replicaId: string): boolean {
    return (
      this.desired?.has(replicaId) === true ||
      this.records.has(replicaId) ||
      Object.hasOwn(this.restored, replicaId)
    );
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
      return driver
        ? this.checkHealth(name, driver)
        : Promise.resolve({ ok: false, reason: "not configured on this node" });
    };
    void this.runTask(id, () => this.step(id, lookup)).then(() => this.emitIfChanged());
  }

  private async syncRound(): Promise<void> {
    if (this.stopped) return;
    const health = new Map<DriverName, Promise<DriverHealth>>();
    for (const [name, driver] of this.options.drivers) {
      health.set(name, this.checkHealth(name, driver));
    }
    const lookup: HealthLookup = (name) =>
      health.get(name) ?? Promise.resolve({ ok: false, reason: "not configured on this node" });

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

  private checkHealth(name: DriverName, driver: RuntimeDriver): Promise<DriverHealth> {
    const inFlight = this.healthInFlight.get(name);
    if (inFlight) return inFlight;
    const check = this.call(() => driver.health(), `${name} health`, this.healthTimeoutMs)
      .then(
        (result): DriverHealth => (result.ok ? { ok: true } : { ok: false, reason: result.reason }),
        (error: unknown): DriverHealth => ({ ok: false, reason: errorMessage(error) }),
      )
      .then((result) => {
        const previous = this.driverHealth.get(name);
        if (result.ok && previous?.ok !== true) this.orphanScanRequested.add(name);
        if (previous !== undefined && previous.ok !== result.ok) {
          if (result.ok) this.logger.info({ driver: name }, "driver available again");
          else this.logger.warn({ driver: name, reason: result.reason }, "driver unavailable");
        }
        this.driverHealth.set(name, result);
        return result;
      })
      .finally(() => this.healthInFlight.delete(name));
    this.healthInFlight.set(name, check);
    return check;
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
      record = this.newRecord(desired);
      this.records.set(id, record);
    } else if (record.desired !== desired) {
      // A desired set arrived since this replica's last step (setDesired copies every
      // replica): compare once, then keep the object. Comparing canonical JSON on every
      // step of every sync tick was a seventh of a hollow process's CPU at 1,000 nodes.
      if (isReplacement(record.desired, desired)) {
        if (!(await this.replace(record, desired, health))) return;
      } else {
        const probesChanged =
          canonicalJson(probeSpecs(record.desired)) !== canonicalJson(probeSpecs(desired));
        record.desired = desired;
        if (probesChanged && record.phase === "Running") this.startProbes(record);
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

  /** Acts on what the driver shows; `allowStart` is false right after a start. */
  private async reconcile(
    record: ReplicaRecord,
    driver: RuntimeDriver,
    status: ReplicaRuntimeStatus,
    allowStart: boolean,
  ): Promise<void> {
    switch (status.state) {
      case "running": {
        if (record.intent === "start" && isStale(record)) {
          // Running with a generation the coordinator has since replaced (the agent was
          // down during the change): replace it rather than adopt it.
          if (!(await this.teardown(record))) return;
          record.runningGeneration = undefined;
          this.setPhase(record, "Pending", "SpecChanged", "replacing an outdated replica");
          if (allowStart) await this.startWhenDue(record, driver, false);
          return;
        }
        await this.onRunning(record, driver, status);
        return;
      }
      case "exited": {
        const adoptingExited =
          record.intent === "start" && !record.startAttempted && !record.hasRun && !isStale(record);
        if (record.intent === "run" || adoptingExited) this.onTerminated(record, exitOf(status));
        if (record.intent === "start" && allowStart) await this.startWhenDue(record, driver, true);
        return;
      }
      case "missing": {
        if (record.intent === "start" && record.restoredRunning && !record.startAttempted) {
          // It ran under the previous agent and vanished while nobody watched.
          record.restoredRunning = false;
          this.onTerminated(record, {
            reason: "Lost",
            failed: true,
            detail: "replica disappeared while the agent was down",
            summary: "disappeared from the runtime while the agent was down",
          });
          return;
        }
        if (record.intent === "run") {
          this.onTerminated(record, {
            reason: "Lost",
            failed: true,
            detail: "replica disappeared",
            summary: "disappeared from the runtime",
          });
        }
        if (record.intent === "start" && allowStart) await this.startWhenDue(record, driver, false);
        return;
      }
    }
  }

  private async onRunning(
    record: ReplicaRecord,
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
    if (record.runSinceMs !== undefined && nowMs - record.runSinceMs >= this.backoff.resetAfterMs) {
      record.failures = 0;
    }
  }

  private setRunning(record: ReplicaRecord): void {
    const last = record.lastTermination;
    if (record.restarts > 0 && last) {
      this.setPhase(record, "Running", last.reason, `running; restarted after ${last.detail}`);
    } else {
      this.setPhase(record, "Running", "", "running");
    }
    this.startProbes(record);
  }

  private async killForLiveness(
    record: ReplicaRecord,
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
    this.onTerminated(record, {
      reason: "LivenessProbeFailed",
      failed: true,
      detail: `liveness probe failed: ${failure}`,
      summary: `killed after its liveness probe failed: ${failure}`,
    });
  }

  /**
   * One of the replica's host ports is held by something else (a probe found it): the
   * replica cannot be reached there, and whatever answers there must not pass its
   * probes. It is stopped and loses the port; the restart (restart policy and back-off
   * as for a crash) gets a new port, told to it in $PORT, and reports it.
   */
  private async moveOffPort(
    record: ReplicaRecord,
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
    record.foreignPorts = [...record.foreignPorts, conflict.port].slice(-maxForeignPorts);
    const detail = `host port ${conflict.port} is held by ${conflict.holder}`;
    this.onTerminated(record, {
      reason: "PortConflict",
      failed: true,
      detail,
      summary: `stopped because its ${detail}`,
    });
    this.options.onDurableChange?.();
    await this.releasePorts(record.id, { [conflict.name]: conflict.port });
  }

  /** Applies the restart policy to a replica that stopped running. */
  private onTerminated(record: ReplicaRecord, termination: Termination): void {
    const nowMs = this.clock.nowMs();
    this.stopProbes(record);
    record.hasRun = true;
    record.runningGeneration = undefined;
    record.lastTermination = termination;
    if (termination.exitCode !== undefined) record.exitCode = termination.exitCode;
    else delete record.exitCode;
    const policy = record.desired.restartPolicy;
    const restart = policy === "Always" || (policy === "OnFailure" && termination.failed);
    if (!restart) {
      record.intent = "done";
      const phase = termination.failed ? "Failed" : "Succeeded";
      this.setPhase(record, phase, termination.reason, termination.summary);
      this.logger.info({ replica: record.id, phase, reason: termination.reason }, "replica ended");
      return;
    }
    if (record.runSinceMs !== undefined && nowMs - record.runSinceMs >= this.backoff.resetAfterMs) {
      record.failures = 0;
    }
    record.failures += 1;
    const { nominalMs, delayMs } = backoffDelay(this.backoff, record.failures, this.rng);
    record.intent = "start";
    record.nextAttemptAtMs = nowMs + delayMs;
    // Liveness kills keep their own reason: "why was it restarted?" is the question.
    const reason =
      termination.reason === "LivenessProbeFailed" || termination.reason === "PortConflict"
        ? termination.reason
        : "CrashLoopBackOff";
    const what = termination.failed ? "failed" : "exited";
    this.setPhase(
      record,
      "CrashLoopBackOff",
      reason,
      `back-off ${formatDelay(nominalMs)} restarting ${what} replica (${termination.detail})`,
    );
    this.logger.info(
      { replica: record.id, delayMs, failures: record.failures, reason: termination.reason },
      "replica stopped running; restart scheduled",
    );
    this.wakeAfter(record, delayMs);
  }

  /** Starts the replica if its back-off allows; `exists` means a stopped copy must go first. */
  private async startWhenDue(
    record: ReplicaRecord,
    driver: RuntimeDriver,
    exists: boolean,
  ): Promise<void> {
    if (this.stopped) return;
    const waitMs = record.nextAttemptAtMs - this.clock.nowMs();
    if (waitMs > 0) {
      this.wakeAfter(record, waitMs);
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
    record: ReplicaRecord,
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
    const last = record.lastTermination;
    if (isRestart && last) {
      this.setPhase(record, "Starting", last.reason, `restarting after ${last.detail}`);
    } else {
      this.setPhase(record, "Starting", "", "starting");
    }
    record.startAttempted = true;
    const runSpec = buildRunSpec(record.desired.spec, record.hostPorts);
    try {
      await this.call(() => runInSpan(span, () => driver.start(runSpec)), `${name} start`);
    } catch (error) {
      const { reason, message } = describeDriverFailure(error);
      // Another program took the port between allocation and start: pick new ones
      // next time instead of failing on the same port forever.
      if (/address already in use|port is already allocated/i.test(message)) {
        await this.releasePorts(record.id, record.hostPorts);
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

  /**
   * Gives the replica its host ports. Assignments run one at a time: replicas starting
   * together would otherwise not see each other's ports, and two process replicas
   * (which prefer the declared port) would both get it.
   */
  private assignPorts(record: ReplicaRecord, driver: DriverName): Promise<void> {
    const run = this.portAssignment.then(async () => {
      const before = record.hostPorts;
      record.hostPorts = await this.call(
        () =>
          assignHostPorts(
            driver,
            record.desired.spec.ports,
            before,
            new Set([...this.portsTakenByOthers(record.id), ...record.foreignPorts]),
            this.hostPorts,
            record.id,
          ),
        "allocating host ports",
      );
      const dropped = droppedPorts(before, record.hostPorts);
      if (dropped.length > 0) {
        this.logger.info(
          { replica: record.id, dropped, hostPorts: record.hostPorts },
          "host ports changed: the old ones are taken or no longer declared",
        );
        await this.releasePorts(record.id, Object.fromEntries(dropped.map((p) => [String(p), p])));
      }
      // Saved before the replica starts listening on them (see onDurableChange).
      this.options.onDurableChange?.();
    });
    this.portAssignment = run.catch(() => undefined);
    return run;
  }

  private onStartFailed(record: ReplicaRecord, reason: string, message: string): void {
    const nowMs = this.clock.nowMs();
    record.failures += 1;
    const { nominalMs, delayMs } = backoffDelay(this.backoff, record.failures, this.rng);
    record.intent = "start";
    record.nextAttemptAtMs = nowMs + delayMs;
    // Failed starts retry with the same back-off as crashes, so a missing image or a
    // broken engine costs one attempt per back-off period, not one per sync.
    this.setPhase(
      record,
      record.hasRun ? "CrashLoopBackOff" : "Pending",
      reason,
      `${message} (back-off ${formatDelay(nominalMs)})`,
    );
    this.logger.warn({ replica: record.id, reason, message, delayMs }, "replica start failed");
    this.wakeAfter(record, delayMs);
  }

  /** Stops the old version of a replica and resets the record for the new one. */
  private async replace(
    record: ReplicaRecord,
    desired: DesiredReplica,
    health: HealthLookup,
  ): Promise<boolean> {
    const oldDriver = record.desired.spec.driver;
    const oldHealth = this.options.drivers.has(oldDriver)
      ? await health(oldDriver)
      : { ok: false as const, reason: "not configured on this node" };
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
    const fresh = this.newRecord(desired);
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
  private async retire(record: ReplicaRecord, health: HealthLookup): Promise<void> {
    record.cancelWake?.();
    record.cancelWake = undefined;
    this.stopProbes(record);
    this.setPhase(record, "Stopped", "Removing", "stopping: no longer desired on this node");
    const name = record.desired.spec.driver;
    const driverHealth = this.options.drivers.has(name)
      ? await health(name)
      : { ok: false as const, reason: "not configured on this node" };
    if (!driverHealth.ok) {
      record.driverProblem = {
        reason: "DriverUnavailable",
        message: `${name} driver unavailable: ${driverHealth.reason}`,
      };
      return;
    }
    if (await this.teardown(record)) {
      this.records.delete(record.id);
      await this.releasePorts(record.id, record.hostPorts);
      this.logger.info({ replica: record.id }, "replica removed");
    }
  }

  /** Stops and removes the replica on its driver; false (and a noted problem) on failure. */
  private async teardown(record: ReplicaRecord, hurry?: AbortSignal): Promise<boolean> {
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
    if (this.desired === null || this.orphanScansInFlight.has(name)) return;
    const nowMs = this.clock.nowMs();
    const lastMs = this.lastOrphanScanAtMs.get(name);
    const due =
      this.orphanScanRequested.has(name) ||
      lastMs === undefined ||
      nowMs - lastMs >= this.orphanScanIntervalMs;
    if (!due) return;
    const driver = this.options.drivers.get(name);
    if (!driver || !(await health(name)).ok) return;
    this.orphanScansInFlight.add(name);
    this.orphanScanRequested.delete(name);
    this.lastOrphanScanAtMs.set(name, nowMs);
    try {
      const listed = await this.call(() => driver.list(), `${name} list`);
      const removals = listed
        .filter((id) => this.isOrphan(id, name))
        .map((id) => this.runTask(id, () => this.removeOrphan(driver, id)));
      await Promise.allSettled(removals);
    } catch (error) {
      this.orphanScanRequested.add(name);
      this.logger.warn({ driver: name, err: errorMessage(error) }, "listing replicas failed");
    } finally {
      this.orphanScansInFlight.delete(name);
    }
  }

  private isOrphan(id: string, driver: DriverName): boolean {
    if (this.desired?.get(id)?.spec.driver === driver) return false;
    if (this.records.get(id)?.desired.spec.driver === driver) return false;
    return true;
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
      const restored = this.restored[id];
      delete this.restored[id];
      if (restored) await this.releasePorts(id, restored.hostPorts);
    } catch (error) {
      this.orphanScanRequested.add(driver.name);
      this.logger.warn({ replica: id, err: errorMessage(error) }, "removing replica failed");
    }
  }

  // --- probes ------------------------------------------------------------------------

  private startProbes(record: ReplicaRecord): void {
    this.stopProbes(record);
    const { desired } = record;
    const startedAtMs = this.clock.nowMs();
    const driver = this.options.drivers.get(desired.spec.driver);
    const exec: ProbeExec | undefined = driver
      ? (command, timeoutMs) =>
          this.call(
            () => driver.exec(record.id, command, timeoutMs),
            `${driver.name} exec`,
            timeoutMs + this.callTimeoutMs,
          )
      : undefined;
    const probe = this.ownedProbe(record, driver);
    const runnerFor = (
      kind: "liveness" | "readiness",
      spec: ProbeSpec,
      onChange: (passing: boolean, message: string, runner: ProbeRunner) => void,
    ): ProbeRunner => {
      const runner: ProbeRunner = new ProbeRunner({
        kind,
        spec: {
          ...spec,
          action: resolveProbeAction(spec.action, desired.spec.ports, record.hostPorts),
        },
        clock: this.clock,
        startedAtMs,
        probe,
        ...(exec ? { exec } : {}),
        ...(this.options.onProbeResult
          ? { onResult: (result: ProbeResult) => this.options.onProbeResult?.(kind, result) }
          : {}),
        logger: this.logger.child({ replica: record.id }),
        onChange: (state) =>
          onChange(state.status === "passing", state.lastResult?.message ?? "", runner),
      });
      return runner;
    };
    if (desired.liveness) {
      record.liveness = runnerFor("liveness", desired.liveness, (passing, message, runner) => {
        if (record.liveness !== runner) return;
        if (passing) {
          delete record.livenessFailure;
          return;
        }
        record.livenessFailure = message || "probe failing";
        // Act now rather than at the next tick: a dead replica should not linger.
        this.requestReplicaSync(record.id);
      });
      record.liveness.start();
    }
    if (desired.readiness) {
      record.readiness = runnerFor("readiness", desired.readiness, (passing, _message, runner) => {
        if (record.readiness !== runner) return;
        const wasReady = this.isReady(record);
        record.readinessPassing = passing;
        if (this.isReady(record) !== wasReady) record.lastTransitionAtMs = this.clock.nowMs();
        this.emitIfChanged();
      });
      record.readiness.start();
    }
  }

  /**
   * The probe function for a replica's probes: the probe itself, then — for an http or
   * tcp probe of this node — the driver's word on who holds the port (REQ-032), so a
   * probe answered by another replica or program fails and says by whom. A port of
   * the replica's own held by someone else is a conflict the next sync resolves by
   * moving the replica (moveOffPort).
   */
  private ownedProbe(record: ReplicaRecord, driver: RuntimeDriver | undefined): ProbeFunction {
    const probe = this.probe ?? runProbeOnce;
    const portOwner = driver?.portOwner?.bind(driver);
    if (!driver || !portOwner) return probe;
    return async (action, options) => {
      const result = await probe(action, options);
      const port = localProbePort(action);
      // Refused: no listener took the connection, so there is no one to identify (the
      // usual answer while a replica starts; it spares the check its cost).
      if (port === undefined || result.refused) return result;
      const owner = await this.call(
        () => portOwner(record.id, port),
        `${driver.name} port owner`,
        options.timeoutMs,
      ).catch((error: unknown) => ({ kind: "unknown" as const, reason: errorMessage(error) }));
      const verdict = judgeProbe(result, owner, port);
      if (verdict.foreignHolder !== undefined) {
        this.notePortConflict(record, port, verdict.foreignHolder);
      }
      return verdict.result;
    };
  }

  /** Marks the conflict when `port` is one of the replica's host ports (not some other port a probe names). */
  private notePortConflict(record: ReplicaRecord, port: number, holder: string): void {
    if (record.portConflict || record.intent !== "run" || this.records.get(record.id) !== record) {
      return;
    }
    const name = Object.keys(record.hostPorts).find((key) => record.hostPorts[key] === port);
    if (name === undefined) return;
    record.portConflict = { name, port, holder };
    this.requestReplicaSync(record.id);
  }

  private stopProbes(record: ReplicaRecord): void {
    record.liveness?.stop();
    record.readiness?.stop();
    delete record.liveness;
    delete record.readiness;
    delete record.livenessFailure;
    delete record.portConflict;
    record.readinessPassing = false;
  }

  // --- reports and helpers -----------------------------------------------------------------

  private newRecord(desired: DesiredReplica): ReplicaRecord {
    const id = desired.spec.replicaId;
    const restored = this.restored[id];
    delete this.restored[id];
    return {
      id,
      desired,
      intent: "start",
      hostPorts: restored ? { ...restored.hostPorts } : knownHostPorts(desired),
      phase: "Pending",
      reason: "",
      message: "waiting to start",
      restarts: restored?.restarts ?? 0,
      failures: 0,
      nextAttemptAtMs: 0,
      hasRun: false,
      startAttempted: false,
      ...(restored?.runningGeneration !== undefined
        ? { runningGeneration: restored.runningGeneration }
        : {}),
      restoredRunning:
        restored?.runningGeneration !== undefined &&
        restored.runningGeneration === desired.generation,
      readinessPassing: false,
      foreignPorts: [],
      lastTransitionAtMs: this.clock.nowMs(),
    };
  }

  private setPhase(record: ReplicaRecord, phase: ReplicaPhase, reason: string, message: string) {
    if (record.phase !== phase) record.lastTransitionAtMs = this.clock.nowMs();
    record.phase = phase;
    record.reason = reason;
    record.message = message;
  }

  private isReady(record: ReplicaRecord): boolean {
    return (
      record.phase === "Running" &&
      (record.desired.readiness === undefined || record.readinessPassing)
    );
  }

  private report(record: ReplicaRecord): ReplicaReport {
    return {
      replicaId: record.id,
      phase: record.phase,
      ready: this.isReady(record),
      restarts: record.restarts,
      reason: record.driverProblem?.reason ?? record.reason,
      message: record.driverProblem?.message ?? record.message,
      ...(record.exitCode !== undefined ? { exitCode: record.exitCode } : {}),
      ...(record.startedAtMs !== undefined ? { startedAtMs: record.startedAtMs } : {}),
      hostPorts: { ...record.hostPorts },
      driver: record.desired.spec.driver,
      lastTransitionAtMs: record.lastTransitionAtMs,
    };
  }

  private emitIfChanged(): void {
    const reports = this.reports();
    const key = JSON.stringify(reports);
    if (key === this.lastEmittedKey) return;
    this.lastEmittedKey = key;
    try {
      this.options.onReport(reports);
    } catch (error) {
      this.logger.error({ err: error }, "onReport handler threw");
    }
  }

  private wakeAfter(record: ReplicaRecord, delayMs: number): void {
    record.cancelWake?.();
    record.cancelWake = this.clock.setTimeout(() => {
      record.cancelWake = undefined;
      this.requestReplicaSync(record.id);
    }, delayMs);
  }

  /**
   * Re-asserts the reservations of the host ports a previous agent gave its replicas
   * (their processes may still listen on them), before anything is allocated.
   */
  private async claimRestoredPorts(): Promise<void> {
    for (const [id, restored] of Object.entries(this.restored)) {
      for (const port of new Set(Object.values(restored.hostPorts))) {
        const claimed = await this.hostPorts.claim(port, id).catch((error: unknown) => {
          this.logger.warn({ replica: id, port, err: errorMessage(error) }, "cannot reserve port");
          return true;
        });
        if (!claimed) {
          // Kept for now: a running replica still listens there; its probes and its next
          // start find out whether the port is really someone else's.
          this.logger.warn({ replica: id, port }, "host port reserved by another agent");
        }
      }
    }
  }

  /** Gives up the reservations of a replica's ports; failures only cost a stale file. */
  private async releasePorts(id: string, hostPorts: Record<string, number>): Promise<void> {
    for (const port of new Set(Object.values(hostPorts))) {
      await this.hostPorts.release(port, id).catch((error: unknown) => {
        this.logger.warn({ replica: id, port, err: errorMessage(error) }, "cannot release port");
      });
    }
  }

  private portsTakenByOthers(id: string): Set<number> {
    const taken = new Set<number>();
    for (const [otherId, record] of this.records) {
      if (otherId === id) continue;
      for (const port of Object.values(record.hostPorts)) taken.add(port);
    }
    for (const [otherId, restored] of Object.entries(this.restored)) {
      if (otherId === id) continue;
      for (const port of Object.values(restored.hostPorts)) taken.add(port);
    }
    return taken;
  }

  private noteDriverProblem(record: ReplicaRecord, error: unknown): void {
    record.driverProblem = describeDriverFailure(error);
    this.logger.warn(
      { replica: record.id, reason: record.driverProblem.reason, err: errorMessage(error) },
      "driver call failed",
    );
  }

  /** A driver call with a deadline on the injected clock; synchronous throws become rejections. */
  private call<T>(fn: () => Promise<T>, operation: string, timeoutMs = this.callTimeoutMs) {
    let promise: Promise<T>;
    try {
      promise = fn();
    } catch (error) {
      promise = Promise.reject(error);
    }
    return withDeadline(promise, timeoutMs, this.clock, operation);
  }
}

/**
 * Host ports known without allocating: those the spec pins. Every other port is
 * allocated at start — for the process driver too, which only prefers the declared
 * port, since several replicas on one node cannot all listen on it. Adopted replicas
 * without a restored snapshot have only these.
 */
function knownHostPorts(desired: DesiredReplica): Record<string, number> {
  const known: Record<string, number> = {};
  for (const port of desired.spec.ports) {
    if (port.hostPort > 0) known[port.name] = port.hostPort;
  }
  return known;
}

function graceMsOf(desired: DesiredReplica): number {
  const seconds = desired.terminationGracePeriodSeconds;
  return Number.isFinite(seconds) && seconds >= 0 ? Math.round(seconds * 1000) : 30_000;
}

function exitOf(status: ReplicaRuntimeStatus): Termination {
  const code = status.exitCode;
  if (status.oomKilled) {
    const detail = code === undefined ? "OOM killed" : `OOM killed, exit code ${code}`;
    return {
      reason: "OOMKilled",
      failed: true,
      ...(code !== undefined ? { exitCode: code } : {}),
      detail,
      summary: `killed for exceeding its memory limit (${detail})`,
    };
  }
  if (code === undefined) {
    return { reason: "Error", failed: true, detail: "exit code unknown", summary: "exited" };
  }
  return {
    reason: code === 0 ? "Completed" : "Error",
    failed: code !== 0,
    exitCode: code,
    detail: `exit code ${code}`,
    summary: `exited with code ${code}`,
  };
}

/** Reason words for driver failures; DriverError kinds map one to one. */
function describeDriverFailure(error: unknown): { reason: string; message: string } {
  const message = errorMessage(error);
  if (error instanceof DeadlineExceededError) return { reason: "DriverTimeout", message };
  if (error instanceof DriverError) {
    switch (error.kind) {
      case "imageNotFound":
        return { reason: "ImageNotFound", message };
      case "invalid":
        return { reason: "InvalidSpec", message };
      case "unavailable":
        return { reason: "DriverUnavailable", message };
      case "failed":
        return { reason: "DriverError", message };
    }
  }
  return { reason: "DriverError", message };
}

function isStale(record: ReplicaRecord): boolean {
  return (
    record.runningGeneration !== undefined && record.runningGeneration !== record.desired.generation
  );
}

/** A new generation or a different run spec means a new replica; probe changes do not. */
/**
 * The span of one start attempt. A first start continues the trace of the coordinator's
 * placement; a restart (after a crash) starts its own trace, linked to the placement, so
 * a crash-looping replica does not grow one trace without end.
 */
function startReplicaSpan(record: ReplicaRecord, driver: DriverName): Span {
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

function isReplacement(current: DesiredReplica, next: DesiredReplica): boolean {
  return (
    current.generation !== next.generation ||
    canonicalJson(current.spec) !== canonicalJson(next.spec)
  );
}

function probeSpecs(desired: DesiredReplica): unknown {
  return { liveness: desired.liveness ?? null, readiness: desired.readiness ?? null };
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

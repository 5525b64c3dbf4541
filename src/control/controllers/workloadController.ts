import { limits } from "../../api/limits.js";
import type { Clock } from "../../lib/clock.js";
import type { Rng } from "../../lib/rng.js";
import type { Logger } from "../../observe/logger.js";
import type { ControllerMetrics } from "../../observe/metrics.js";
import { runUntraced, withSpan } from "../../observe/tracing.js";
import type { EventLog, NewEvent } from "../events/eventLog.js";
import type { PlanResult } from "../scheduler/planCheck.js";
import type {
  ClusterSnapshot,
  ExistingReplica,
  PendingReplica,
  ScoreWeights,
  Unschedulable,
} from "../scheduler/types.js";
import type { Store } from "../store/store.js";
import { commitPacked, txnOpsFor } from "../store/txnBatches.js";
import type { AssignmentHub } from "./assignmentHub.js";
import { AssignmentPublisher } from "./assignmentPublisher.js";
import { type CacheChange, ClusterCache } from "./clusterCache.js";
import type { ClusterState, Versioned } from "./clusterState.js";
import { type PlanApplier, StorePlanApplier } from "./planApplier.js";
import { afterPlan, exhaustedEvents } from "./planRetry.js";
import {
  defaultRebalanceOptions,
  type RebalanceDecision,
  type RebalanceOptions,
} from "./rebalancer.js";
import { RebalancePass, RebalanceStep } from "./rebalanceStep.js";
import {
  type ReconcilePlan,
  rebalanceActions,
  rebalanceEvent,
  reconcileWrites,
} from "./reconcileWrites.js";
import { type ReplicaRecord, type WorkloadRecord, workloadId } from "./records.js";
import { ReplacementTimer } from "./replacementTimer.js";
import { type RolloutStatus, RolloutTracker } from "./rolloutTracker.js";
import { scheduleInSlices } from "./scheduleInSlices.js";
import { availabilityOf, existingReplicaOf, toSchedNodes } from "./schedulerInput.js";
import { asSpecView, driverOfSpec, placementOf } from "./specView.js";
import { reconcileWorkload } from "./workloadReconciler.js";

/** The longest wait between passes that have work, however long the last one took. */
const maxPassBackoffMs = 500;

export interface WorkloadControllerOptions {
  store: Store;
  clock: Clock;
  rng: Rng;
  logger: Logger;
  events: EventLog;
  assignments: AssignmentHub;
  weights?: ScoreWeights;
  /** A full pass runs at least this often even without changes (level-triggered safety net). */
  resyncIntervalMs?: number;
  /** Changes arriving within this window share one pass. */
  debounceMs?: number;
  /** Scheduler and rescheduling metrics (REQ-070); absent in unit tests. */
  metrics?: ControllerMetrics;
  /**
   * Replica writes a pass plans and replicas it schedules at most (default
   * limits.replicasPerPass); the rest wait for the next pass.
   */
  replicasPerPass?: number;
  /**
   * The rebalancer (ADR 0035): on unless `enabled: false` (the coordinator's
   * `--no-rebalance`); a workload can also turn it off with `placement.rebalance: false`.
   */
  rebalance?: Partial<RebalanceOptions> & { enabled?: boolean };
  /**
   * Wraps the coordinator's plan applier; tests pass the scheduler harness's rejecting
   * planner here (scheduler/testing/harness.ts) to drive the retry path in process.
   */
  planApplier?: (applier: PlanApplier) => PlanApplier;
}

/**
 * The coordinator's control loop: replica and rollout reconciliation, node-loss
 * rescheduling, scheduling of pending replicas (the coordinator is the only committer
 * of plans, re-checking each placement before it writes it) and the per-node desired
 * sets pushed to agents. Each pass reads the whole state at one revision.
 */
export class WorkloadController {
  /**
   * The leader's watch-fed copy of the cluster state: passes, the plan applier and the
   * replica status writer read it instead of the store. Started and dropped with the term.
   */
  readonly cache: ClusterCache;
  private unsubscribe: (() => void) | undefined;
  /** Workloads whose record, replicas or replicas' nodes changed since the last pass. */
  private dirtyWorkloads = new Set<string>();
  /** Nodes whose desired set may have changed since the last publish. */
  private dirtyNodes = new Set<string>();
  /** The next pass reconciles every workload and republishes every node. */
  private fullPass = true;
  private running = false;
  /** How long the last pass took (wall clock), for the back-off between passes. */
  private lastPassMs = 0;
  private dirty = false;
  /** Only the leader's controller runs; it is started on election and stopped on demotion. */
  private stopped = true;
  private cancelTimer: (() => void) | undefined;
  private passPromise: Promise<void> = Promise.resolve();
  /** The only committer of plans (re-check, then write), possibly wrapped by a test. */
  private readonly storeApplier: StorePlanApplier;
  private readonly applier: PlanApplier;
  private readonly publisher: AssignmentPublisher;
  /** Plans in a row whose placements were all refused: bounds the immediate retries. */
  private rejectedPlansInARow = 0;
  /** Revisions seen in progress, per workload, so a completed rollout is announced once. */
  private readonly rollouts = new RolloutTracker();
  /** Replicas placed, by pass; read by tests and metrics. */
  placementsTotal = 0;
  /** Where the next pass's window of pending replicas starts, when more wait than fit. */
  private pendingCursor = 0;
  /** Windows of pending replicas tried since one placed anything. */
  private windowsWithoutPlacement = 0;
  private readonly replacements: ReplacementTimer;
  private readonly rebalance: RebalanceStep;

  constructor(private readonly options: WorkloadControllerOptions) {
    const histogram = options.metrics?.nodeLossToReplacementRunning;
    this.replacements = new ReplacementTimer((seconds) => histogram?.observe(seconds));
    this.cache = new ClusterCache(options.store, { logger: options.logger });
    this.storeApplier = new StorePlanApplier({
      store: options.store,
      cache: this.cache,
      clock: options.clock,
      events: options.events,
    });
    this.applier = options.planApplier?.(this.storeApplier) ?? this.storeApplier;
    this.publisher = new AssignmentPublisher(this.cache, options.assignments);
    const { enabled, ...rebalance } = options.rebalance ?? {};
    this.rebalance = new RebalanceStep(
      enabled ?? true,
      { ...defaultRebalanceOptions, ...rebalance },
      options.weights,
    );
  }

  /**
   * Reads the state into the cache, then follows and reconciles it; callable again after
   * stop() (a new leadership term starts from a fresh read).
   */
  async start(): Promise<void> {
    if (!this.stopped) return;
    await this.passPromise;
    this.rollouts.clear();
    this.storeApplier.reset();
    this.rejectedPlansInARow = 0;
    this.dirtyWorkloads.clear();
    this.dirtyNodes.clear();
    this.fullPass = true;
    this.unsubscribe = this.cache.onChange((change) => this.noteChange(change));
    try {
      await this.cache.start();
    } catch (error) {
      this.unsubscribe();
      this.unsubscribe = undefined;
      this.cache.stop();
      throw error;
    }
    this.stopped = false;
    this.trigger();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelTimer?.();
    await this.passPromise;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    this.cache.stop();
  }

  /** Turns what the cache applied into the next pass's work. */
  private noteChange(change: CacheChange): void {
    if (change.reset) {
      this.fullPass = true;
    } else {
      for (const workload of change.workloads) this.dirtyWorkloads.add(workload);
      for (const node of change.replicaNodes) this.dirtyNodes.add(node);
      for (const node of change.nodes) {
        // A node's health decides its replicas' readiness and whether they are replaced.
        this.dirtyNodes.add(node);
        for (const replica of this.cache.replicasOnNode(node).values()) {
          this.dirtyWorkloads.add(workloadId(replica.value.namespace, replica.value.workload));
        }
      }
    }
    this.trigger();
  }

  /** Asks for a pass soon; passes never overlap. */
  trigger(): void {
    if (this.stopped) return;
    this.dirty = true;
    if (this.running) return;
    this.cancelTimer?.();
    this.cancelTimer = this.options.clock.setTimeout(() => this.runPass(), this.dirtyDelayMs());
  }

  /**
   * The wait before a pass that has work: the debounce, or as long as the last pass took
   * (capped), so that under churn passes take at most about half of the event loop and
   * agents' reports and heartbeats keep flowing; pending work meanwhile joins one pass.
   */
  private dirtyDelayMs(): number {
    return Math.max(this.options.debounceMs ?? 10, Math.min(this.lastPassMs, maxPassBackoffMs));
  }

  /** Waits for the current pass (tests). */
  async settled(): Promise<void> {
    await this.passPromise;
  }

  private runPass(): void {
    if (this.running || this.stopped) return;
    this.running = true;
    this.dirty = false;
    const startedMs = this.options.clock.nowMs();
    // A pass belongs to no request: whichever one triggered it, its spans start a trace.
    this.passPromise = runUntraced(() => this.pass())
      .catch((error: unknown) =>
        this.options.logger.error({ err: error }, "controller pass failed"),
      )
      .finally(() => {
        this.running = false;
        this.lastPassMs = this.options.clock.nowMs() - startedMs;
        if (this.stopped) return;
        const delayMs = this.dirty ? this.dirtyDelayMs() : (this.options.resyncIntervalMs ?? 2000);
        this.cancelTimer = this.options.clock.setTimeout(() => {
          // The periodic resync looks at everything (level-triggered safety net).
          if (!this.dirty) this.fullPass = true;
          this.dirty = true;
          this.runPass();
        }, delayMs);
      });
  }

  private async pass(): Promise<void> {
    // biome-ignore lint/plugin/clockAndRng: the pass span's start; the tracer stamps its end on the real clock
    const startTime = Date.now();
    await this.cache.ready();
    const full = this.fullPass;
    const workloads = this.dirtyWorkloads;
    const nodes = this.dirtyNodes;
    this.fullPass = false;
    this.dirtyWorkloads = new Set();
    this.dirtyNodes = new Set();
    try {
      await this.passOver(startTime, full ? undefined : workloads, full ? undefined : nodes);
    } catch (error) {
      // What this pass took on is not done: the next one looks at everything.
      this.fullPass = true;
      throw error;
    }
  }

  /**
   * One pass over the cached state: `workloads` to reconcile and `nodes` to republish,
   * or everything when undefined.
   */
  private async passOver(
    startTime: number,
    workloads: ReadonlySet<string> | undefined,
    nodes: ReadonlySet<string> | undefined,
  ): Promise<void> {
    let state = this.cache.snapshot();
    const plans = this.planReconcile(state, workloads);
    if (plans.length === 0 && !hasPendingReplicas(state)) {
      // Nothing to change: the pass only republishes, and leaves no trace.
      this.options.metrics?.schedulerPending.set(0);
      this.publish(state, nodes);
      return;
    }
    await withSpan(
      "controller.pass",
      { "cloudless.controller.workloads_changed": plans.length },
      async () => {
        if (plans.length > 0) {
          const wrote = await withSpan(
            "controller.reconcile",
            {
              "cloudless.controller.workloads_changed": plans.length,
              "cloudless.controller.actions": plans.reduce((n, p) => n + p.actions.length, 0),
            },
            () => this.reconcile(state, plans),
          );
          if (wrote > 0) {
            await this.cache.waitFor(wrote);
            state = this.cache.snapshot();
          }
        }
        const placed = await this.scheduleAndCommit(state);
        if (placed > 0) {
          await this.cache.waitFor(placed);
          state = this.cache.snapshot();
        }
        // The cache has applied this pass's writes (waitFor) and marked their nodes dirty:
        // they are published now, not a pass (up to maxPassBackoffMs) later — that wait
        // was most of a failed node's replacement time. Nodes a slower cache has not yet
        // marked are published by the pass its change triggers; never a wrong set.
        this.publish(state, this.takeDirtyNodes(nodes));
      },
      { root: true, startTime },
    );
  }

  /** `nodes` (undefined: all) plus the nodes marked dirty since the pass began, which it takes. */
  private takeDirtyNodes(nodes: ReadonlySet<string> | undefined): ReadonlySet<string> | undefined {
    const marked = this.dirtyNodes;
    this.dirtyNodes = new Set();
    if (nodes === undefined) return undefined;
    for (const node of nodes) marked.add(node);
    return marked;
  }

  private publish(state: ClusterState, nodes: ReadonlySet<string> | undefined): void {
    this.publisher.publish(state, nodes);
    // Only losses waiting for a replacement need the replicas (an O(replicas) walk).
    if (this.replacements.pending > 0) {
      this.replacements.update(
        new Map(
          [...state.replicasByWorkload].map(([key, list]) => [key, list.map((r) => r.value)]),
        ),
        this.options.clock.nowMs(),
      );
    }
  }

  /**
   * What the replica and rollout controllers would do, per workload with something to
   * do, among `only` (every workload when undefined).
   */
  private planReconcile(state: ClusterState, only?: ReadonlySet<string>): ReconcilePlan[] {
    const nodeStatus = (name: string) => state.nodes.get(name)?.status;
    const keys = only ?? new Set([...state.workloads.keys(), ...state.replicasByWorkload.keys()]);
    const plans: ReconcilePlan[] = [];
    // A pass writes at most this many replicas, so its memory and its transactions stay
    // bounded however much was asked at once; what is left is the next pass's (ADR 0026).
    let budget = this.replicasPerPass;
    const pass = new RebalancePass(state, this.options.clock.nowMs());
    for (const key of keys) {
      const workload = state.workloads.get(key)?.value;
      const replicas = state.replicasByWorkload.get(key) ?? [];
      const spec = workload ? asSpecView(workload.spec) : undefined;
      const newId = () => newReplicaId(workload?.name ?? "replica", this.options.rng);
      const planned = reconcileWorkload({
        workload:
          workload && spec
            ? {
                revision: workload.revision,
                replicas: workload.replicas,
                minAvailable: workload.minAvailable,
                maxSurge: spec.spec.rollout.maxSurge,
                maxUnavailable: spec.spec.rollout.maxUnavailable,
              }
            : undefined,
        replicas: replicas.map((r) => r.value),
        nodeStatus,
        newReplicaId: newId,
        maxCreates: Math.max(0, budget),
      });
      const { status } = planned;
      // A prefix of a workload's actions is safe on its own: each stop keeps the
      // rollout's floor by itself and each create stays within the surge.
      const actions = planned.actions.slice(0, Math.max(0, budget));
      budget -= actions.length;
      if (actions.length < planned.actions.length || planned.deferredCreates > 0) {
        this.dirtyWorkloads.add(key);
        this.dirty = true;
      }
      // The rebalancer moves replicas only where the reconciler has nothing to fix. Its
      // few actions (a surge, a stop, a finish) may take the budget a little below zero.
      let rebalance: RebalanceDecision | undefined;
      if (planned.actions.length === 0 && planned.deferredCreates === 0 && workload && spec) {
        rebalance = this.rebalance.decide(state, key, workload, spec, replicas, pass);
        if (rebalance) {
          const moves = rebalanceActions(rebalance, workload, newId, pass.nowMs);
          actions.push(...moves);
          budget -= moves.length;
        }
      }
      if (actions.length > 0) plans.push({ key, workload, spec, replicas, actions, rebalance });
      if (workload) this.noteRolloutProgress(key, workload.revision, status);
      else this.rollouts.forget(key);
    }
    return plans;
  }

  private get replicasPerPass(): number {
    return this.options.replicasPerPass ?? limits.replicasPerPass;
  }

  /** Records a RolloutCompleted event when a rollout seen in progress has just completed. */
  private noteRolloutProgress(key: string, revision: number, status: RolloutStatus): void {
    const event = this.rollouts.note(key, revision, status);
    if (event) void this.options.events.record(event).catch(() => undefined);
  }

  /**
   * Writes the planned actions: each workload's writes in one transaction when they fit,
   * several workloads per transaction (a commit each costs more than its size), every
   * write guarded by its own compare. Returns the highest revision written, 0 if none.
   */
  private async reconcile(state: ClusterState, plans: ReconcilePlan[]): Promise<number> {
    const now = this.options.clock.nowMs();
    const groups = reconcileWrites(state, plans, now);
    let wrote = 0;
    const forgotten = new Map<string, number>();
    const rebalanced: NewEvent[] = [];
    for (const outcome of await commitPacked(
      this.options.store,
      groups,
      txnOpsFor(this.options.store),
    )) {
      if (!outcome.succeeded) {
        // Its workloads are looked at again next pass, against the newer state.
        this.dirty = true;
        for (const item of outcome.items) this.dirtyWorkloads.add(item.tag.workload);
        continue;
      }
      wrote = Math.max(wrote, outcome.revision);
      for (const { tag } of outcome.items) {
        const event = tag.rebalance && rebalanceEvent(tag.workload, tag.rebalance);
        if (event) rebalanced.push(event);
        if (tag.lostAtMs !== undefined)
          this.replacements.noteForgotten(tag.workload, tag.lostAtMs, now);
        if (tag.forgottenOnLostNode) {
          forgotten.set(tag.workload, (forgotten.get(tag.workload) ?? 0) + 1);
        }
      }
    }
    for (const [key, count] of forgotten) {
      await this.options.events.record({
        type: "ReplicasRescheduled",
        category: "scheduling",
        subject: `workload/${key}`,
        reason: "NodeLost",
        message: `${count} replica${count === 1 ? "" : "s"} on lost or departed nodes replaced`,
      });
    }
    for (const event of rebalanced) {
      this.options.logger.info({ workload: event.subject, event: event.type }, event.message);
    }
    // Recorded together, they share a commit (ADR 0025).
    await Promise.all(rebalanced.map((event) => this.options.events.record(event)));
    return wrote;
  }

  /** Schedules pending replicas and commits the plan; returns the revision written, 0 if none. */
  private async scheduleAndCommit(state: ClusterState): Promise<number> {
    const waiting: Array<{
      key: string;
      workload: WorkloadRecord;
      replica: Versioned<ReplicaRecord>;
    }> = [];
    const existing: ExistingReplica[] = [];
    for (const [key, replicas] of state.replicasByWorkload) {
      const workload = state.workloads.get(key)?.value;
      for (const replica of replicas) {
        if (replica.value.node !== "") {
          existing.push(existingReplicaOf(key, replica.value, workload));
          continue;
        }
        if (replica.value.desired !== "Running" || !workload) continue;
        waiting.push({ key, workload, replica });
      }
    }
    this.options.metrics?.schedulerPending.set(waiting.length);
    if (waiting.length === 0) return 0;
    // At most replicasPerPass are decided per pass, in a window that moves round the
    // waiting ones, so replicas that fit nowhere cannot keep others from being tried.
    const window = this.pendingWindow(waiting);
    const pending: PendingReplica[] = [];
    const pendingRecords = new Map<string, Versioned<ReplicaRecord>>();
    for (const { key, workload, replica } of window) {
      const spec = specOfRevision(state, workload, replica.value.revision);
      pending.push({
        id: replica.value.id,
        workloadKey: key,
        driver: driverOfSpec(spec),
        resources: replica.value.resources,
        placement: placementOf(spec),
        availability: availabilityOf(workload),
      });
      pendingRecords.set(replica.value.id, replica);
    }
    const snapshot: ClusterSnapshot = {
      revision: state.revision,
      nodes: toSchedNodes(state, this.options.clock.nowMs()),
      replicas: existing,
    };
    const plan = await withSpan(
      "controller.schedule",
      {
        "cloudless.scheduler.pending": pending.length,
        "cloudless.scheduler.nodes": snapshot.nodes.length,
      },
      async (span) => {
        const { plan, busyMs } = await scheduleInSlices(
          {
            snapshot,
            pending,
            weights: this.options.weights,
            nowMs: this.options.clock.nowMs(),
            rng: this.options.rng,
          },
          this.options.clock,
        );
        this.options.metrics?.schedulerDecision.observe(busyMs / 1000);
        span.setAttributes({
          "cloudless.scheduler.placements": plan.placements.length,
          "cloudless.scheduler.unschedulable": plan.unschedulable.length,
        });
        return plan;
      },
    );
    const result = await withSpan(
      "controller.commit_plan",
      { "cloudless.scheduler.placements": plan.placements.length },
      () => this.applier.apply(plan, state, pendingRecords),
    );
    await this.noteRejections(result, pendingRecords);
    this.placementsTotal += result.placed.length;
    if (result.placed.length > 0) this.options.metrics?.placements.inc(result.placed.length);
    const wrote = result.revision;
    if (window.length < waiting.length) {
      // More wait than one pass decides: the next pass takes the next window, at once
      // while windows place something or until every window was tried since one did;
      // after that, replicas that fit nowhere wait for a change or the resync.
      this.windowsWithoutPlacement = wrote > 0 ? 0 : this.windowsWithoutPlacement + 1;
      if (this.windowsWithoutPlacement < Math.ceil(waiting.length / window.length)) {
        this.dirty = true;
      }
    }
    return wrote;
  }

  /**
   * Counts what the plan applier refused, by reason, and asks for another pass at once to
   * retry it against the newer state — at most maxPlanAttempts plans in a row that placed
   * nothing (as Nomad bounds an evaluation's attempts): after that the replicas wait for
   * the next change or resync, and one PlacementRetriesExhausted event per workload says
   * why, instead of a pass every few milliseconds against an applier that refuses them all.
   */
  private async noteRejections(
    result: PlanResult,
    pending: ReadonlyMap<string, Versioned<ReplicaRecord>>,
  ): Promise<void> {
    for (const rejection of result.rejected) {
      this.options.metrics?.placementFailures.inc({ reason: rejection.reason });
    }
    const verdict = afterPlan(result, this.rejectedPlansInARow);
    this.rejectedPlansInARow = verdict.refusedInARow;
    if (verdict.retryNow) this.dirty = true;
    if (!verdict.exhausted) return;
    const events = exhaustedEvents(result.rejected, pending);
    for (const event of events) {
      this.options.logger.warn({ workload: event.subject, event: event.type }, event.message);
    }
    // Recorded together, they share a commit (ADR 0025).
    await Promise.all(events.map((event) => this.options.events.record(event)));
  }

  /** The replicas this pass schedules: all, or replicasPerPass of them from the cursor on. */
  private pendingWindow<T>(waiting: T[]): T[] {
    const size = this.replicasPerPass;
    if (waiting.length <= size) {
      this.pendingCursor = 0;
      this.windowsWithoutPlacement = 0;
      return waiting;
    }
    const start = this.pendingCursor % waiting.length;
    this.pendingCursor = start + size;
    const window = waiting.slice(start, start + size);
    if (window.length < size) window.push(...waiting.slice(0, size - window.length));
    return window;
  }
}

/**
 * The reason label of a failed placement: the filter that rejected the most nodes (the
 * earlier filter on a tie), NoNodes when there was no node to try, InvalidRequest when
 * the request itself was refused. Filter names are a fixed set, so the label is bounded.
 */
export function failureReason(failure: Unschedulable): string {
  let reason = "";
  let most = 0;
  for (const [filter, nodes] of Object.entries(failure.rejections)) {
    if (nodes > most) {
      reason = filter;
      most = nodes;
    }
  }
  if (reason) return reason;
  return failure.message.startsWith("invalid request") ? "InvalidRequest" : "NoNodes";
}

/** Whether any replica waits for a node (what scheduleAndCommit would try to place). */
function hasPendingReplicas(state: ClusterState): boolean {
  for (const [key, replicas] of state.replicasByWorkload) {
    if (!state.workloads.has(key)) continue;
    for (const { value } of replicas) {
      if (value.node === "" && value.desired === "Running") return true;
    }
  }
  return false;
}

function specOfRevision(state: ClusterState, workload: WorkloadRecord, revision: number) {
  const record = state.revisions.get(`${workload.namespace}/${workload.name}/${revision}`);
  return asSpecView(record?.spec ?? workload.spec);
}

function newReplicaId(workloadName: string, rng: Rng): string {
  return `${workloadName}-${rng.bytes(4).toString("hex")}`;
}

export type { Versioned };

import { randomBytes } from "node:crypto";
import type { Clock } from "../../lib/clock.js";
import type { Rng } from "../../lib/rng.js";
import type { Logger } from "../../observe/logger.js";
import type { ControllerMetrics } from "../../observe/metrics.js";
import {
  activeContext,
  activeLinks,
  endSpan,
  extractContext,
  injectTraceparent,
  runUntraced,
  type Span,
  startSpan,
  withSpan,
} from "../../observe/tracing.js";
import type { EventLog } from "../events/eventLog.js";
import type { NodeRecord } from "../nodes/nodeRecord.js";
import { schedule } from "../scheduler/index.js";
import type {
  ClusterSnapshot,
  ExistingReplica,
  PendingReplica,
  Plan,
  SchedNode,
  ScoreWeights,
  Unschedulable,
} from "../scheduler/types.js";
import type { Op, Store, Watch } from "../store/store.js";
import type { AssignmentEntry, AssignmentHub } from "./assignmentHub.js";
import { type ClusterState, readClusterState, type Versioned } from "./clusterState.js";
import {
  type ReplicaRecord,
  replicaKey,
  replicaPrefix,
  type WorkloadRecord,
  workloadPrefix,
} from "./records.js";
import { ReplacementTimer } from "./replacementTimer.js";
import { asSpecView, driverOfSpec, placementOf } from "./specView.js";
import { type ReconcileAction, reconcileWorkload } from "./workloadReconciler.js";

/**
 * Replicas created within this long of an apply join the apply's trace; later ones (a
 * replacement after a node loss) start their own under the controller pass instead of
 * stretching an old trace over hours.
 */
const applyTraceWindowMs = 10 * 60_000;

/** One workload's reconcile actions, computed before anything is written. */
interface ReconcilePlan {
  key: string;
  workload: WorkloadRecord | undefined;
  spec: ReturnType<typeof asSpecView> | undefined;
  replicas: Versioned<ReplicaRecord>[];
  actions: ReconcileAction[];
}

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
}

/**
 * The coordinator's control loop: replica and rollout reconciliation, node-loss
 * rescheduling, scheduling of pending replicas (the coordinator is the only committer
 * of plans, re-checking each placement before it writes it) and the per-node desired
 * sets pushed to agents. Each pass reads the whole state at one revision.
 */
export class WorkloadController {
  private watches: Watch[] = [];
  private running = false;
  private dirty = false;
  /** Only the leader's controller runs; it is started on election and stopped on demotion. */
  private stopped = true;
  private cancelTimer: (() => void) | undefined;
  private passPromise: Promise<void> = Promise.resolve();
  private readonly pendingReasons = new Map<string, string>();
  /** Revisions seen in progress, per workload, so a completed rollout is announced once. */
  private readonly rollouts = new Map<string, { revision: number; inProgress: boolean }>();
  /** Replicas placed, by pass; read by tests and metrics. */
  placementsTotal = 0;
  private readonly replacements: ReplacementTimer;

  constructor(private readonly options: WorkloadControllerOptions) {
    const histogram = options.metrics?.nodeLossToReplacementRunning;
    this.replacements = new ReplacementTimer((seconds) => histogram?.observe(seconds));
  }

  /** Starts watching and reconciling; callable again after stop() (a new leadership term). */
  async start(): Promise<void> {
    if (!this.stopped) return;
    await this.passPromise;
    this.stopped = false;
    this.rollouts.clear();
    this.pendingReasons.clear();
    const trigger = () => this.trigger();
    for (const prefix of ["/nodes/", workloadPrefix, replicaPrefix]) {
      this.watches.push(this.options.store.watch(prefix, {}, { onEvents: trigger }));
    }
    this.trigger();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelTimer?.();
    for (const watch of this.watches) watch.cancel();
    this.watches = [];
    await this.passPromise;
  }

  /** Asks for a pass soon; passes never overlap. */
  trigger(): void {
    if (this.stopped) return;
    this.dirty = true;
    if (this.running) return;
    this.cancelTimer?.();
    this.cancelTimer = this.options.clock.setTimeout(
      () => this.runPass(),
      this.options.debounceMs ?? 10,
    );
  }

  /** Waits for the current pass (tests). */
  async settled(): Promise<void> {
    await this.passPromise;
  }

  private runPass(): void {
    if (this.running || this.stopped) return;
    this.running = true;
    this.dirty = false;
    // A pass belongs to no request: whichever one triggered it, its spans start a trace.
    this.passPromise = runUntraced(() => this.pass())
      .catch((error: unknown) =>
        this.options.logger.error({ err: error }, "controller pass failed"),
      )
      .finally(() => {
        this.running = false;
        if (this.stopped) return;
        const delayMs = this.dirty
          ? (this.options.debounceMs ?? 10)
          : (this.options.resyncIntervalMs ?? 2000);
        this.cancelTimer = this.options.clock.setTimeout(() => {
          this.dirty = true;
          this.runPass();
        }, delayMs);
      });
  }

  private async pass(): Promise<void> {
    const startTime = Date.now();
    let state = await readClusterState(this.options.store);
    const plans = this.planReconcile(state);
    if (plans.length === 0 && !hasPendingReplicas(state)) {
      // Nothing to change: the resync pass only republishes, and leaves no trace.
      this.options.metrics?.schedulerPending.set(0);
      this.publish(state);
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
          if (wrote) state = await readClusterState(this.options.store);
        }
        const placed = await this.scheduleAndCommit(state);
        if (placed) state = await readClusterState(this.options.store);
        this.publish(state);
      },
      { root: true, startTime },
    );
  }

  private publish(state: ClusterState): void {
    this.publishAssignments(state);
    this.replacements.update(
      new Map([...state.replicasByWorkload].map(([key, list]) => [key, list.map((r) => r.value)])),
      this.options.clock.nowMs(),
    );
  }

  /** What the replica and rollout controllers would do, per workload with something to do. */
  private planReconcile(state: ClusterState): ReconcilePlan[] {
    const nodeStatus = (name: string) => state.nodes.get(name)?.status;
    const keys = new Set([...state.workloads.keys(), ...state.replicasByWorkload.keys()]);
    const plans: ReconcilePlan[] = [];
    for (const key of keys) {
      const workload = state.workloads.get(key)?.value;
      const replicas = state.replicasByWorkload.get(key) ?? [];
      const spec = workload ? asSpecView(workload.spec) : undefined;
      const { actions, status } = reconcileWorkload({
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
        newReplicaId: () => newReplicaId(workload?.name ?? "replica"),
      });
      if (actions.length > 0) plans.push({ key, workload, spec, replicas, actions });
      if (workload) this.noteRolloutProgress(key, workload.revision, status);
      else this.rollouts.delete(key);
    }
    return plans;
  }

  /**
   * Records a RolloutCompleted event when a revision this coordinator saw in progress
   * has every replica updated and ready. A workload already complete when first seen
   * (e.g. after a coordinator restart) is not announced again.
   */
  private noteRolloutProgress(
    key: string,
    revision: number,
    status: {
      phase: string;
      updatedReplicas: number;
      desiredReplicas: number;
      replicas: number;
      readyReplicas: number;
    },
  ): void {
    const complete =
      status.phase === "Running" &&
      status.updatedReplicas === status.desiredReplicas &&
      status.replicas === status.desiredReplicas;
    const seen = this.rollouts.get(key);
    if (!seen || seen.revision !== revision) {
      this.rollouts.set(key, { revision, inProgress: !complete });
      return;
    }
    if (!complete) {
      seen.inProgress = true;
      return;
    }
    if (!seen.inProgress) return;
    seen.inProgress = false;
    void this.options.events
      .record({
        type: "RolloutCompleted",
        category: "scheduling",
        subject: `workload/${key}`,
        reason: "Complete",
        message: `revision ${revision}: ${status.readyReplicas}/${status.desiredReplicas} replicas updated and ready`,
      })
      .catch(() => undefined);
  }

  /** Writes the planned actions, one transaction per workload; returns whether any did. */
  private async reconcile(state: ClusterState, plans: ReconcilePlan[]): Promise<boolean> {
    let wrote = false;
    for (const { key, workload, spec, replicas, actions } of plans) {
      const byId = new Map(replicas.map((r) => [r.value.id, r]));
      const compare: { key: string; target: "modRevision"; op: "=="; modRevision: number }[] = [];
      const ops: Op[] = [];
      const now = this.options.clock.nowMs();
      let forgottenOnLostNodes = 0;
      const lostAtMs: number[] = [];
      for (const action of actions) {
        if (action.type === "create" && workload && spec) {
          const record: ReplicaRecord = {
            id: action.id,
            namespace: workload.namespace,
            workload: workload.name,
            revision: action.revision,
            node: "",
            desired: "Running",
            resources: spec.spec.resources,
            createdAtMs: now,
          };
          // Its placement and start join the trace of the apply that asked for it.
          if (
            workload.traceparent &&
            action.revision === workload.revision &&
            now - workload.updatedAtMs <= applyTraceWindowMs
          ) {
            record.traceparent = workload.traceparent;
          }
          ops.push({
            type: "put",
            key: replicaKey(workload.namespace, workload.name, action.id),
            value: JSON.stringify(record),
          });
          continue;
        }
        const existing = byId.get(action.id);
        if (!existing) continue;
        const key = replicaKey(
          existing.value.namespace,
          existing.value.workload,
          existing.value.id,
        );
        compare.push({ key, target: "modRevision", op: "==", modRevision: existing.modRevision });
        if (action.type === "forget") {
          if (existing.value.node !== "" && existing.value.desired === "Running") {
            forgottenOnLostNodes++;
            const node = state.nodes.get(existing.value.node);
            if (node?.status === "Lost") lostAtMs.push(node.lastTransitionAtMs);
          }
          ops.push({ type: "delete", key });
        } else {
          const stopped: ReplicaRecord = {
            ...existing.value,
            desired: "Stopped",
            stopRequestedAtMs: now,
          };
          ops.push({ type: "put", key, value: JSON.stringify(stopped) });
        }
      }
      if (ops.length === 0) continue;
      const result = await this.options.store.txn({ compare, success: ops });
      if (!result.succeeded) {
        this.dirty = true;
        continue;
      }
      wrote = true;
      for (const atMs of lostAtMs) this.replacements.noteForgotten(key, atMs, now);
      if (forgottenOnLostNodes > 0) {
        await this.options.events.record({
          type: "ReplicasRescheduled",
          category: "scheduling",
          subject: `workload/${key}`,
          reason: "NodeLost",
          message: `${forgottenOnLostNodes} replica${forgottenOnLostNodes === 1 ? "" : "s"} on lost or departed nodes replaced`,
        });
      }
    }
    return wrote;
  }

  /** Schedules pending replicas and commits the plan; returns whether anything was placed. */
  private async scheduleAndCommit(state: ClusterState): Promise<boolean> {
    const pending: PendingReplica[] = [];
    const pendingRecords = new Map<string, Versioned<ReplicaRecord>>();
    const existing: ExistingReplica[] = [];
    for (const [key, replicas] of state.replicasByWorkload) {
      const workload = state.workloads.get(key)?.value;
      for (const replica of replicas) {
        if (replica.value.node !== "") {
          existing.push({ id: replica.value.id, workloadKey: key, node: replica.value.node });
          continue;
        }
        if (replica.value.desired !== "Running" || !workload) continue;
        const spec = specOfRevision(state, workload, replica.value.revision);
        pending.push({
          id: replica.value.id,
          workloadKey: key,
          driver: driverOfSpec(spec),
          resources: replica.value.resources,
          placement: placementOf(spec),
        });
        pendingRecords.set(replica.value.id, replica);
      }
    }
    this.options.metrics?.schedulerPending.set(pending.length);
    if (pending.length === 0) return false;
    const snapshot: ClusterSnapshot = {
      revision: state.revision,
      nodes: toSchedNodes(state, this.options.clock.nowMs()),
      replicas: existing,
    };
    const endDecision = this.options.metrics?.schedulerDecision.startTimer();
    const plan = withSpan(
      "controller.schedule",
      {
        "cloudless.scheduler.pending": pending.length,
        "cloudless.scheduler.nodes": snapshot.nodes.length,
      },
      (span) => {
        const plan = schedule({
          snapshot,
          pending,
          weights: this.options.weights,
          nowMs: this.options.clock.nowMs(),
          rng: this.options.rng,
        });
        span.setAttributes({
          "cloudless.scheduler.placements": plan.placements.length,
          "cloudless.scheduler.unschedulable": plan.unschedulable.length,
        });
        return plan;
      },
    );
    endDecision?.();
    return withSpan(
      "controller.commit_plan",
      { "cloudless.scheduler.placements": plan.placements.length },
      () => this.commitPlan(state, plan, pendingRecords),
    );
  }

  /**
   * Re-checks each placement against the nodes as they are now and writes the plan in
   * one transaction; returns whether anything was placed.
   */
  private async commitPlan(
    state: ClusterState,
    plan: Plan,
    pendingRecords: Map<string, Versioned<ReplicaRecord>>,
  ): Promise<boolean> {
    const now = this.options.clock.nowMs();
    const compare: { key: string; target: "modRevision"; op: "=="; modRevision: number }[] = [];
    const ops: Op[] = [];
    const placedByWorkload = new Map<string, string[]>();
    const placementSpans: Span[] = [];
    // Re-check against the nodes as they are now: the plan applier is the only
    // committer, and a node that changed since the snapshot gets no placement.
    const latest = await readNodes(this.options.store);
    const headroom = new Map(
      toSchedNodes({ ...state, nodes: latest }, now).map((n) => [n.name, n]),
    );
    for (const placement of plan.placements) {
      const record = pendingRecords.get(placement.replicaId);
      const node = headroom.get(placement.node);
      if (!record || !node || !fits(node, record.value.resources)) {
        this.options.metrics?.placementFailures.inc({ reason: "NodeChanged" });
        continue;
      }
      node.allocated = add(node.allocated, record.value.resources);
      const key = replicaKey(record.value.namespace, record.value.workload, record.value.id);
      compare.push({ key, target: "modRevision", op: "==", modRevision: record.modRevision });
      const placementSpan = startPlacementSpan(record.value, placement.node);
      placementSpans.push(placementSpan);
      const placed: ReplicaRecord = {
        ...record.value,
        node: placement.node,
        scheduledAtMs: now,
        pendingReason: undefined,
        // The agent's start of the replica continues the trace from this placement.
        traceparent: injectTraceparent(placementSpan) ?? record.value.traceparent,
      };
      ops.push({ type: "put", key, value: JSON.stringify(placed) });
      const list = placedByWorkload.get(`${record.value.namespace}/${record.value.workload}`) ?? [];
      list.push(placement.node);
      placedByWorkload.set(`${record.value.namespace}/${record.value.workload}`, list);
    }
    for (const failure of plan.unschedulable) {
      this.options.metrics?.placementFailures.inc({ reason: failureReason(failure) });
      const record = pendingRecords.get(failure.replicaId);
      if (!record || record.value.pendingReason === failure.message) continue;
      const key = replicaKey(record.value.namespace, record.value.workload, record.value.id);
      compare.push({ key, target: "modRevision", op: "==", modRevision: record.modRevision });
      ops.push({
        type: "put",
        key,
        value: JSON.stringify({ ...record.value, pendingReason: failure.message }),
      });
      if (this.pendingReasons.get(failure.workloadKey) !== failure.message) {
        this.pendingReasons.set(failure.workloadKey, failure.message);
        await this.options.events.record({
          type: "ReplicaUnschedulable",
          category: "scheduling",
          subject: `workload/${failure.workloadKey}`,
          reason: "Unschedulable",
          message: failure.message,
        });
      }
    }
    if (ops.length === 0) return false;
    const result = await this.options.store.txn({ compare, success: ops }).catch((error) => {
      for (const span of placementSpans) endSpan(span, error);
      throw error;
    });
    for (const span of placementSpans) {
      span.setAttribute("cloudless.placement.committed", result.succeeded);
      endSpan(span);
    }
    if (!result.succeeded) {
      const attempted = [...placedByWorkload.values()].reduce((sum, list) => sum + list.length, 0);
      if (attempted > 0)
        this.options.metrics?.placementFailures.inc({ reason: "Conflict" }, attempted);
      this.dirty = true;
      return false;
    }
    let placedCount = 0;
    for (const [workload, nodes] of placedByWorkload) {
      placedCount += nodes.length;
      this.pendingReasons.delete(workload);
      await this.options.events.record({
        type: "ReplicasPlaced",
        category: "scheduling",
        subject: `workload/${workload}`,
        reason: "Scheduled",
        message: `placed ${nodes.length} replica${nodes.length === 1 ? "" : "s"} on ${[...new Set(nodes)].join(", ")}`,
      });
    }
    this.placementsTotal += placedCount;
    if (placedCount > 0) this.options.metrics?.placements.inc(placedCount);
    return placedCount > 0;
  }

  private publishAssignments(state: ClusterState): void {
    const byNode = new Map<string, AssignmentEntry[]>();
    for (const name of state.nodes.keys()) byNode.set(name, []);
    for (const node of this.options.assignments.knownNodes()) {
      if (!byNode.has(node)) byNode.set(node, []);
    }
    for (const [key, replicas] of state.replicasByWorkload) {
      const workload = state.workloads.get(key)?.value;
      if (!workload) continue;
      for (const { value: replica } of replicas) {
        if (replica.node === "" || replica.desired !== "Running") continue;
        const spec = specOfRevision(state, workload, replica.revision);
        byNode.get(replica.node)?.push({
          replicaId: replica.id,
          namespace: replica.namespace,
          workload: replica.workload,
          revision: replica.revision,
          specJson: JSON.stringify(spec),
          ...(replica.traceparent ? { traceparent: replica.traceparent } : {}),
        });
      }
    }
    for (const [node, entries] of byNode) this.options.assignments.publish(node, entries);
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

/**
 * The span of one replica's placement: a child of the apply that created the replica
 * when it carries that apply's trace context (linked to the controller pass), else a
 * child of the pass's commit.
 */
function startPlacementSpan(replica: ReplicaRecord, node: string): Span {
  const fromApply = replica.traceparent !== undefined;
  return startSpan(
    "replica.place",
    {
      "cloudless.replica.id": replica.id,
      "cloudless.workload": `${replica.namespace}/${replica.workload}`,
      "cloudless.workload.revision": replica.revision,
      "cloudless.node": node,
    },
    {
      parent: extractContext(replica.traceparent, activeContext()),
      ...(fromApply ? { links: activeLinks() } : {}),
    },
  );
}

function specOfRevision(state: ClusterState, workload: WorkloadRecord, revision: number) {
  const record = state.revisions.get(`${workload.namespace}/${workload.name}/${revision}`);
  return asSpecView(record?.spec ?? workload.spec);
}

async function readNodes(store: Store): Promise<Map<string, NodeRecord>> {
  const result = await store.range("/nodes/");
  return new Map(
    result.kvs.map((kv) => {
      const node = JSON.parse(kv.value) as NodeRecord;
      return [node.name, node];
    }),
  );
}

const oneHourMs = 3_600_000;

export function toSchedNodes(
  state: Pick<ClusterState, "nodes" | "replicasByWorkload">,
  nowMs: number,
): SchedNode[] {
  const allocated = new Map<string, SchedNode["allocated"]>();
  for (const replicas of state.replicasByWorkload.values()) {
    for (const { value: replica } of replicas) {
      if (replica.node === "") continue;
      allocated.set(replica.node, add(allocated.get(replica.node) ?? zero(), replica.resources));
    }
  }
  return [...state.nodes.values()].map((node) => ({
    name: node.name,
    status: node.status,
    cordoned: node.cordoned || node.draining,
    region: node.region,
    zone: node.zone,
    labels: node.labels,
    taints: node.taints ?? [],
    drivers: node.info.drivers,
    capacity: {
      cpuMillicores: node.capacity.cpuMillicores,
      memoryMiB: node.capacity.memoryMiB,
      storageGiB: node.capacity.storageGiB,
      bandwidthMbps: node.capacity.egressMbps,
    },
    allocated: allocated.get(node.name) ?? zero(),
    egressMbps: node.capacity.egressMbps,
    // A node that changed state recently is less trusted than one steady for an hour.
    reliability: Math.min(1, Math.max(0.1, (nowMs - node.lastTransitionAtMs) / oneHourMs)),
    ...(node.labels["cloudless.io/cost-per-hour"]
      ? { costPerHour: Number(node.labels["cloudless.io/cost-per-hour"]) }
      : {}),
  }));
}

function zero(): SchedNode["allocated"] {
  return { cpuMillicores: 0, memoryMiB: 0, storageGiB: 0, bandwidthMbps: 0 };
}

function add(a: SchedNode["allocated"], b: SchedNode["allocated"]): SchedNode["allocated"] {
  return {
    cpuMillicores: a.cpuMillicores + b.cpuMillicores,
    memoryMiB: a.memoryMiB + b.memoryMiB,
    storageGiB: a.storageGiB + b.storageGiB,
    bandwidthMbps: a.bandwidthMbps + b.bandwidthMbps,
  };
}

function fits(node: SchedNode, request: SchedNode["allocated"]): boolean {
  if (node.status !== "Ready" || node.cordoned) return false;
  const after = add(node.allocated, request);
  return (
    after.cpuMillicores <= node.capacity.cpuMillicores &&
    after.memoryMiB <= node.capacity.memoryMiB &&
    after.storageGiB <= node.capacity.storageGiB &&
    (request.bandwidthMbps === 0 || after.bandwidthMbps <= node.capacity.bandwidthMbps)
  );
}

function newReplicaId(workloadName: string): string {
  return `${workloadName}-${randomBytes(4).toString("hex")}`;
}

export type { Versioned };

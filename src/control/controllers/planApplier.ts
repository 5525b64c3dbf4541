/**
 * The coordinator's plan applier: the only committer of scheduling plans. It re-checks
 * each placement against the nodes as the cache holds them now (scheduler/planCheck.ts),
 * writes what passes — each replica guarded by the mod revision the plan was made from —
 * with the pending reasons of replicas that fit nowhere, and records the events of what it
 * committed. What it refuses, and why, it returns to the controller, which retries.
 */
import type { Clock } from "../../lib/clock.js";
import {
  activeContext,
  activeLinks,
  endSpan,
  extractContext,
  injectTraceparent,
  type Span,
  startSpan,
} from "../../observe/tracing.js";
import type { EventLog } from "../events/eventLog.js";
import type { NodeRecord } from "../nodes/nodeRecord.js";
import {
  type PlanResult,
  type PlanSubmitter,
  type RejectedPlacement,
  recheckPlan,
} from "../scheduler/planCheck.js";
import type { Plan, PlannedPlacement, Unschedulable } from "../scheduler/types.js";
import type { Store } from "../store/store.js";
import { type ChunkOutcome, commitPacked, type TxnItem, txnOpsFor } from "../store/txnBatches.js";
import type { ClusterCache } from "./clusterCache.js";
import type { ClusterState, Versioned } from "./clusterState.js";
import { type ReplicaRecord, replicaKey } from "./records.js";
import { toSchedNodes } from "./schedulerInput.js";

/** What the applier is given with a plan: the state it was made from and its replicas. */
export type PlanContext = [
  state: ClusterState,
  pending: ReadonlyMap<string, Versioned<ReplicaRecord>>,
];

/** The coordinator's applier, or a test's wrapper of it (the scheduler harness's planners). */
export type PlanApplier = PlanSubmitter<PlanContext>;

export interface StorePlanApplierOptions {
  store: Store;
  cache: ClusterCache;
  clock: Clock;
  events: EventLog;
}

/** What a plan write stands for: a placement (with node and span) or a pending reason. */
interface PlanTag {
  workload: string;
  placement?: PlannedPlacement;
  span?: Span;
}

export class StorePlanApplier implements PlanApplier {
  /** The last unschedulable message recorded per workload, so it is recorded once. */
  private readonly pendingReasons = new Map<string, string>();

  constructor(private readonly options: StorePlanApplierOptions) {}

  /** A new leadership term records every reason again. */
  reset(): void {
    this.pendingReasons.clear();
  }

  /**
   * Re-checks each placement against the nodes as they are now and writes the plan in
   * transactions of at most txnOpsFor(store) writes, each guarded by the mod revision the
   * plan was made from: a chunk that fails leaves its replicas pending (rejected as a
   * Conflict), and no chunk can overcommit a node (each was checked against the whole
   * plan's allocations). `revision` is the highest revision written when anything was
   * placed, else 0.
   */
  async apply(
    plan: Plan,
    state: ClusterState,
    pending: ReadonlyMap<string, Versioned<ReplicaRecord>>,
  ): Promise<PlanResult> {
    const now = this.options.clock.nowMs();
    // The nodes as the cache holds them now (it may have moved on since the snapshot):
    // a node that changed since gets no placement it has no room for.
    const latest = new Map<string, NodeRecord>();
    for (const name of state.nodes.keys()) {
      const node = this.options.cache.node(name);
      if (node) latest.set(name, node);
    }
    const checked = recheckPlan(
      toSchedNodes({ ...state, nodes: latest }, now),
      plan,
      (replicaId) => pending.get(replicaId)?.value.resources,
    );
    const rejected: RejectedPlacement[] = [...checked.rejected];
    const placements: TxnItem<PlanTag>[] = [];
    for (const placement of checked.accepted) {
      const record = pending.get(placement.replicaId) as Versioned<ReplicaRecord>;
      const key = replicaKey(record.value.namespace, record.value.workload, record.value.id);
      const span = startPlacementSpan(record.value, placement.node);
      const placed: ReplicaRecord = {
        ...record.value,
        node: placement.node,
        scheduledAtMs: now,
        pendingReason: undefined,
        // The agent's start of the replica continues the trace from this placement.
        traceparent: injectTraceparent(span) ?? record.value.traceparent,
      };
      placements.push({
        op: { type: "put", key, value: JSON.stringify(placed) },
        compare: { key, target: "modRevision", op: "==", modRevision: record.modRevision },
        tag: { workload: `${record.value.namespace}/${record.value.workload}`, placement, span },
      });
    }
    const reasons = await this.pendingReasonWrites(plan.unschedulable, pending);
    if (placements.length + reasons.length === 0) return { placed: [], rejected, revision: 0 };
    let outcomes: ChunkOutcome<PlanTag>[];
    try {
      // One item per group: replicas of a workload may land in different chunks.
      outcomes = await commitPacked(
        this.options.store,
        [...placements, ...reasons].map((item) => [item]),
        txnOpsFor(this.options.store),
      );
    } catch (error) {
      for (const { tag } of placements) if (tag.span) endSpan(tag.span, error);
      throw error;
    }
    let wrote = 0;
    const placed: PlannedPlacement[] = [];
    const placedByWorkload = new Map<string, PlannedPlacement[]>();
    const committed = new Set<TxnItem<PlanTag>>();
    for (const outcome of outcomes) {
      if (!outcome.succeeded) {
        for (const { tag } of outcome.items) {
          if (tag.placement === undefined) continue;
          rejected.push({
            replicaId: tag.placement.replicaId,
            node: tag.placement.node,
            reason: "Conflict",
            detail: "the replica changed in the store since the plan was made",
          });
        }
        continue;
      }
      wrote = Math.max(wrote, outcome.revision);
      for (const item of outcome.items) {
        committed.add(item);
        if (item.tag.placement === undefined) continue;
        placed.push(item.tag.placement);
        const list = placedByWorkload.get(item.tag.workload) ?? [];
        list.push(item.tag.placement);
        placedByWorkload.set(item.tag.workload, list);
      }
    }
    for (const item of placements) {
      item.tag.span?.setAttribute("cloudless.placement.committed", committed.has(item));
      if (item.tag.span) endSpan(item.tag.span);
    }
    await this.recordPlaced(placedByWorkload);
    return { placed, rejected, revision: placed.length > 0 ? wrote : 0 };
  }

  /**
   * The pending-reason writes of replicas the scheduler could place nowhere (a changed
   * reason only), recording one ReplicaUnschedulable event per workload and message.
   */
  private async pendingReasonWrites(
    unschedulable: readonly Unschedulable[],
    pending: ReadonlyMap<string, Versioned<ReplicaRecord>>,
  ): Promise<TxnItem<PlanTag>[]> {
    const reasons: TxnItem<PlanTag>[] = [];
    const events: Promise<void>[] = [];
    for (const failure of unschedulable) {
      const record = pending.get(failure.replicaId);
      if (!record || record.value.pendingReason === failure.message) continue;
      const key = replicaKey(record.value.namespace, record.value.workload, record.value.id);
      reasons.push({
        op: {
          type: "put",
          key,
          value: JSON.stringify({ ...record.value, pendingReason: failure.message }),
        },
        compare: { key, target: "modRevision", op: "==", modRevision: record.modRevision },
        tag: { workload: failure.workloadKey },
      });
      if (this.pendingReasons.get(failure.workloadKey) !== failure.message) {
        this.pendingReasons.set(failure.workloadKey, failure.message);
        events.push(
          this.options.events.record({
            type: "ReplicaUnschedulable",
            category: "scheduling",
            subject: `workload/${failure.workloadKey}`,
            reason: "Unschedulable",
            message: failure.message,
          }),
        );
      }
    }
    await Promise.all(events);
    return reasons;
  }

  /** The ReplicasPlaced (and over-budget) events of what was committed. */
  private async recordPlaced(
    placedByWorkload: ReadonlyMap<string, PlannedPlacement[]>,
  ): Promise<void> {
    const events: Promise<void>[] = [];
    for (const [workload, placements] of placedByWorkload) {
      this.pendingReasons.delete(workload);
      const nodes = placements.map((p) => p.node);
      // Recorded together, they share a commit (one per event took seconds; ADR 0025).
      events.push(
        this.options.events.record({
          type: "ReplicasPlaced",
          category: "scheduling",
          subject: `workload/${workload}`,
          reason: "Scheduled",
          message: `placed ${nodes.length} replica${nodes.length === 1 ? "" : "s"} on ${[...new Set(nodes)].join(", ")}`,
        }),
      );
    }
    for (const [workload, placements] of placedByWorkload) {
      const messages = placements.flatMap((p) =>
        p.overBudget === undefined ? [] : [p.overBudget],
      );
      if (messages.length === 0) continue;
      // REQ-030: say it where the operator looks (describe's events), with what it takes.
      events.push(
        this.options.events.record({
          type: "NodeLossBudgetExceeded",
          category: "scheduling",
          subject: `workload/${workload}`,
          reason: "TooFewNodes",
          message:
            messages.length === 1
              ? (messages[0] as string)
              : `${messages.length} replicas placed over the node-loss budget; the last: ${messages.at(-1)}`,
        }),
      );
    }
    await Promise.all(events);
  }
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

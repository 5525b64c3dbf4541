/**
 * The workload controller's reconcile writes, decided before anything is written: the
 * replica records each reconcile action (and each rebalancer decision) stands for, grouped
 * per workload, every write of an existing replica guarded by the mod revision it was read
 * at. Pure: the controller commits the groups and accounts for what committed.
 */
import type { NewEvent } from "../events/eventLog.js";
import type { Compare } from "../store/store.js";
import type { TxnItem } from "../store/txnBatches.js";
import type { ClusterState, Versioned } from "./clusterState.js";
import type { RebalanceDecision } from "./rebalancer.js";
import { type ReplicaRecord, replicaKey, type WorkloadRecord } from "./records.js";
import type { AppliedSpecView } from "./specView.js";
import type { ReconcileAction } from "./workloadReconciler.js";

/**
 * Replicas created within this long of an apply join the apply's trace; later ones (a
 * replacement after a node loss) start their own under the controller pass instead of
 * stretching an old trace over hours.
 */
const applyTraceWindowMs = 10 * 60_000;

/** One workload's reconcile actions, computed before anything is written. */
export interface ReconcilePlan {
  key: string;
  workload: WorkloadRecord | undefined;
  spec: AppliedSpecView | undefined;
  replicas: Versioned<ReplicaRecord>[];
  actions: ReconcileAction[];
  /** The rebalancer's decision the actions carry out, for its event once committed. */
  rebalance?: RebalanceDecision;
}

/** What a reconcile write stands for, to account for it once committed. */
export interface ReconcileTag {
  workload: string;
  forgottenOnLostNode?: boolean;
  lostAtMs?: number;
  /** The rebalancer decision the group carries out, on its first item. */
  rebalance?: RebalanceDecision;
}

/**
 * The writes of the planned actions: one group per workload (committed whole when it
 * fits one transaction), every write of an existing replica guarded by its own compare.
 * An action whose replica is gone (or a finish of a replica not moving) writes nothing.
 */
export function reconcileWrites(
  state: Pick<ClusterState, "nodes">,
  plans: readonly ReconcilePlan[],
  now: number,
): TxnItem<ReconcileTag>[][] {
  const groups: TxnItem<ReconcileTag>[][] = [];
  for (const { key, workload, spec, replicas, actions, rebalance } of plans) {
    const byId = new Map(replicas.map((r) => [r.value.id, r]));
    const group: TxnItem<ReconcileTag>[] = [];
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
          ...(action.move ? { move: action.move } : {}),
        };
        // Its placement and start join the trace of the apply that asked for it.
        if (
          workload.traceparent &&
          action.revision === workload.revision &&
          now - workload.updatedAtMs <= applyTraceWindowMs
        ) {
          record.traceparent = workload.traceparent;
        }
        group.push({
          op: {
            type: "put",
            key: replicaKey(workload.namespace, workload.name, action.id),
            value: JSON.stringify(record),
          },
          tag: { workload: key },
        });
        continue;
      }
      const existing = byId.get(action.id);
      if (!existing) continue;
      const replica = replicaKey(
        existing.value.namespace,
        existing.value.workload,
        existing.value.id,
      );
      const compare: Compare = {
        key: replica,
        target: "modRevision",
        op: "==",
        modRevision: existing.modRevision,
      };
      if (action.type === "finishMove") {
        if (!existing.value.move) continue;
        const finished: ReplicaRecord = {
          ...existing.value,
          move: { ...existing.value.move, finishedAtMs: now },
        };
        group.push({
          op: { type: "put", key: replica, value: JSON.stringify(finished) },
          compare,
          tag: { workload: key },
        });
      } else if (action.type === "forget") {
        const tag: ReconcileTag = { workload: key };
        if (existing.value.node !== "" && existing.value.desired === "Running") {
          tag.forgottenOnLostNode = true;
          const node = state.nodes.get(existing.value.node);
          if (node?.status === "Lost") tag.lostAtMs = node.lastTransitionAtMs;
        }
        group.push({ op: { type: "delete", key: replica }, compare, tag });
      } else {
        const stopped: ReplicaRecord = {
          ...existing.value,
          desired: "Stopped",
          stopRequestedAtMs: now,
        };
        group.push({
          op: { type: "put", key: replica, value: JSON.stringify(stopped) },
          compare,
          tag: { workload: key },
        });
      }
    }
    if (group.length > 0) {
      // The group commits whole or not at all, so its first item speaks for the decision.
      if (rebalance) group[0]!.tag.rebalance = rebalance;
      groups.push(group);
    }
  }
  return groups;
}

/** The writes that carry out a rebalancer decision (ADR 0035). */
export function rebalanceActions(
  decision: RebalanceDecision,
  workload: WorkloadRecord,
  newId: () => string,
  nowMs: number,
): ReconcileAction[] {
  switch (decision.type) {
    case "start":
      return [
        {
          type: "create",
          id: newId(),
          revision: workload.revision,
          move: {
            replaces: decision.replaces,
            fromNode: decision.fromNode,
            startedAtMs: nowMs,
            reason: decision.reason,
          },
        },
      ];
    case "finish":
      return [
        ...(decision.retire === undefined
          ? []
          : [
              {
                type: "stop" as const,
                id: decision.retire,
                reason: `rebalanced: replaced by ${decision.surge} on ${decision.toNode}`,
              },
            ]),
        { type: "finishMove", id: decision.surge },
      ];
    case "abandon":
      return [
        { type: "stop", id: decision.surge, reason: `rebalance given up: ${decision.reason}` },
      ];
    default:
      return [];
  }
}

/** The event a committed rebalancer decision records. */
export function rebalanceEvent(key: string, decision: RebalanceDecision): NewEvent | undefined {
  const subject = `workload/${key}`;
  switch (decision.type) {
    case "start":
      return {
        type: "RebalanceStarted",
        category: "scheduling",
        subject,
        reason: "Rebalance",
        message: `starting a replacement for ${decision.replaces} on ${decision.fromNode} (expected on ${decision.toNode}): ${decision.reason}`,
      };
    case "finish":
      return {
        type: "ReplicaRebalanced",
        category: "scheduling",
        subject,
        reason: decision.retire === undefined ? "MoveEnded" : "Rebalanced",
        message:
          decision.retire === undefined
            ? `${decision.surge} on ${decision.toNode} kept as an ordinary replica: ${decision.reason}`
            : `moved a replica from ${decision.fromNode} to ${decision.toNode}: stopped ${decision.retire} once ${decision.surge} was ready (${decision.reason})`,
      };
    case "abandon":
      return {
        type: "RebalanceAbandoned",
        category: "scheduling",
        subject,
        reason: "Abandoned",
        message: `stopped ${decision.surge}: ${decision.reason}`,
      };
    default:
      return undefined;
  }
}

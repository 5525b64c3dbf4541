import type { NodeStatus } from "../membership/membershipTracker.js";
import { nodeLossRisk } from "../scheduler/budget.js";
import type { ReplicaMove, ReplicaRecord } from "./records.js";

/**
 * The replica and rollout controller's decision, as a pure function of the
 * workload, its replicas and the nodes' health (Nomad's reconciler shape: time and
 * identity come in as data). Level-triggered: it compares desired with actual and
 * returns the actions that move one towards the other; running it again on the
 * result returns nothing new.
 */
export interface WorkloadIntent {
  revision: number;
  replicas: number;
  minAvailable: number;
  maxSurge: number;
  maxUnavailable: number;
}

export type ReconcileAction =
  | { type: "create"; id: string; revision: number; move?: ReplicaMove }
  | { type: "stop"; id: string; reason: string }
  | { type: "forget"; id: string; reason: string }
  /** The rebalancer's move that started this replica is done (ADR 0035). */
  | { type: "finishMove"; id: string };

export interface WorkloadStatusView {
  desiredReplicas: number;
  replicas: number;
  readyReplicas: number;
  updatedReplicas: number;
  availableReplicas: number;
  minAvailable: number;
  revision: number;
  phase: "Pending" | "Progressing" | "Running" | "Degraded";
  message: string;
  /** Set when losing one node would take the workload below minAvailable (ADR 0034). */
  nodeLossRisk?: string;
}

export interface ReconcileInput {
  /** Absent when the workload was deleted: every replica is stopped. */
  workload: WorkloadIntent | undefined;
  replicas: ReplicaRecord[];
  nodeStatus: (node: string) => NodeStatus | undefined;
  newReplicaId: () => string;
  /** Creates this call may plan at most (default: all that are missing). */
  maxCreates?: number;
}

export interface ReconcileResult {
  actions: ReconcileAction[];
  status: WorkloadStatusView;
  /** Creates left out by `maxCreates`, for a later pass. */
  deferredCreates: number;
}

/** A replica counts as ready only if its node says so and the node is itself Ready. */
export function isReplicaReady(
  replica: ReplicaRecord,
  nodeStatus: (node: string) => NodeStatus | undefined,
): boolean {
  return (
    replica.desired === "Running" &&
    replica.node !== "" &&
    replica.status?.ready === true &&
    replica.status.phase === "Running" &&
    nodeStatus(replica.node) === "Ready"
  );
}

/**
 * A replica the rebalancer started whose move has not finished while the replica it
 * replaces is still live (ADR 0035): the pair counts as one replica of the revision.
 */
export function isSurge(
  replica: ReplicaRecord,
  liveIds: ReadonlySet<string>,
  revision: number,
): boolean {
  return (
    replica.move !== undefined &&
    replica.move.finishedAtMs === undefined &&
    replica.revision === revision &&
    liveIds.has(replica.move.replaces)
  );
}

function nodeIsGone(node: string, nodeStatus: (node: string) => NodeStatus | undefined): boolean {
  if (node === "") return false;
  const status = nodeStatus(node);
  return status === undefined || status === "Lost" || status === "Left";
}

/**
 * A replica the reconciler forgets (drops its record): its node is lost, departed or
 * deleted, or it was stopped before it was ever placed.
 */
function isForgotten(
  replica: ReplicaRecord,
  nodeStatus: (node: string) => NodeStatus | undefined,
): boolean {
  return (
    nodeIsGone(replica.node, nodeStatus) || (replica.desired === "Stopped" && replica.node === "")
  );
}

/**
 * What a workload's status is, read from its records alone: no plan is made, so reading
 * the status of a workload that asks for many replicas costs what its records cost (a
 * status read that planned every missing replica took a coordinator out; issue 12).
 * reconcileWorkload reports the same status.
 */
export function workloadStatus(
  workload: WorkloadIntent | undefined,
  replicas: readonly ReplicaRecord[],
  nodeStatus: (node: string) => NodeStatus | undefined,
): WorkloadStatusView {
  if (!workload) return emptyStatus();
  const desired = workload.replicas;
  const live = replicas.filter((r) => r.desired === "Running" && !isForgotten(r, nodeStatus));
  // A rebalancer's surge counts for readiness, not towards the desired count (ADR 0035).
  const liveIds = new Set(live.map((r) => r.id));
  let surgeMove: ReplicaMove | undefined;
  let readyCount = 0;
  let readyCurrent = 0;
  let old = 0;
  let pendingReason: string | undefined;
  const current: ReplicaRecord[] = [];
  for (const replica of live) {
    const ready = isReplicaReady(replica, nodeStatus);
    if (ready) readyCount++;
    if (replica.node === "" && pendingReason === undefined && replica.pendingReason) {
      pendingReason = replica.pendingReason;
    }
    if (isSurge(replica, liveIds, workload.revision)) {
      surgeMove ??= replica.move;
      continue;
    }
    if (replica.revision === workload.revision) {
      current.push(replica);
      if (ready) readyCurrent++;
    } else {
      old++;
    }
  }
  let phase: WorkloadStatusView["phase"];
  let message: string;
  if (desired > 0 && readyCount === 0) {
    phase = "Pending";
    message =
      pendingReason ?? `waiting for ${desired} replica${desired === 1 ? "" : "s"} to become ready`;
  } else if (old > 0 || current.length !== desired) {
    phase = "Progressing";
    message =
      old > 0
        ? `rolling out revision ${workload.revision}: ${readyCurrent}/${desired} updated replicas ready`
        : `${readyCount}/${desired} replicas ready, ${current.length} of ${desired} created`;
  } else if (readyCount < desired) {
    phase = "Degraded";
    message = `${readyCount}/${desired} replicas ready`;
  } else {
    phase = "Running";
    message = `${readyCount}/${desired} replicas ready`;
  }
  const risk = nodeLossRisk(
    { replicas: desired, minAvailable: workload.minAvailable },
    replicasPerNode(current),
  );
  if (phase === "Running" || phase === "Degraded") {
    if (surgeMove) message += `; moving a replica off ${surgeMove.fromNode}: ${surgeMove.reason}`;
    else if (risk) message += `; ${risk.message}`;
  }
  return {
    desiredReplicas: desired,
    replicas: live.length,
    readyReplicas: readyCount,
    updatedReplicas: current.length,
    availableReplicas: readyCount,
    minAvailable: workload.minAvailable,
    revision: workload.revision,
    phase,
    message,
    ...(risk ? { nodeLossRisk: risk.message } : {}),
  };
}

export function reconcileWorkload(input: ReconcileInput): ReconcileResult {
  const { workload, nodeStatus } = input;
  const actions: ReconcileAction[] = [];
  const forgotten = new Set<string>();
  const status = workloadStatus(workload, input.replicas, nodeStatus);

  // Replicas of lost, departed or deleted nodes are gone: forget them so replacements
  // are created in this very pass (REQ-031).
  for (const replica of input.replicas) {
    if (!isForgotten(replica, nodeStatus)) continue;
    actions.push({
      type: "forget",
      id: replica.id,
      reason:
        replica.node !== ""
          ? `node ${replica.node} is ${nodeStatus(replica.node) ?? "deleted"}`
          : "stopped before it was placed",
    });
    forgotten.add(replica.id);
  }
  const live = input.replicas.filter((r) => r.desired === "Running" && !forgotten.has(r.id));
  const ready = (r: ReplicaRecord) => isReplicaReady(r, nodeStatus);

  if (!workload) {
    for (const replica of live) {
      actions.push({ type: "stop", id: replica.id, reason: "workload deleted" });
    }
    return { actions, status, deferredCreates: 0 };
  }

  // A move's surge is extra by design: it counts for readiness, not towards the desired
  // count, so it is neither scaled away nor answered with another replica.
  const liveIds = new Set(live.map((r) => r.id));
  const surges = live.filter((r) => isSurge(r, liveIds, workload.revision));
  const counted = surges.length === 0 ? live : live.filter((r) => !surges.includes(r));
  const desired = workload.replicas;
  const current = counted.filter((r) => r.revision === workload.revision);
  const old = counted.filter((r) => r.revision !== workload.revision);
  const readyCount = live.filter(ready).length;
  // The floor of ready replicas during a rollout (REQ-023).
  const minReady = Math.min(
    desired,
    Math.max(workload.minAvailable, desired - workload.maxUnavailable),
  );
  const stop = (replica: ReplicaRecord, reason: string) => {
    actions.push({ type: "stop", id: replica.id, reason });
  };
  let liveCount = counted.length;
  let readyLeft = readyCount;

  // Old replicas that are not ready cost nothing to remove.
  const oldNotReady = old.filter((r) => !ready(r));
  const oldReady = old.filter(ready);
  for (const replica of oldNotReady) {
    stop(replica, `replaced by revision ${workload.revision}`);
    liveCount--;
  }
  // Ready old replicas go only while the floor holds; from the most stacked node first,
  // so a rollout keeps the spread the node-loss budget asks for (ADR 0034).
  const removable = Math.max(0, readyLeft - minReady);
  const stillLive = counted.filter((r) => !oldNotReady.includes(r));
  for (const replica of pickKeepingSpread(oldReady, stillLive, removable, byAge("oldest"))) {
    stop(replica, `replaced by revision ${workload.revision}`);
    readyLeft--;
    liveCount--;
  }
  const oldRemaining = oldReady.length - (readyCount - readyLeft);

  // Scale down current-revision replicas beyond the desired count: not-ready first, then
  // from the most stacked node, then the newest.
  if (oldRemaining === 0 && current.length > desired) {
    const excess = current.length - desired;
    const notReady = current.filter((r) => !ready(r));
    const notReadyFirst = [
      ...notReady,
      ...pickKeepingSpread(
        current.filter(ready),
        current.filter(ready),
        excess - notReady.length,
        byAge("newest"),
      ),
    ];
    for (const replica of notReadyFirst.slice(0, excess)) {
      stop(replica, `scaled down to ${desired}`);
      liveCount--;
    }
  }

  // Create current-revision replicas up to the desired count, within the surge budget,
  // and no more than the caller's budget for this pass: the rest is created next time.
  const missing = desired - Math.min(current.length, desired);
  const surgeRoom = desired + workload.maxSurge - liveCount;
  const toCreate = oldRemaining === 0 ? missing : Math.min(missing, Math.max(0, surgeRoom));
  const creating = Math.min(toCreate, Math.max(0, input.maxCreates ?? toCreate));
  for (let i = 0; i < creating; i++) {
    actions.push({ type: "create", id: input.newReplicaId(), revision: workload.revision });
  }
  return { actions, status, deferredCreates: toCreate - creating };
}

/** Placed replicas per node. */
export function replicasPerNode(replicas: readonly ReplicaRecord[]): Map<string, number> {
  const perNode = new Map<string, number>();
  for (const replica of replicas) {
    if (replica.node !== "") perNode.set(replica.node, (perNode.get(replica.node) ?? 0) + 1);
  }
  return perNode;
}

function byAge(first: "oldest" | "newest"): (a: ReplicaRecord, b: ReplicaRecord) => number {
  return first === "oldest"
    ? (a, b) => a.createdAtMs - b.createdAtMs || (a.id < b.id ? -1 : 1)
    : (a, b) => b.createdAtMs - a.createdAtMs || (a.id < b.id ? -1 : 1);
}

/**
 * Up to `count` of `candidates` to stop, each taken from the node that holds the most of
 * `holders` at that point (ties by `order`), so what remains stays spread over nodes.
 * Taking them one by one is the same as sorting by "held on the node minus those of the
 * node taken before": the j-th candidate of a node (in `order`) is taken when its node
 * holds held − j, and candidates that tie on that are each their node's next.
 */
function pickKeepingSpread(
  candidates: readonly ReplicaRecord[],
  holders: readonly ReplicaRecord[],
  count: number,
  order: (a: ReplicaRecord, b: ReplicaRecord) => number,
): ReplicaRecord[] {
  if (count <= 0) return [];
  const held = replicasPerNode(holders);
  const taken = new Map<string, number>();
  const keyed = [...candidates].sort(order).map((replica) => {
    const before = taken.get(replica.node) ?? 0;
    taken.set(replica.node, before + 1);
    return { replica, key: (held.get(replica.node) ?? 0) - before };
  });
  keyed.sort((a, b) => b.key - a.key || order(a.replica, b.replica));
  return keyed.slice(0, count).map((k) => k.replica);
}

function emptyStatus(): WorkloadStatusView {
  return {
    desiredReplicas: 0,
    replicas: 0,
    readyReplicas: 0,
    updatedReplicas: 0,
    availableReplicas: 0,
    minAvailable: 0,
    revision: 0,
    phase: "Running",
    message: "deleted",
  };
}

import type { NodeStatus } from "../membership/membershipTracker.js";
import type { ReplicaRecord } from "./records.js";

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
  | { type: "create"; id: string; revision: number }
  | { type: "stop"; id: string; reason: string }
  | { type: "forget"; id: string; reason: string };

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

function nodeIsGone(node: string, nodeStatus: (node: string) => NodeStatus | undefined): boolean {
  if (node === "") return false;
  const status = nodeStatus(node);
  return status === undefined || status === "Lost" || status === "Left";
}

export interface ReconcileResult {
  actions: ReconcileAction[];
  status: WorkloadStatusView;
  /** Creates left out by `maxCreates`, for a later pass. */
  deferredCreates: number;
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
  let live = 0;
  let readyCount = 0;
  let current = 0;
  let readyCurrent = 0;
  let old = 0;
  let pendingReason: string | undefined;
  for (const replica of replicas) {
    if (replica.desired !== "Running" || isForgotten(replica, nodeStatus)) continue;
    live++;
    const ready = isReplicaReady(replica, nodeStatus);
    if (ready) readyCount++;
    if (replica.revision === workload.revision) {
      current++;
      if (ready) readyCurrent++;
    } else {
      old++;
    }
    if (replica.node === "" && pendingReason === undefined && replica.pendingReason) {
      pendingReason = replica.pendingReason;
    }
  }
  let phase: WorkloadStatusView["phase"];
  let message: string;
  if (desired > 0 && readyCount === 0) {
    phase = "Pending";
    message =
      pendingReason ?? `waiting for ${desired} replica${desired === 1 ? "" : "s"} to become ready`;
  } else if (old > 0 || current !== desired) {
    phase = "Progressing";
    message =
      old > 0
        ? `rolling out revision ${workload.revision}: ${readyCurrent}/${desired} updated replicas ready`
        : `${readyCount}/${desired} replicas ready, ${current} of ${desired} created`;
  } else if (readyCount < desired) {
    phase = "Degraded";
    message = `${readyCount}/${desired} replicas ready`;
  } else {
    phase = "Running";
    message = `${readyCount}/${desired} replicas ready`;
  }
  return {
    desiredReplicas: desired,
    replicas: live,
    readyReplicas: readyCount,
    updatedReplicas: current,
    availableReplicas: readyCount,
    minAvailable: workload.minAvailable,
    revision: workload.revision,
    phase,
    message,
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

  const desired = workload.replicas;
  const current = live.filter((r) => r.revision === workload.revision);
  const old = live.filter((r) => r.revision !== workload.revision);
  const readyCount = live.filter(ready).length;
  // The floor of ready replicas during a rollout (REQ-023).
  const minReady = Math.min(
    desired,
    Math.max(workload.minAvailable, desired - workload.maxUnavailable),
  );
  const stop = (replica: ReplicaRecord, reason: string) => {
    actions.push({ type: "stop", id: replica.id, reason });
  };
  let liveCount = live.length;
  let readyLeft = readyCount;

  // Old replicas that are not ready cost nothing to remove.
  const oldNotReady = old.filter((r) => !ready(r));
  const oldReady = old.filter(ready);
  for (const replica of oldNotReady) {
    stop(replica, `replaced by revision ${workload.revision}`);
    liveCount--;
  }
  // Ready old replicas go only while the floor holds.
  let removable = Math.max(0, readyLeft - minReady);
  for (const replica of oldestFirst(oldReady)) {
    if (removable === 0) break;
    stop(replica, `replaced by revision ${workload.revision}`);
    removable--;
    readyLeft--;
    liveCount--;
  }
  const oldRemaining = oldReady.length - (readyCount - readyLeft);

  // Scale down current-revision replicas beyond the desired count (not-ready first).
  if (oldRemaining === 0 && current.length > desired) {
    const excess = current.length - desired;
    const order = [...current].sort(
      (a, b) => Number(ready(a)) - Number(ready(b)) || b.createdAtMs - a.createdAtMs,
    );
    for (const replica of order.slice(0, excess)) {
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

function oldestFirst(replicas: ReplicaRecord[]): ReplicaRecord[] {
  return [...replicas].sort((a, b) => a.createdAtMs - b.createdAtMs);
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

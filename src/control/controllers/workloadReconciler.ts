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

export function reconcileWorkload(input: ReconcileInput): {
  actions: ReconcileAction[];
  status: WorkloadStatusView;
} {
  const { workload, nodeStatus } = input;
  const actions: ReconcileAction[] = [];
  const forgotten = new Set<string>();

  // Replicas of lost, departed or deleted nodes are gone: forget them so replacements
  // are created in this very pass (REQ-031).
  for (const replica of input.replicas) {
    if (nodeIsGone(replica.node, nodeStatus)) {
      actions.push({
        type: "forget",
        id: replica.id,
        reason: `node ${replica.node} is ${nodeStatus(replica.node) ?? "deleted"}`,
      });
      forgotten.add(replica.id);
    } else if (replica.desired === "Stopped" && replica.node === "") {
      actions.push({ type: "forget", id: replica.id, reason: "stopped before it was placed" });
      forgotten.add(replica.id);
    }
  }
  const live = input.replicas.filter((r) => r.desired === "Running" && !forgotten.has(r.id));
  const ready = (r: ReplicaRecord) => isReplicaReady(r, nodeStatus);

  if (!workload) {
    for (const replica of live) {
      actions.push({ type: "stop", id: replica.id, reason: "workload deleted" });
    }
    return { actions, status: emptyStatus() };
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

  // Create current-revision replicas up to the desired count, within the surge budget.
  const missing = desired - Math.min(current.length, desired);
  const surgeRoom = desired + workload.maxSurge - liveCount;
  const toCreate = oldRemaining === 0 ? missing : Math.min(missing, Math.max(0, surgeRoom));
  for (let i = 0; i < toCreate; i++) {
    actions.push({ type: "create", id: input.newReplicaId(), revision: workload.revision });
  }

  const readyCurrent = current.filter(ready).length;
  const pending = live.filter((r) => r.node === "");
  let phase: WorkloadStatusView["phase"];
  let message: string;
  if (desired > 0 && readyCount === 0) {
    phase = "Pending";
    message =
      pending.find((r) => r.pendingReason)?.pendingReason ??
      `waiting for ${desired} replica${desired === 1 ? "" : "s"} to become ready`;
  } else if (old.length > 0 || current.length !== desired) {
    phase = "Progressing";
    message =
      old.length > 0
        ? `rolling out revision ${workload.revision}: ${readyCurrent}/${desired} updated replicas ready`
        : `${readyCount}/${desired} replicas ready, ${current.length} of ${desired} created`;
  } else if (readyCount < desired) {
    phase = "Degraded";
    message = `${readyCount}/${desired} replicas ready`;
  } else {
    phase = "Running";
    message = `${readyCount}/${desired} replicas ready`;
  }
  return {
    actions,
    status: {
      desiredReplicas: desired,
      replicas: live.length,
      readyReplicas: readyCount,
      updatedReplicas: current.length,
      availableReplicas: readyCount,
      minAvailable: workload.minAvailable,
      revision: workload.revision,
      phase,
      message,
    },
  };
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

/**
 * The cluster state as scheduler input: records (controllers/records.ts, clusterState.ts)
 * converted into the scheduler core's types. Pure; shared by the workload controller, which
 * schedules, and the workload API, which explains and estimates without scheduling — so the
 * API does not import the controller (ADR 0038).
 */
import type { Availability, ExistingReplica, SchedNode } from "../scheduler/types.js";
import type { ClusterState } from "./clusterState.js";
import type { ReplicaRecord, WorkloadRecord } from "./records.js";

const oneHourMs = 3_600_000;

/**
 * The nodes as the scheduler sees them: capacity, what the placed replicas reserve (every
 * replica record placed on a node, whatever its phase), and how steady each node has been.
 */
export function toSchedNodes(
  state: Pick<ClusterState, "nodes" | "replicasByWorkload">,
  nowMs: number,
): SchedNode[] {
  const allocated = new Map<string, SchedNode["allocated"]>();
  for (const replicas of state.replicasByWorkload.values()) {
    for (const { value: replica } of replicas) {
      if (replica.node === "") continue;
      allocated.set(
        replica.node,
        addResources(allocated.get(replica.node) ?? zero(), replica.resources),
      );
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

/** The sum of two resource amounts, as the scheduler counts allocations. */
export function addResources(
  a: SchedNode["allocated"],
  b: SchedNode["allocated"],
): SchedNode["allocated"] {
  return {
    cpuMillicores: a.cpuMillicores + b.cpuMillicores,
    memoryMiB: a.memoryMiB + b.memoryMiB,
    storageGiB: a.storageGiB + b.storageGiB,
    bandwidthMbps: a.bandwidthMbps + b.bandwidthMbps,
  };
}

/** A workload's availability ask, which sets its node-loss budget (ADR 0034). */
export function availabilityOf(workload: WorkloadRecord): Availability {
  return { replicas: workload.replicas, minAvailable: workload.minAvailable };
}

/**
 * Every placed replica as the scheduler counts it: a replica asked to stop, or of a
 * revision other than its workload's current one, is leaving (ADR 0034).
 */
export function existingReplicas(
  state: Pick<ClusterState, "replicasByWorkload" | "workloads">,
): ExistingReplica[] {
  const existing: ExistingReplica[] = [];
  for (const [key, replicas] of state.replicasByWorkload) {
    const workload = state.workloads.get(key)?.value;
    for (const { value: replica } of replicas) {
      if (replica.node === "") continue;
      existing.push(existingReplicaOf(key, replica, workload));
    }
  }
  return existing;
}

export function existingReplicaOf(
  key: string,
  replica: ReplicaRecord,
  workload: WorkloadRecord | undefined,
): ExistingReplica {
  const leaving =
    replica.desired !== "Running" ||
    workload === undefined ||
    replica.revision !== workload.revision;
  return { id: replica.id, workloadKey: key, node: replica.node, ...(leaving ? { leaving } : {}) };
}

import type { ReplicaRecord, ResourcesRecord } from "../controllers/records.js";

/** What is placed on one node: the replicas and the resources they reserve. */
export interface NodePlacements {
  replicaCount: number;
  allocated: ResourcesRecord;
}

/**
 * Replicas and reserved resources per node, counted as the scheduler counts them
 * (toSchedNodes): every replica record placed on a node, whatever its phase, since a
 * placed replica keeps its reservation until its record is deleted.
 */
export function placementsByNode(
  replicas: Iterable<{ value: ReplicaRecord }>,
): Map<string, NodePlacements> {
  const byNode = new Map<string, NodePlacements>();
  for (const { value: replica } of replicas) {
    if (replica.node === "") continue;
    const placed = byNode.get(replica.node) ?? emptyPlacements();
    placed.replicaCount += 1;
    placed.allocated.cpuMillicores += replica.resources.cpuMillicores;
    placed.allocated.memoryMiB += replica.resources.memoryMiB;
    placed.allocated.storageGiB += replica.resources.storageGiB;
    placed.allocated.bandwidthMbps += replica.resources.bandwidthMbps;
    byNode.set(replica.node, placed);
  }
  return byNode;
}

export function emptyPlacements(): NodePlacements {
  return {
    replicaCount: 0,
    allocated: { cpuMillicores: 0, memoryMiB: 0, storageGiB: 0, bandwidthMbps: 0 },
  };
}

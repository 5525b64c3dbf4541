import { describe, expect, it } from "vitest";
import type { ReplicaRecord } from "../controllers/records.js";
import { placementsByNode } from "./placements.js";

function replica(id: string, node: string, cpuMillicores: number): { value: ReplicaRecord } {
  return {
    value: {
      id,
      namespace: "default",
      workload: "web",
      revision: 1,
      node,
      desired: "Running",
      resources: { cpuMillicores, memoryMiB: 64, storageGiB: 0.5, bandwidthMbps: 0 },
      createdAtMs: 0,
    },
  };
}

describe("placementsByNode", () => {
  it("REQ-030 counts the replicas placed on each node and sums what they reserve; pending ones count nowhere", () => {
    const placed = placementsByNode([
      replica("a", "n1", 100),
      replica("b", "n1", 250),
      replica("c", "n2", 50),
      replica("d", "", 1000),
    ]);
    expect(placed.get("n1")).toEqual({
      replicaCount: 2,
      allocated: { cpuMillicores: 350, memoryMiB: 128, storageGiB: 1, bandwidthMbps: 0 },
    });
    expect(placed.get("n2")?.replicaCount).toBe(1);
    expect(placed.has("")).toBe(false);
    expect([...placed.keys()].sort()).toEqual(["n1", "n2"]);
  });
});

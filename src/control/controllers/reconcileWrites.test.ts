import { describe, expect, it } from "vitest";
import { parseWorkloadValue } from "../../api/workload/parse.js";
import type { NodeRecord } from "../nodes/nodeRecord.js";
import { testNodeRecord } from "../nodes/testing/nodeRecords.js";
import type { Versioned } from "./clusterState.js";
import { reconcileWrites } from "./reconcileWrites.js";
import type { ReplicaRecord, WorkloadRecord } from "./records.js";
import { asSpecView } from "./specView.js";

const nowMs = 1_000_000;
const parsed = parseWorkloadValue({
  apiVersion: "cloudless/v1",
  kind: "Workload",
  metadata: { name: "web" },
  spec: { command: ["sleep", "60"], resources: { cpuMillicores: 10, memoryMiB: 8 }, replicas: 2 },
});
if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
const workload: WorkloadRecord = {
  uid: "u",
  namespace: "default",
  name: "web",
  revision: 2,
  templateHash: "t",
  spec: parsed.doc,
  replicas: 2,
  minAvailable: 1,
  createdAtMs: 0,
  updatedAtMs: nowMs - 1_000,
  traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
};

function replica(id: string, node: string, modRevision: number): Versioned<ReplicaRecord> {
  return {
    modRevision,
    value: {
      id,
      namespace: "default",
      workload: "web",
      revision: 1,
      node,
      desired: "Running",
      resources: { cpuMillicores: 10, memoryMiB: 8, storageGiB: 0, bandwidthMbps: 0 },
      createdAtMs: 0,
    },
  };
}

describe("reconcile writes", () => {
  it("REQ-023 creates, stops and forgets become guarded writes of one group; a replica lost on a node carries the loss time", () => {
    const lost: NodeRecord = { ...testNodeRecord("n2"), status: "Lost", lastTransitionAtMs: 777 };
    const groups = reconcileWrites(
      { nodes: new Map([["n2", lost]]) },
      [
        {
          key: "default/web",
          workload,
          spec: asSpecView(workload.spec),
          replicas: [replica("web-a", "n1", 5), replica("web-b", "n2", 6)],
          actions: [
            { type: "create", id: "web-c", revision: 2 },
            { type: "stop", id: "web-a", reason: "old revision" },
            { type: "forget", id: "web-b", reason: "node lost" },
            { type: "stop", id: "web-gone", reason: "no such replica" },
          ],
        },
      ],
      nowMs,
    );
    expect(groups).toHaveLength(1);
    const [create, stop, forget, ...rest] = groups[0]!;
    expect(rest).toEqual([]);
    expect(create!.compare).toBeUndefined();
    expect(create!.op.type === "put" && JSON.parse(create!.op.value)).toMatchObject({
      id: "web-c",
      node: "",
      revision: 2,
      createdAtMs: nowMs,
      traceparent: workload.traceparent,
    });
    expect(stop!.compare).toEqual({
      key: "/replicas/default/web/web-a",
      target: "modRevision",
      op: "==",
      modRevision: 5,
    });
    expect(stop!.op.type === "put" && JSON.parse(stop!.op.value)).toMatchObject({
      desired: "Stopped",
      stopRequestedAtMs: nowMs,
    });
    expect(forget!.op).toEqual({ type: "delete", key: "/replicas/default/web/web-b" });
    expect(forget!.tag).toEqual({
      workload: "default/web",
      forgottenOnLostNode: true,
      lostAtMs: 777,
    });
  });

  it("REQ-070 a replica created long after the apply starts its own trace", () => {
    const old = { ...workload, updatedAtMs: nowMs - 11 * 60_000 };
    const groups = reconcileWrites(
      { nodes: new Map() },
      [
        {
          key: "default/web",
          workload: old,
          spec: asSpecView(old.spec),
          replicas: [],
          actions: [{ type: "create", id: "web-c", revision: 2 }],
        },
      ],
      nowMs,
    );
    const op = groups[0]?.[0]?.op;
    expect(op?.type).toBe("put");
    expect(op?.type === "put" && JSON.parse(op.value).traceparent).toBeUndefined();
  });
});

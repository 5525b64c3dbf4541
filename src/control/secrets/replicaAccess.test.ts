import { describe, expect, it } from "vitest";
import type { ReplicaRecord } from "../controllers/records.js";
import { decideReplicaAccess } from "./replicaAccess.js";

const replica: ReplicaRecord = {
  id: "r1",
  namespace: "default",
  workload: "web",
  revision: 1,
  node: "n1",
  desired: "Running",
  resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0, bandwidthMbps: 0 },
  createdAtMs: 0,
};
const document = { apiVersion: "x", kind: "Workload", spec: { secrets: [{ name: "db" }] } };

describe("REQ-063 a node reads only the secrets of replicas assigned to it", () => {
  it("REQ-063 allows the assigned node a secret the replica's spec references", () => {
    expect(decideReplicaAccess({ node: "n1", secret: "db", replica, document }).ok).toBe(true);
  });

  it("REQ-063 refuses another node, an unreferenced secret, a stopping or missing replica", () => {
    const refused = [
      decideReplicaAccess({ node: "n2", secret: "db", replica, document }),
      decideReplicaAccess({ node: "n1", secret: "other", replica, document }),
      decideReplicaAccess({
        node: "n1",
        secret: "db",
        replica: { ...replica, desired: "Stopped" },
        document,
      }),
      decideReplicaAccess({ node: "n1", secret: "db", replica: undefined, document }),
      decideReplicaAccess({ node: "n1", secret: "db", replica, document: { spec: {} } }),
      decideReplicaAccess({ node: "n1", secret: "db", replica, document: undefined }),
    ];
    expect(refused.map((access) => (access.ok ? "ok" : access.reason))).toEqual([
      "the replica is not assigned to node n2",
      "the replica's spec does not reference secret other",
      "the replica is being stopped",
      "no such replica",
      "the replica's spec does not reference secret db",
      "the replica's spec does not reference secret db",
    ]);
  });
});

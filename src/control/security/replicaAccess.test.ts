import { describe, expect, it } from "vitest";
import type { ReplicaRecord } from "../controllers/records.js";
import { decideReplicaAccess, type ReplicaObject } from "./replicaAccess.js";

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
const document = {
  apiVersion: "x",
  kind: "Workload",
  spec: { secrets: [{ name: "db" }], configs: [{ name: "app", onChange: "restart" }] },
};
const secret = (name: string): ReplicaObject => ({ kind: "secret", name });
const config = (name: string): ReplicaObject => ({ kind: "config", name });

describe("REQ-063 a node reads only the secrets and configs of replicas assigned to it", () => {
  it("REQ-063 allows the assigned node a secret or config the replica's spec references", () => {
    expect(decideReplicaAccess({ node: "n1", object: secret("db"), replica, document }).ok).toBe(
      true,
    );
    expect(decideReplicaAccess({ node: "n1", object: config("app"), replica, document }).ok).toBe(
      true,
    );
  });

  it("REQ-063 refuses another node, an unreferenced secret, a stopping or missing replica", () => {
    const refused = [
      decideReplicaAccess({ node: "n2", object: secret("db"), replica, document }),
      decideReplicaAccess({ node: "n1", object: secret("other"), replica, document }),
      decideReplicaAccess({
        node: "n1",
        object: secret("db"),
        replica: { ...replica, desired: "Stopped" },
        document,
      }),
      decideReplicaAccess({ node: "n1", object: secret("db"), replica: undefined, document }),
      decideReplicaAccess({ node: "n1", object: secret("db"), replica, document: { spec: {} } }),
      decideReplicaAccess({ node: "n1", object: secret("db"), replica, document: undefined }),
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

  it("NFR-C1 keeps the kinds apart: a secret's name does not open a config, nor the reverse", () => {
    const refused = [
      decideReplicaAccess({ node: "n1", object: config("db"), replica, document }),
      decideReplicaAccess({ node: "n1", object: secret("app"), replica, document }),
      decideReplicaAccess({ node: "n2", object: config("app"), replica, document }),
    ];
    expect(refused.map((access) => (access.ok ? "ok" : access.reason))).toEqual([
      "the replica's spec does not reference config db",
      "the replica's spec does not reference secret app",
      "the replica is not assigned to node n2",
    ]);
  });
});

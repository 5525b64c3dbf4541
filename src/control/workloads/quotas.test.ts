import { describe, expect, it } from "vitest";
import { CloudlessError } from "../../api/errors.js";
import { limits } from "../../api/limits.js";
import type { ClusterState } from "../controllers/clusterState.js";
import { type WorkloadRecord, workloadId } from "../controllers/records.js";
import { checkQuotas } from "./workloadRegistry.js";

function record(namespace: string, name: string, replicas: number): WorkloadRecord {
  return {
    uid: `${namespace}-${name}`,
    namespace,
    name,
    revision: 1,
    templateHash: "t",
    spec: {},
    replicas,
    minAvailable: 0,
    createdAtMs: 1,
    updatedAtMs: 1,
  };
}

function stateOf(records: WorkloadRecord[]): ClusterState {
  return {
    revision: 1,
    nodes: new Map(),
    workloads: new Map(
      records.map((r) => [workloadId(r.namespace, r.name), { value: r, modRevision: 1 }]),
    ),
    replicasByWorkload: new Map(),
    revisions: new Map(),
  };
}

function refusal(check: () => void): string {
  try {
    check();
  } catch (error) {
    expect(error).toBeInstanceOf(CloudlessError);
    expect((error as CloudlessError).code).toBe("InvalidArgument");
    return (error as CloudlessError).message;
  }
  throw new Error("expected a refusal");
}

describe("workload quotas", () => {
  it("REQ-080 hardening: a create beyond workloadsPerNamespace is refused with the limit named; updates and other namespaces are not", () => {
    const full = stateOf(
      Array.from({ length: limits.workloadsPerNamespace }, (_, i) => record("full", `w${i}`, 0)),
    );
    expect(refusal(() => checkQuotas(full, "full", "one-more", undefined, 0))).toBe(
      'namespace "full" already has 1000 workloads, the most allowed (limit workloadsPerNamespace); delete one first or use another namespace',
    );
    const existing = full.workloads.get(workloadId("full", "w1"))?.value;
    expect(() => checkQuotas(full, "full", "w1", existing, 3)).not.toThrow();
    expect(() => checkQuotas(full, "other", "one-more", undefined, 3)).not.toThrow();
  });

  it("REQ-080 hardening: replicas beyond replicasPerCluster are refused when they grow; shrinking is always allowed", () => {
    // Ten workloads at the per-workload limit are the whole cluster's budget.
    const state = stateOf(
      Array.from({ length: 10 }, (_, i) => record("default", `w${i}`, limits.replicasPerWorkload)),
    );
    expect(refusal(() => checkQuotas(state, "default", "new", undefined, 1))).toBe(
      "replicas: 1 would make 100001 replicas in the cluster, and at most 100000 are allowed (limit replicasPerCluster); scale other workloads down first",
    );
    const w0 = state.workloads.get(workloadId("default", "w0"))?.value;
    // The workload's own replicas are not counted twice, and a scale down goes through.
    expect(() => checkQuotas(state, "default", "w0", w0, limits.replicasPerWorkload)).not.toThrow();
    expect(() => checkQuotas(state, "default", "w0", w0, 10)).not.toThrow();
    expect(() => checkQuotas(state, "default", "new", undefined, 0)).not.toThrow();
    // A cluster already over the bound (from before it existed) can still shrink.
    const over = stateOf(
      [...state.workloads.values()].map((v) => v.value).concat(record("default", "old", 5000)),
    );
    const old = over.workloads.get(workloadId("default", "old"))?.value;
    expect(() => checkQuotas(over, "default", "old", old, 4000)).not.toThrow();
    expect(refusal(() => checkQuotas(over, "default", "old", old, 5001))).toMatch(
      /^replicas: 5001 would make 105001 replicas/,
    );
  });
});

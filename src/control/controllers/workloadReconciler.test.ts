import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { NodeStatus } from "../membership/membershipTracker.js";
import type { ReplicaRecord } from "./records.js";
import {
  isReplicaReady,
  reconcileWorkload,
  type WorkloadIntent,
  type WorkloadStatusView,
  workloadStatus,
} from "./workloadReconciler.js";

/** A tiny simulated cluster: actions apply at once; readiness flips when the test says. */
class SimCluster {
  replicas: ReplicaRecord[] = [];
  nodes = new Map<string, NodeStatus>([
    ["n1", "Ready"],
    ["n2", "Ready"],
    ["n3", "Ready"],
  ]);
  private seq = 0;
  private nowMs = 0;

  pass(workload: WorkloadIntent | undefined) {
    const result = reconcileWorkload({
      workload,
      replicas: this.replicas,
      nodeStatus: (n) => this.nodes.get(n),
      newReplicaId: () => `r${++this.seq}`,
    });
    for (const action of result.actions) {
      if (action.type === "create") {
        this.replicas.push({
          id: action.id,
          namespace: "default",
          workload: "web",
          revision: action.revision,
          node: "",
          desired: "Running",
          resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0, bandwidthMbps: 0 },
          createdAtMs: this.nowMs++,
        });
      } else if (action.type === "stop") {
        const replica = this.replicas.find((r) => r.id === action.id);
        if (replica) replica.desired = "Stopped";
      } else {
        this.replicas = this.replicas.filter((r) => r.id !== action.id);
      }
    }
    return result;
  }

  /** The scheduler places pending replicas round-robin. */
  place() {
    const ready = [...this.nodes].filter(([, s]) => s === "Ready").map(([n]) => n);
    let i = 0;
    for (const replica of this.replicas) {
      if (replica.node === "" && ready.length > 0) replica.node = ready[i++ % ready.length] ?? "";
    }
  }

  /** Agents start placed replicas and confirm stopped ones are gone. */
  agentsReport(readyIds: (r: ReplicaRecord) => boolean) {
    this.replicas = this.replicas.filter((r) => r.desired === "Running");
    for (const replica of this.replicas) {
      if (replica.node === "") continue;
      const isReady = readyIds(replica);
      replica.status = {
        phase: "Running",
        ready: isReady,
        restarts: 0,
        reason: "",
        message: "",
        hostPorts: {},
        driver: "process",
        reportedAtMs: 0,
      };
    }
  }

  readyCount() {
    return this.replicas.filter(
      (r) =>
        r.desired === "Running" && r.status?.ready === true && this.nodes.get(r.node) === "Ready",
    ).length;
  }
}

const intent = (overrides: Partial<WorkloadIntent> = {}): WorkloadIntent => ({
  revision: 1,
  replicas: 3,
  minAvailable: 2,
  maxSurge: 1,
  maxUnavailable: 0,
  ...overrides,
});

function converge(cluster: SimCluster, workload: WorkloadIntent, rounds = 30) {
  for (let i = 0; i < rounds; i++) {
    cluster.pass(workload);
    cluster.place();
    cluster.agentsReport(() => true);
  }
}

describe("workload reconciler", () => {
  it("REQ-020 creates the desired replicas and then does nothing more (idempotent)", () => {
    const cluster = new SimCluster();
    converge(cluster, intent());
    expect(cluster.replicas).toHaveLength(3);
    const again = cluster.pass(intent());
    expect(again.actions).toEqual([]);
    expect(again.status).toMatchObject({ phase: "Running", readyReplicas: 3, updatedReplicas: 3 });
  });

  it("REQ-031 replicas of a Lost node are forgotten and replaced in the same pass", () => {
    const cluster = new SimCluster();
    converge(cluster, intent());
    const onN1 = cluster.replicas.filter((r) => r.node === "n1").length;
    cluster.nodes.set("n1", "Lost");
    const result = cluster.pass(intent());
    expect(result.actions.filter((a) => a.type === "forget")).toHaveLength(onN1);
    expect(result.actions.filter((a) => a.type === "create")).toHaveLength(onN1);
  });

  it("REQ-023 a rollout with maxSurge 1 never drops below replicas-1 ready and completes", () => {
    const cluster = new SimCluster();
    converge(cluster, intent());
    const v2 = intent({ revision: 2 });
    for (let round = 0; round < 50; round++) {
      cluster.pass(v2);
      expect(cluster.readyCount()).toBeGreaterThanOrEqual(2);
      cluster.place();
      cluster.agentsReport(() => true);
    }
    expect(cluster.replicas.every((r) => r.revision === 2)).toBe(true);
    expect(cluster.replicas).toHaveLength(3);
  });

  it("REQ-023 a broken new revision never takes ready replicas below minAvailable", () => {
    const cluster = new SimCluster();
    converge(cluster, intent({ maxUnavailable: 1, maxSurge: 0 }));
    const broken = intent({ revision: 2, maxUnavailable: 1, maxSurge: 0 });
    for (let round = 0; round < 30; round++) {
      cluster.pass(broken);
      expect(cluster.readyCount()).toBeGreaterThanOrEqual(2);
      cluster.place();
      cluster.agentsReport((r) => r.revision === 1);
    }
    expect(cluster.readyCount()).toBe(2);
  });

  it("REQ-023 property: for any rollout knobs and readiness pattern, ready never drops below the floor", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 0, max: 3 }),
        fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }),
        (replicas, maxSurge, maxUnavailable, readiness) => {
          fc.pre(maxSurge + maxUnavailable > 0);
          const minAvailable = Math.max(0, replicas - Math.max(1, maxUnavailable));
          const base = { replicas, minAvailable, maxSurge, maxUnavailable };
          const cluster = new SimCluster();
          converge(cluster, { ...base, revision: 1 });
          const floor = Math.min(replicas, Math.max(minAvailable, replicas - maxUnavailable));
          // A replica, once ready, stays ready: the reconciler cannot prevent a crash,
          // only avoid removing ready replicas below the floor itself.
          const becameReady = new Set<string>();
          let round = 0;
          for (const newIsReady of readiness) {
            cluster.pass({ ...base, revision: 2 });
            if (cluster.readyCount() < floor) return false;
            cluster.place();
            cluster.agentsReport((r) => {
              if (r.revision === 1 || newIsReady || round > 30) becameReady.add(r.id);
              return becameReady.has(r.id);
            });
            round++;
          }
          // And the rollout completes once new replicas become ready.
          return (
            cluster.replicas.every((r) => r.revision === 2) && cluster.readyCount() === replicas
          );
        },
      ),
      { numRuns: 300 },
    );
  });

  it("REQ-020 scaling down removes not-ready replicas first; deletion stops all", () => {
    const cluster = new SimCluster();
    converge(cluster, intent({ replicas: 4, minAvailable: 3 }));
    const notReady = cluster.replicas[0];
    if (notReady?.status) notReady.status.ready = false;
    const result = cluster.pass(intent({ replicas: 3, minAvailable: 2 }));
    expect(result.actions).toEqual([
      { type: "stop", id: notReady?.id, reason: "scaled down to 3" },
    ]);
    const deleted = cluster.pass(undefined);
    expect(deleted.actions.filter((a) => a.type === "stop")).toHaveLength(3);
  });

  it("reports Pending with the scheduler's reason when nothing can be placed", () => {
    const cluster = new SimCluster();
    cluster.pass(intent());
    for (const replica of cluster.replicas)
      replica.pendingReason = "0/3 nodes available: 3 Insufficient memory";
    const result = cluster.pass(intent());
    expect(result.status.phase).toBe("Pending");
    expect(result.status.message).toMatch(/Insufficient memory/);
  });

  it("REQ-080 hardening: a status read plans nothing, so 2^31-1 desired replicas cost no more than their records", () => {
    const cluster = new SimCluster();
    converge(cluster, intent());
    const huge = intent({ replicas: 2_147_483_647 });
    const started = performance.now();
    const status = workloadStatus(huge, cluster.replicas, (n) => cluster.nodes.get(n));
    expect(performance.now() - started).toBeLessThan(100);
    expect(status).toMatchObject({
      desiredReplicas: 2_147_483_647,
      replicas: 3,
      readyReplicas: 3,
      phase: "Progressing",
      message: "3/2147483647 replicas ready, 3 of 2147483647 created",
    });
  });

  it("REQ-020 hardening: maxCreates bounds the creates of one call; the rest are deferred and made by later passes", () => {
    const result = reconcileWorkload({
      workload: intent({ replicas: 2_147_483_647 }),
      replicas: [],
      nodeStatus: () => "Ready",
      newReplicaId: () => "r",
      maxCreates: 1000,
    });
    expect(result.actions).toHaveLength(1000);
    expect(result.deferredCreates).toBe(2_147_483_647 - 1000);
    expect(result.status.phase).toBe("Pending");

    const cluster = new SimCluster();
    let seq = 0;
    for (let pass = 0; pass < 4; pass++) {
      const step = reconcileWorkload({
        workload: intent({ replicas: 10 }),
        replicas: cluster.replicas,
        nodeStatus: (n) => cluster.nodes.get(n),
        newReplicaId: () => `b${++seq}`,
        maxCreates: 4,
      });
      for (const action of step.actions) {
        if (action.type !== "create") continue;
        cluster.replicas.push({
          id: action.id,
          namespace: "default",
          workload: "web",
          revision: action.revision,
          node: "",
          desired: "Running",
          resources: { cpuMillicores: 1, memoryMiB: 1, storageGiB: 0, bandwidthMbps: 0 },
          createdAtMs: seq,
        });
      }
      expect(step.deferredCreates).toBe(Math.max(0, 10 - 4 * (pass + 1)));
    }
    expect(cluster.replicas).toHaveLength(10);
  });

  it("REQ-080 property: workloadStatus reads the status the reconciler always reported (an independent oracle)", () => {
    const statuses: NodeStatus[] = ["Ready", "NotReady", "Lost", "Left"];
    const replicaArb = fc.record({
      node: fc.constantFrom("", "n1", "n2", "gone"),
      desired: fc.constantFrom("Running" as const, "Stopped" as const),
      revision: fc.integer({ min: 1, max: 3 }),
      ready: fc.boolean(),
      pendingReason: fc.option(fc.constantFrom("no nodes", "Insufficient memory"), {
        nil: undefined,
      }),
    });
    fc.assert(
      fc.property(
        fc.option(
          fc.record({
            revision: fc.integer({ min: 1, max: 3 }),
            replicas: fc.integer({ min: 0, max: 8 }),
            minAvailable: fc.integer({ min: 0, max: 8 }),
            maxSurge: fc.integer({ min: 0, max: 3 }),
            maxUnavailable: fc.integer({ min: 0, max: 3 }),
          }),
          { nil: undefined },
        ),
        fc.array(replicaArb, { maxLength: 12 }),
        fc.constantFrom(...statuses),
        fc.constantFrom(...statuses),
        (workload, specs, n1, n2) => {
          const nodes = new Map<string, NodeStatus>([
            ["n1", n1],
            ["n2", n2],
          ]);
          const nodeStatus = (n: string) => nodes.get(n);
          const replicas: ReplicaRecord[] = specs.map((spec, i) => ({
            id: `r${i}`,
            namespace: "default",
            workload: "web",
            revision: spec.revision,
            node: spec.node,
            desired: spec.desired,
            resources: { cpuMillicores: 1, memoryMiB: 1, storageGiB: 0, bandwidthMbps: 0 },
            createdAtMs: i,
            ...(spec.pendingReason ? { pendingReason: spec.pendingReason } : {}),
            ...(spec.node !== ""
              ? {
                  status: {
                    phase: "Running" as const,
                    ready: spec.ready,
                    restarts: 0,
                    reason: "",
                    message: "",
                    hostPorts: {},
                    driver: "process",
                    reportedAtMs: 0,
                  },
                }
              : {}),
          }));
          // The oracle predates the node-loss budget (ADR 0034): the status may add the
          // risk of losing one node to the message, and says so in nodeLossRisk.
          const expected = oracleStatus(workload, replicas, nodeStatus);
          const { message, nodeLossRisk, ...counts } = workloadStatus(
            workload,
            replicas,
            nodeStatus,
          );
          const { message: expectedMessage, ...expectedCounts } = expected;
          expect(counts).toEqual(expectedCounts);
          expect(message.startsWith(expectedMessage)).toBe(true);
          if (message !== expectedMessage) expect(message).toContain(nodeLossRisk);
          expect(
            reconcileWorkload({ workload, replicas, nodeStatus, newReplicaId: () => "x" }).status,
          ).toEqual(workloadStatus(workload, replicas, nodeStatus));
        },
      ),
      { numRuns: 500 },
    );
  });
});

/** The status as reconcileWorkload computed it before issue 12, from the live replicas. */
function oracleStatus(
  workload: WorkloadIntent | undefined,
  replicas: ReplicaRecord[],
  nodeStatus: (node: string) => NodeStatus | undefined,
): WorkloadStatusView {
  if (!workload) {
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
  const gone = (r: ReplicaRecord) => {
    if (r.node === "") return false;
    const status = nodeStatus(r.node);
    return status === undefined || status === "Lost" || status === "Left";
  };
  const live = replicas.filter((r) => r.desired === "Running" && !gone(r));
  const ready = (r: ReplicaRecord) => isReplicaReady(r, nodeStatus);
  const desired = workload.replicas;
  const current = live.filter((r) => r.revision === workload.revision);
  const old = live.filter((r) => r.revision !== workload.revision);
  const readyCount = live.filter(ready).length;
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
    desiredReplicas: desired,
    replicas: live.length,
    readyReplicas: readyCount,
    updatedReplicas: current.length,
    availableReplicas: readyCount,
    minAvailable: workload.minAvailable,
    revision: workload.revision,
    phase,
    message,
  };
}
describe("workload reconciler and the node-loss budget (ADR 0034, ADR 0035)", () => {
  const nodes = new Map<string, NodeStatus>([
    ["n1", "Ready"],
    ["n2", "Ready"],
    ["n3", "Ready"],
  ]);
  let seq = 0;

  function replica(node: string, extra: Partial<ReplicaRecord> = {}): ReplicaRecord {
    seq++;
    return {
      id: `r${seq}`,
      namespace: "default",
      workload: "web",
      revision: 1,
      node,
      desired: "Running",
      resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0, bandwidthMbps: 0 },
      createdAtMs: seq,
      status: {
        phase: "Running",
        ready: true,
        restarts: 0,
        reason: "",
        message: "",
        hostPorts: {},
        driver: "process",
        reportedAtMs: 0,
      },
      ...extra,
    };
  }

  function reconcile(replicas: ReplicaRecord[], workload = intent(), status = nodes) {
    return reconcileWorkload({
      workload,
      replicas,
      nodeStatus: (n) => status.get(n),
      newReplicaId: () => "new",
    });
  }

  it("REQ-030 the status says when one node's loss would take the workload below minAvailable", () => {
    const result = reconcile([replica("n1"), replica("n1"), replica("n2")]);
    expect(result.actions).toEqual([]);
    expect(result.status.message).toBe(
      "3/3 replicas ready; losing node n1 would leave fewer than minAvailable 2 ready: it holds 2 of 3 replicas (at most 1 of 3 per node keeps minAvailable 2; that needs 3 nodes with room)",
    );
    expect(reconcile([replica("n1"), replica("n2"), replica("n3")]).status.message).toBe(
      "3/3 replicas ready",
    );
  });

  it("ADR 0035 a move's surge is neither scaled away nor answered with another replica", () => {
    const moved = replica("n1");
    const others = [replica("n1"), replica("n2")];
    const surge = replica("n3", {
      move: { replaces: moved.id, fromNode: "n1", startedAtMs: 0, reason: "spread" },
    });
    const result = reconcile([moved, ...others, surge]);
    expect(result.actions).toEqual([]);
    expect(result.status).toMatchObject({
      phase: "Running",
      replicas: 4,
      readyReplicas: 4,
      updatedReplicas: 3,
    });
    expect(result.status.message).toBe("4/3 replicas ready; moving a replica off n1: spread");
    // Not yet placed: still not answered with a create.
    expect(
      reconcile([moved, ...others, { ...surge, node: "", status: undefined }]).actions,
    ).toEqual([]);
  });

  it("ADR 0035 once the replaced replica is gone (its node lost) the surge is an ordinary replica", () => {
    const moved = replica("n1");
    const surge = replica("n3", {
      move: { replaces: moved.id, fromNode: "n1", startedAtMs: 0, reason: "spread" },
    });
    const lost = new Map(nodes).set("n1", "Lost");
    const result = reconcile([moved, replica("n2"), replica("n2"), surge], intent(), lost);
    expect(result.actions).toEqual([{ type: "forget", id: moved.id, reason: "node n1 is Lost" }]);
  });

  it("REQ-023 a rollout stops old replicas from the most stacked node first", () => {
    const oldest = replica("n2");
    const stacked = [replica("n1"), replica("n1")];
    const fresh = replica("n3", { revision: 2 });
    const result = reconcile([oldest, ...stacked, fresh], intent({ revision: 2 }));
    const stopped = result.actions.filter((a) => a.type === "stop").map((a) => a.id);
    expect(stopped).toHaveLength(1);
    expect(stacked.map((r) => r.id)).toContain(stopped[0]);
  });

  it("REQ-020 scaling down takes ready replicas from the most stacked node first", () => {
    // The stacked ones are the oldest: newest-first alone would stop one of the others.
    const stacked = [replica("n1"), replica("n1")];
    const spread = [replica("n2"), replica("n3")];
    const result = reconcile([...stacked, ...spread], intent({ replicas: 3 }));
    const stopped = result.actions.filter((a) => a.type === "stop").map((a) => a.id);
    expect(stopped).toHaveLength(1);
    expect(stacked.map((r) => r.id)).toContain(stopped[0]);
  });
});

import { describe, expect, it } from "vitest";
import type { RejectedPlacement } from "../scheduler/planCheck.js";
import type { PlannedPlacement } from "../scheduler/types.js";
import type { Versioned } from "./clusterState.js";
import { afterPlan, exhaustedEvents, maxPlanAttempts } from "./planRetry.js";
import type { ReplicaRecord } from "./records.js";

const placed: PlannedPlacement = { replicaId: "web-1", node: "n1", score: 1, scores: {} };
const refused = (replicaId: string, detail = "node n1 is cordoned"): RejectedPlacement => ({
  replicaId,
  node: "n1",
  reason: "NodeChanged",
  detail,
});

function pendingReplica(id: string, workload: string): Versioned<ReplicaRecord> {
  return {
    modRevision: 3,
    value: {
      id,
      namespace: "default",
      workload,
      revision: 1,
      node: "",
      desired: "Running",
      resources: { cpuMillicores: 10, memoryMiB: 8, storageGiB: 0, bandwidthMbps: 0 },
      createdAtMs: 0,
    },
  };
}

describe("plan retry decider", () => {
  it("REQ-012 a plan that placed something ends the streak; what it refused is retried at once", () => {
    expect(afterPlan({ placed: [placed], rejected: [refused("web-2")] }, 4)).toEqual({
      refusedInARow: 0,
      retryNow: true,
      exhausted: false,
    });
    expect(afterPlan({ placed: [placed], rejected: [] }, 4)).toEqual({
      refusedInARow: 0,
      retryNow: false,
      exhausted: false,
    });
    // An empty plan (nothing to place) is no refusal either.
    expect(afterPlan({ placed: [], rejected: [] }, 2).refusedInARow).toBe(0);
  });

  it("REQ-012 plans refused whole are retried at once until the last attempt, which says so once; later ones wait", () => {
    const result = { placed: [], rejected: [refused("web-1")] };
    const verdicts = [];
    let inARow = 0;
    for (let plan = 0; plan < maxPlanAttempts + 2; plan++) {
      const verdict = afterPlan(result, inARow);
      inARow = verdict.refusedInARow;
      verdicts.push([verdict.retryNow, verdict.exhausted]);
    }
    expect(verdicts).toEqual([
      [true, false],
      [true, false],
      [true, false],
      [true, false],
      [false, true],
      [false, false],
      [false, false],
    ]);
  });

  it("REQ-071 the exhausted event names each workload, how many replicas wait and the last reason", () => {
    const pending = new Map([
      ["web-1", pendingReplica("web-1", "web")],
      ["web-2", pendingReplica("web-2", "web")],
      ["db-1", pendingReplica("db-1", "db")],
    ]);
    const events = exhaustedEvents(
      [refused("web-1"), refused("db-1", "node n1 has no memory left for it"), refused("web-2")],
      pending,
      3,
    );
    expect(events.map((e) => [e.subject, e.reason, e.message])).toEqual([
      [
        "workload/default/web",
        "NodeChanged",
        "2 replicas not placed: the plan applier refused 3 plans in a row (last: NodeChanged, node n1 is cordoned); retried on the next change or resync",
      ],
      [
        "workload/default/db",
        "NodeChanged",
        "1 replica not placed: the plan applier refused 3 plans in a row (last: NodeChanged, node n1 has no memory left for it); retried on the next change or resync",
      ],
    ]);
  });
});

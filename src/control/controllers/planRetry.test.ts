import { describe, expect, it } from "vitest";
import type { PlanSubmitter, RejectedPlacement } from "../scheduler/planCheck.js";
import { RejectingPlanner, SchedulerHarness } from "../scheduler/testing/harness.js";
import type { Plan, PlannedPlacement } from "../scheduler/types.js";
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

describe("plan retry decider over the scheduler harness", () => {
  /**
   * The controller's loop in miniature: plan, submit, and plan again while the decider
   * says "retry now"; `between` runs between a plan and its submission. Returns the plans.
   */
  async function retryLoop(
    h: SchedulerHarness,
    planner: PlanSubmitter,
    between: (attempt: number, plan: Plan) => void = () => {},
  ): Promise<number> {
    let inARow = 0;
    for (let attempt = 1; attempt <= 20; attempt++) {
      const plan = h.process(attempt);
      between(attempt, plan);
      const verdict = afterPlan(await planner.apply(plan), inARow);
      inARow = verdict.refusedInARow;
      if (!verdict.retryNow) return attempt;
    }
    throw new Error("the decider never stopped");
  }

  it("REQ-012 the harness's re-checking applier refuses a placement on a node cordoned after the plan; the decider retries at once and the next plan places it elsewhere", async () => {
    const h = new SchedulerHarness();
    h.addNodes(2);
    h.addWorkload({ key: "default/web", replicas: 1 });
    let cordoned = "";
    const plans = await retryLoop(h, h.applier(), (attempt, plan) => {
      if (attempt !== 1) return;
      cordoned = plan.placements[0]!.node;
      h.updateNode(cordoned, { cordoned: true });
    });
    expect(plans).toBe(2);
    expect(h.pending).toEqual([]);
    expect(h.existing.map((r) => r.node)).toEqual([expect.not.stringMatching(cordoned)]);
  });

  it("REQ-012 a planner refusing twice in front of the harness's applier: the third plan places everything and the decider stops", async () => {
    const h = new SchedulerHarness();
    h.addNodes(2);
    h.addWorkload({ key: "default/web", replicas: 3 });
    const planner = new RejectingPlanner(h.applier(), { rejections: 2 });
    expect(await retryLoop(h, planner)).toBe(3);
    expect(h.pending).toEqual([]);
  });

  it("REQ-012 a planner refusing always: the decider gives up after maxPlanAttempts plans", async () => {
    const h = new SchedulerHarness();
    h.addNodes(1);
    h.addWorkload({ key: "default/web", replicas: 1 });
    const planner = new RejectingPlanner(h.applier(), { rejections: "always" });
    expect(await retryLoop(h, planner)).toBe(maxPlanAttempts);
    expect(planner.refused).toBe(maxPlanAttempts);
    expect(h.pending).toHaveLength(1);
  });
});

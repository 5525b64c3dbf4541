import { describe, expect, it } from "vitest";
import { seededRng } from "../../lib/rng.js";
import { explainBestScores, explainPending, probePlacement } from "./explain.js";
import { schedule } from "./schedule.js";
import { makeReplica, SchedulerHarness } from "./testing/harness.js";
import { defaultWeights } from "./types.js";

describe("REQ-021 workload explain", () => {
  it("for a schedulable replica: feasible count, rejections per filter, best nodes first", () => {
    const h = new SchedulerHarness();
    h.addNodes(6, (i) => ({ reliability: 0.5 + i * 0.1 }));
    h.addNodes(2, { status: "NotReady" });
    h.addNodes(1, { capacity: { memoryMiB: 256 } });
    const replica = makeReplica("ns/web-0", "ns/web");
    const explanation = explainPending(h.snapshot(), replica);
    expect(explanation).toMatchObject({
      schedulable: true,
      totalNodes: 9,
      feasibleNodes: 6,
      rejections: { NodeReady: 2, FitsResources: 1 },
      message: "6/9 nodes available: 2 node NotReady, 1 Insufficient memory",
    });
    const best = explanation.bestScores;
    expect(best).toHaveLength(explainBestScores);
    expect(best[0]!.node).toBe("node-00005"); // the most reliable
    expect(best.map((b) => b.score)).toEqual([...best.map((b) => b.score)].sort((a, b) => b - a));
    expect(Object.keys(best[0]!.scores ?? {})).toHaveLength(5);
  });

  it("for an unschedulable replica: the same summary the scheduler reports", () => {
    const h = new SchedulerHarness();
    h.addNodes(3, { allocated: { memoryMiB: 7168 } });
    const replica = makeReplica("ns/db-0", "ns/db", { resources: { memoryMiB: 2048 } });
    const explanation = explainPending(h.snapshot(), replica);
    const plan = schedule({
      snapshot: h.snapshot(),
      pending: [replica],
      nowMs: 0,
      rng: seededRng(1),
    });
    expect(explanation.schedulable).toBe(false);
    expect(explanation).toMatchObject({
      eligibleNodes: 0,
      rejections: plan.unschedulable[0]!.rejections,
      message: "0/3 nodes available: 3 Insufficient memory",
    });
    expect(explanation.bestScores.map((b) => b.node)).toEqual(
      plan.unschedulable[0]!.bestScores.map((b) => b.node),
    );
  });

  it("agrees with schedule() on where a lone replica goes when the best node is unique", () => {
    const h = new SchedulerHarness();
    h.addNodes(5, (i) => ({ costPerHour: 0.1 * (i + 1), reliability: 1 - i * 0.05 }));
    const replica = makeReplica("ns/web-0", "ns/web");
    const explanation = explainPending(h.snapshot(), replica, defaultWeights);
    const plan = schedule({
      snapshot: h.snapshot(),
      pending: [replica],
      nowMs: 0,
      rng: seededRng(9),
    });
    expect(explanation.bestScores[0]!.node).toBe(plan.placements[0]!.node);
    expect(explanation.bestScores[0]!.score).toBeCloseTo(plan.placements[0]!.score);
  });

  it("reports an invalid request instead of throwing", () => {
    const h = new SchedulerHarness();
    h.addNodes(1);
    const replica = makeReplica("ns/x-0", "ns/x", { resources: { storageGiB: -5 } });
    expect(explainPending(h.snapshot(), replica)).toMatchObject({
      schedulable: false,
      message: "invalid request: storageGiB must be a finite number >= 0",
    });
  });

  it("REQ-030 says when a replica could only go over its node-loss budget, and what it would take", () => {
    const h = new SchedulerHarness();
    h.addNodes(2);
    h.addExisting({ workloadKey: "ns/web", node: "node-00000" });
    h.addExisting({ workloadKey: "ns/web", node: "node-00001" });
    const replica = makeReplica("ns/web-2", "ns/web", {
      availability: { replicas: 3, minAvailable: 2 },
    });
    const explanation = explainPending(h.snapshot(), replica);
    expect(explanation).toMatchObject({
      schedulable: true,
      feasibleNodes: 0,
      rejections: { NodeLossBudget: 2 },
      overBudget:
        "no node with room is within the node-loss budget (at most 1 of 3 per node keeps minAvailable 2): it would go to node-00000, which would then hold 2; surviving the loss of any node needs 3 nodes with room",
    });
    expect(explanation.message).toBe(
      "0/2 nodes available: 2 node-loss budget full (at most 1 of 3 per node keeps minAvailable 2); no node with room is within the node-loss budget (at most 1 of 3 per node keeps minAvailable 2): it would go to node-00000, which would then hold 2; surviving the loss of any node needs 3 nodes with room",
    );
    expect(explanation.bestScores.map((b) => b.node)).toEqual(["node-00000", "node-00001"]);
  });

  it("probePlacement: where one more replica would go, and whether only over budget", () => {
    const h = new SchedulerHarness();
    h.addNodes(3, (i) => ({ zone: ["a", "b", "c"][i]! }));
    h.addExisting({ workloadKey: "ns/web", node: "node-00000" });
    h.addExisting({ workloadKey: "ns/web", node: "node-00000" });
    h.addExisting({ workloadKey: "ns/web", node: "node-00001" });
    const availability = { replicas: 3, minAvailable: 2 };
    const replica = makeReplica("probe", "ns/web", { availability });
    expect(probePlacement(h.snapshot(), replica)).toEqual({
      node: "node-00002",
      overBudget: false,
    });
    h.updateNode("node-00002", { status: "NotReady" });
    expect(probePlacement(h.snapshot(), replica)).toEqual({
      node: "node-00001",
      overBudget: true,
    });
    h.updateNode("node-00000", { status: "NotReady" });
    h.updateNode("node-00001", { status: "NotReady" });
    expect(probePlacement(h.snapshot(), replica)).toBeUndefined();
  });
});

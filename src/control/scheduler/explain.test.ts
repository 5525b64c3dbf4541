import { describe, expect, it } from "vitest";
import { seededRng } from "../../lib/rng.js";
import { explainBestScores, explainPending } from "./explain.js";
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
});

import { describe, expect, it } from "vitest";
import { RejectingPlanner, SchedulerHarness } from "./harness.js";

/** Plans and submits until nothing is pending or `attempts` plans were tried. */
async function scheduleWithRetries(
  harness: SchedulerHarness,
  planner: { apply: RejectingPlanner["apply"] },
  attempts: number,
): Promise<number> {
  let tried = 0;
  while (harness.pending.length > 0 && tried < attempts) {
    tried++;
    await planner.apply(harness.process(tried));
  }
  return tried;
}

describe("scheduler harness: the re-checking applier", () => {
  it("REQ-021 contract: a placement on a node cordoned since the plan is refused, the rest commit (partial commit), and the next plan places it elsewhere", () => {
    const h = new SchedulerHarness();
    h.addNodes(3);
    h.addWorkload({ key: "default/web", replicas: 2, placement: { antiAffinity: true } });
    const plan = h.process();
    expect(plan.placements).toHaveLength(2);
    const [first, second] = plan.placements;
    h.updateNode(first!.node, { cordoned: true });

    const result = h.submitPlan(plan);

    expect(result.placed.map((p) => p.replicaId)).toEqual([second!.replicaId]);
    expect(result.rejected).toEqual([
      {
        replicaId: first!.replicaId,
        node: first!.node,
        reason: "NodeChanged",
        detail: `node ${first!.node} is cordoned`,
      },
    ]);
    expect(h.pending.map((r) => r.id)).toEqual([first!.replicaId]);
    expect(h.existing.map((r) => r.id)).toEqual([second!.replicaId]);
    const retry = h.process(2);
    expect(retry.placements).toHaveLength(1);
    expect([first!.node, second!.node]).not.toContain(retry.placements[0]!.node);
    expect(h.submitPlan(retry).rejected).toEqual([]);
    expect(h.pending).toEqual([]);
  });

  it("REQ-021 contract: a node no longer Ready refuses every placement of the plan on it", () => {
    const h = new SchedulerHarness();
    const [node] = h.addNodes(1);
    h.addWorkload({ key: "default/web", replicas: 2, minAvailable: 0 });
    const plan = h.process();
    expect(plan.placements).toHaveLength(2);
    h.updateNode(node!.name, { status: "NotReady" });
    const result = h.submitPlan(plan);
    expect(result.placed).toEqual([]);
    expect(result.revision).toBe(0);
    expect(result.rejected.map((r) => r.detail)).toEqual([
      `node ${node!.name} is NotReady`,
      `node ${node!.name} is NotReady`,
    ]);
    expect(h.node(node!.name).allocated.cpuMillicores).toBe(0);
  });

  it("REQ-012 contract: a node filled since the plan takes only what still fits, counting the plan's own earlier placements, and is never overcommitted", () => {
    const h = new SchedulerHarness();
    const [node] = h.addNodes(1, { capacity: { cpuMillicores: 1000 } });
    h.addWorkload({
      key: "default/web",
      replicas: 2,
      minAvailable: 0,
      resources: { cpuMillicores: 400 },
    });
    const plan = h.process();
    expect(plan.placements.map((p) => p.node)).toEqual([node!.name, node!.name]);
    // Something else took 400m of the node between the plan and its commit.
    h.addExisting({
      workloadKey: "default/other",
      node: node!.name,
      resources: { cpuMillicores: 400 },
    });

    const result = h.submitPlan(plan);

    expect(result.placed).toEqual([plan.placements[0]]);
    expect(result.rejected).toEqual([
      {
        replicaId: plan.placements[1]!.replicaId,
        node: node!.name,
        reason: "NodeChanged",
        detail: `node ${node!.name} has no CPU left for it`,
      },
    ]);
    expect(h.node(node!.name).allocated.cpuMillicores).toBe(800);
  });

  it("REQ-012 contract: a plan submitted twice commits once (its replicas are no longer pending the second time)", () => {
    const h = new SchedulerHarness();
    const [node] = h.addNodes(1);
    h.addWorkload({ key: "default/web", replicas: 1 });
    const plan = h.process();
    expect(h.submitPlan(plan).placed).toHaveLength(1);
    const again = h.submitPlan(plan);
    expect(again.placed).toEqual([]);
    expect(again.rejected.map((r) => r.detail)).toEqual([
      `replica ${plan.placements[0]!.replicaId} is no longer pending`,
    ]);
    expect(h.existing).toHaveLength(1);
    expect(h.node(node!.name).allocated.cpuMillicores).toBe(500);
  });
});

describe("scheduler harness: the rejecting planner", () => {
  it("REQ-012 contract: a planner refusing 2 plans lets the third through, which places everything", async () => {
    const h = new SchedulerHarness();
    h.addNodes(2);
    h.addWorkload({ key: "default/web", replicas: 3 });
    const planner = new RejectingPlanner(h.applier(), { rejections: 2 });

    const attempts = await scheduleWithRetries(h, planner, 5);

    expect(attempts).toBe(3);
    expect(planner.refused).toBe(2);
    expect(planner.plans).toHaveLength(3);
    expect(h.pending).toEqual([]);
    expect(h.existing).toHaveLength(3);
  });

  it("REQ-012 contract: a planner refusing always commits nothing, whatever the attempts, and says why for every placement", async () => {
    const h = new SchedulerHarness();
    const [node] = h.addNodes(1);
    h.addWorkload({ key: "default/web", replicas: 2, minAvailable: 0 });
    const planner = new RejectingPlanner(h.applier(), { rejections: "always" });

    expect(await scheduleWithRetries(h, planner, 4)).toBe(4);
    const last = await planner.apply(h.process(9));

    expect(planner.refused).toBe(5);
    expect(h.pending).toHaveLength(2);
    expect(h.existing).toEqual([]);
    expect(h.node(node!.name).allocated.cpuMillicores).toBe(0);
    expect(last.rejected.map((r) => [r.reason, r.detail])).toEqual([
      ["Conflict", "plan 5 refused by the test planner"],
      ["Conflict", "plan 5 refused by the test planner"],
    ]);
  });
});

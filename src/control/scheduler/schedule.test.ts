import { describe, expect, it } from "vitest";
import { seededRng } from "../../lib/rng.js";
import { defaultFilters } from "./filters.js";
import type { ScorePlugin } from "./plugin.js";
import { schedule, scheduleWith } from "./schedule.js";
import { makeNode, makeReplica, SchedulerHarness } from "./testing/harness.js";
import type { ClusterSnapshot } from "./types.js";

/** Per-node replica counts of a plan, sorted descending (node identity is the rng's). */
function shape(counts: Record<string, number>): number[] {
  return Object.values(counts).sort((a, b) => b - a);
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

const quarterNode = { cpuMillicores: 1000, memoryMiB: 2048 };

describe("REQ-022 placement strategy", () => {
  // ADR 0034: bin-packing is across workloads; one workload's own replicas spread over
  // nodes first (see "REQ-030 node-loss budget" below). A workload with minAvailable 0
  // asks nothing of a node loss, so its replicas pack like any others.
  it("bin-packs by default: fills one node before the next (workloads of one replica each)", () => {
    const h = new SchedulerHarness();
    h.addNodes(3);
    for (let w = 0; w < 6; w++)
      h.addWorkload({ key: `ns/w${w}`, replicas: 1, resources: quarterNode });
    const plan = h.process();
    expect(plan.unschedulable).toEqual([]);
    h.applyPlan(plan);
    const perNode: Record<string, number> = {};
    for (const placement of plan.placements) {
      perNode[placement.node] = (perNode[placement.node] ?? 0) + 1;
    }
    expect(shape(perNode)).toEqual([4, 2]);
  });

  it("bin-packs one workload's replicas when minAvailable is 0", () => {
    const h = new SchedulerHarness();
    h.addNodes(3);
    h.addWorkload({ key: "ns/web", replicas: 6, minAvailable: 0, resources: quarterNode });
    const plan = h.process();
    expect(plan.unschedulable).toEqual([]);
    h.applyPlan(plan);
    expect(shape(h.countsByNode("ns/web"))).toEqual([4, 2]);
  });

  it("keeps packing across plans once the first is applied", () => {
    const h = new SchedulerHarness();
    h.addNodes(3);
    h.addWorkload({ key: "ns/web", replicas: 2, minAvailable: 0, resources: quarterNode });
    h.applyPlan(h.process(1));
    h.addWorkload({ key: "ns/web", replicas: 2, minAvailable: 0, resources: quarterNode });
    h.applyPlan(h.process(2));
    expect(shape(h.countsByNode("ns/web"))).toEqual([4]);
    expect(h.plans).toHaveLength(2);
    const [full] = Object.keys(h.countsByNode("ns/web"));
    expect(h.utilization(full!)).toMatchObject({ cpu: 1, memory: 1 });
  });

  it("spread strategy puts replicas on the least utilised nodes", () => {
    const h = new SchedulerHarness();
    h.addNodes(3);
    h.addWorkload({
      key: "ns/web",
      replicas: 3,
      resources: quarterNode,
      placement: { strategy: "spread" },
    });
    h.applyPlan(h.process());
    expect(shape(h.countsByNode("ns/web"))).toEqual([1, 1, 1]);
  });

  it("spreads 6 replicas over zones a, b, c as 2/2/2", () => {
    const h = new SchedulerHarness();
    h.addNodes(6, (i) => ({ zone: ["a", "b", "c"][i % 3]! }));
    h.addWorkload({
      key: "ns/web",
      replicas: 6,
      resources: quarterNode,
      placement: { spreadAcrossZones: true },
    });
    const plan = h.process();
    expect(plan.unschedulable).toEqual([]);
    h.applyPlan(plan);
    expect(h.countsByZone("ns/web")).toEqual({ a: 2, b: 2, c: 2 });
  });

  it("zone spread counts live replicas and fills the emptier zones first", () => {
    const h = new SchedulerHarness();
    const [a1] = h.addNodes(3, (i) => ({ zone: ["a", "b", "c"][i]! }));
    h.addExisting({ workloadKey: "ns/web", node: a1!.name });
    h.addExisting({ workloadKey: "ns/web", node: a1!.name });
    h.addWorkload({
      key: "ns/web",
      replicas: 4,
      resources: { cpuMillicores: 100, memoryMiB: 128 },
      placement: { spreadAcrossZones: true },
    });
    h.applyPlan(h.process());
    expect(h.countsByZone("ns/web")).toEqual({ a: 2, b: 2, c: 2 });
  });

  it("a full zone holds zone spread back rather than being dropped from it", () => {
    const h = new SchedulerHarness();
    h.addNodes(1, { zone: "a" });
    h.addNodes(1, { zone: "b" });
    h.addNodes(1, { zone: "c", capacity: { memoryMiB: 1024 } });
    h.addWorkload({
      key: "ns/web",
      replicas: 3,
      resources: quarterNode,
      placement: { spreadAcrossZones: true },
    });
    const plan = h.process();
    expect(plan.placements).toHaveLength(2);
    expect(plan.unschedulable).toHaveLength(1);
    expect(plan.unschedulable[0]!.message).toBe(
      "0/3 nodes available: 2 zone spread: zone above the least-filled zone, 1 Insufficient memory",
    );
  });

  it("anti-affinity keeps replicas of one workload on distinct nodes, across plans too", () => {
    const h = new SchedulerHarness();
    h.addNodes(3);
    h.addWorkload({
      key: "ns/web",
      replicas: 2,
      resources: quarterNode,
      placement: { antiAffinity: true },
    });
    h.applyPlan(h.process());
    h.addWorkload({
      key: "ns/web",
      replicas: 2,
      resources: quarterNode,
      placement: { antiAffinity: true },
    });
    const plan = h.process();
    h.applyPlan(plan);
    expect(shape(h.countsByNode("ns/web"))).toEqual([1, 1, 1]);
    expect(plan.unschedulable).toMatchObject([
      {
        workloadKey: "ns/web",
        rejections: { AntiAffinity: 3 },
        message: "0/3 nodes available: 3 anti-affinity: workload already on node",
      },
    ]);
  });

  it("uses a PreferNoSchedule node only when the others are full", () => {
    const h = new SchedulerHarness();
    h.addNodes(1, {
      name: "spot",
      taints: [{ key: "spot", value: "1", effect: "PreferNoSchedule" }],
    });
    h.addNodes(1, { name: "plain" });
    h.addWorkload({ key: "ns/web", replicas: 5, minAvailable: 0, resources: quarterNode });
    const plan = h.process();
    expect(plan.placements.map((p) => p.node)).toEqual([
      "plain",
      "plain",
      "plain",
      "plain",
      "spot",
    ]);
  });
});

describe("REQ-030 REQ-022 node-loss budget: spread a workload's replicas before stacking them (ADR 0034)", () => {
  /** The most replicas of a workload any node holds. */
  function most(h: SchedulerHarness, key: string): number {
    return Math.max(0, ...Object.values(h.countsByNode(key)));
  }

  it("3 replicas with minAvailable 2 on four nodes: no node holds two, so any one node's loss leaves 2", () => {
    const h = new SchedulerHarness();
    h.addNodes(4);
    h.addWorkload({ key: "ns/web", replicas: 3, minAvailable: 2, resources: quarterNode });
    const plan = h.process();
    h.applyPlan(plan);
    expect(shape(h.countsByNode("ns/web"))).toEqual([1, 1, 1]);
    expect(plan.placements.every((p) => p.overBudget === undefined)).toBe(true);
  });

  it("the issue's finding: 6 replicas with minAvailable 4 on three nodes hold at most 2 per node (a loss leaves 4)", () => {
    const h = new SchedulerHarness();
    h.addNodes(3);
    h.addWorkload({ key: "ns/web", replicas: 6, minAvailable: 4, resources: quarterNode });
    h.applyPlan(h.process());
    expect(shape(h.countsByNode("ns/web"))).toEqual([2, 2, 2]);
  });

  it("spreads before it stacks even within the budget: 6 replicas with minAvailable 4 take six nodes one each", () => {
    const h = new SchedulerHarness();
    h.addNodes(8);
    h.addWorkload({ key: "ns/web", replicas: 6, minAvailable: 4, resources: quarterNode });
    h.applyPlan(h.process());
    expect(shape(h.countsByNode("ns/web"))).toEqual([1, 1, 1, 1, 1, 1]);
  });

  it("still bin-packs among the nodes it spreads over: the fuller nodes get the replicas", () => {
    const h = new SchedulerHarness();
    h.addNodes(2, { allocated: { cpuMillicores: 2000, memoryMiB: 4096 } });
    h.addNodes(3);
    h.addWorkload({ key: "ns/web", replicas: 2, minAvailable: 1, resources: quarterNode });
    const plan = h.process();
    expect(plan.placements.map((p) => p.node).sort()).toEqual(["node-00000", "node-00001"]);
  });

  it("too few nodes: every replica is still placed, least-stacked first, and the plan says what it would take", () => {
    const h = new SchedulerHarness();
    h.addNodes(2);
    h.addWorkload({ key: "ns/web", replicas: 3, minAvailable: 2, resources: quarterNode });
    const plan = h.process();
    expect(plan.unschedulable).toEqual([]);
    h.applyPlan(plan);
    expect(shape(h.countsByNode("ns/web"))).toEqual([2, 1]);
    const over = plan.placements.filter((p) => p.overBudget !== undefined);
    expect(over).toHaveLength(1);
    expect(over[0]!.overBudget).toBe(
      `no node with room is within the node-loss budget (at most 1 of 3 per node keeps minAvailable 2): placed on ${over[0]!.node}, which now holds 2; surviving the loss of any node needs 3 nodes with room`,
    );
  });

  it("a node with no room is not a fallback: the budget never overrides resources", () => {
    const h = new SchedulerHarness();
    h.addNodes(1, { name: "full", allocated: { memoryMiB: 8192 } });
    h.addNodes(1, { name: "roomy" });
    h.addWorkload({ key: "ns/web", replicas: 2, minAvailable: 1, resources: quarterNode });
    const plan = h.process();
    expect(plan.placements.map((p) => p.node)).toEqual(["roomy", "roomy"]);
    expect(plan.placements[1]!.overBudget).toContain("placed on roomy, which now holds 2");
  });

  it("REQ-023 a rollout does not deadlock: replicas of the replaced revision (leaving) do not count", () => {
    const h = new SchedulerHarness();
    const nodes = h.addNodes(3);
    for (const node of nodes)
      h.addExisting({ workloadKey: "ns/web", node: node.name, leaving: true });
    // One surge replica of the new revision, then the rest as old ones go.
    h.addWorkload({ key: "ns/web", replicas: 3, minAvailable: 2, resources: quarterNode });
    const plan = h.process();
    expect(plan.unschedulable).toEqual([]);
    expect(plan.placements.every((p) => p.overBudget === undefined)).toBe(true);
    expect(new Set(plan.placements.map((p) => p.node)).size).toBe(3);
  });

  it("counts live replicas that stay: a node already holding one is passed over", () => {
    const h = new SchedulerHarness();
    h.addNodes(3, { allocated: { cpuMillicores: 0 } });
    h.addExisting({ workloadKey: "ns/web", node: "node-00000", resources: quarterNode });
    h.addWorkload({
      key: "ns/web",
      replicas: 2,
      totalReplicas: 3,
      minAvailable: 2,
      resources: quarterNode,
    });
    h.applyPlan(h.process());
    expect(h.countsByNode("ns/web")).toMatchObject({ "node-00000": 1 });
    expect(most(h, "ns/web")).toBe(1);
  });

  it("with zone spread: zones stay balanced first, and the budget spreads within a zone (ADR 0010 amended)", () => {
    const h = new SchedulerHarness();
    h.addNodes(2, { zone: "a" });
    h.addNodes(1, { zone: "b" });
    h.addWorkload({
      key: "ns/web",
      replicas: 4,
      minAvailable: 2,
      resources: quarterNode,
      placement: { spreadAcrossZones: true },
    });
    const plan = h.process();
    h.applyPlan(plan);
    expect(h.countsByZone("ns/web")).toEqual({ a: 2, b: 2 });
    // Budget 2: zone b's one node may hold both; zone a's two nodes take one each.
    expect(h.countsByNode("ns/web")).toEqual({ "node-00000": 1, "node-00001": 1, "node-00002": 2 });
    expect(plan.placements.every((p) => p.overBudget === undefined)).toBe(true);
  });

  it("a framework that puts a hard filter after a soft one is refused (the fallback relies on the order)", () => {
    const h = new SchedulerHarness();
    h.addNodes(1);
    h.addWorkload({ key: "ns/web", replicas: 1 });
    const [first, ...rest] = [...defaultFilters].reverse();
    expect(() =>
      scheduleWith(
        { filters: [first!, ...rest.reverse()], scores: [] },
        { snapshot: h.snapshot(), pending: h.pending, nowMs: 0, rng: seededRng(1) },
      ),
    ).toThrow("filter NodeReady runs after the soft filter NodeLossBudget");
  });
});

describe("REQ-021 unschedulable replicas say why", () => {
  it('counts rejections per filter: "0/3 nodes available: 3 Insufficient memory"', () => {
    const h = new SchedulerHarness();
    h.addNodes(3, { allocated: { memoryMiB: 7168 } });
    h.addWorkload({ key: "ns/db", replicas: 1, resources: { memoryMiB: 2048 } });
    const plan = h.process();
    expect(plan.placements).toEqual([]);
    expect(plan.unschedulable).toMatchObject([
      {
        replicaId: "ns/db-0",
        workloadKey: "ns/db",
        eligibleNodes: 0,
        rejections: { FitsResources: 3 },
        reasons: { "Insufficient memory": 3 },
        message: "0/3 nodes available: 3 Insufficient memory",
      },
    ]);
    // The near misses: where it would go if memory were freed.
    expect(plan.unschedulable[0]!.bestScores).toHaveLength(3);
  });

  it("names each cause with its count, most common first", () => {
    const h = new SchedulerHarness();
    h.addNodes(3, { zone: "a", capacity: { memoryMiB: 1024 } });
    h.addNodes(2, { zone: "b" });
    h.addWorkload({
      key: "ns/db",
      replicas: 1,
      resources: { memoryMiB: 2048 },
      placement: { zones: { required: ["a"], preferred: [] } },
    });
    expect(h.process().unschedulable).toMatchObject([
      {
        rejections: { FitsResources: 3, RegionZoneRequired: 2 },
        message: "0/5 nodes available: 3 Insufficient memory, 2 zone not in required [a]",
      },
    ]);
  });

  it("a workload bigger than any node is unschedulable with that reason", () => {
    const h = new SchedulerHarness();
    h.addNodes(4, (i) => ({ capacity: { cpuMillicores: 2000 * (i + 1) } }));
    h.addWorkload({ key: "ns/huge", replicas: 2, resources: { cpuMillicores: 64_000 } });
    const plan = h.process();
    expect(plan.placements).toEqual([]);
    expect(plan.unschedulable.map((u) => u.message)).toEqual([
      "0/4 nodes available: 4 Insufficient cpu",
      "0/4 nodes available: 4 Insufficient cpu",
    ]);
  });

  it("a driver no node offers is named in the reason", () => {
    const h = new SchedulerHarness();
    h.addNodes(3, { drivers: ["container"] });
    h.addWorkload({ key: "ns/job", replicas: 1, driver: "process" });
    expect(h.process().unschedulable).toMatchObject([
      {
        rejections: { DriverAvailable: 3 },
        message: '0/3 nodes available: 3 driver "process" not offered',
      },
    ]);
  });

  it("readiness, cordons and taints are counted as their own reasons", () => {
    const h = new SchedulerHarness();
    h.addNodes(2, { status: "NotReady" });
    h.addNodes(1, { cordoned: true });
    h.addNodes(1, { taints: [{ key: "gpu", value: "true", effect: "NoSchedule" }] });
    h.addWorkload({ key: "ns/web", replicas: 1 });
    expect(h.process().unschedulable[0]).toMatchObject({
      rejections: { NodeReady: 3, TaintToleration: 1 },
      message:
        "0/4 nodes available: 2 node NotReady, 1 node cordoned, 1 untolerated taint gpu=true:NoSchedule",
      bestScores: [],
    });
  });

  it("an empty cluster and an invalid request are reported, not thrown", () => {
    const empty = new SchedulerHarness();
    empty.addWorkload({ key: "ns/web", replicas: 1 });
    expect(empty.process().unschedulable[0]!.message).toBe(
      "0/0 nodes available: no nodes in the cluster",
    );
    const h = new SchedulerHarness();
    h.addNodes(2);
    h.addWorkload({ key: "ns/bad", replicas: 1, resources: { memoryMiB: -1 } });
    h.addWorkload({ key: "ns/nan", replicas: 1, resources: { cpuMillicores: Number.NaN } });
    const plan = h.process();
    expect(plan.placements).toEqual([]);
    expect(plan.unschedulable.map((u) => u.message)).toEqual([
      "invalid request: memoryMiB must be a finite number >= 0",
      "invalid request: cpuMillicores must be a finite number >= 0",
    ]);
  });
});

describe("REQ-021 plans are pure and reproducible", () => {
  function cluster(): SchedulerHarness {
    const h = new SchedulerHarness();
    h.addNodes(20, (i) => ({ zone: ["a", "b", "c"][i % 3]! }));
    h.addWorkload({ key: "ns/web", replicas: 5, resources: quarterNode });
    h.addWorkload({
      key: "ns/api",
      replicas: 5,
      resources: quarterNode,
      placement: { strategy: "spread", antiAffinity: true, spreadAcrossZones: true },
    });
    return h;
  }

  it("the same seed gives the same plan", () => {
    expect(cluster().process(7)).toEqual(cluster().process(7));
  });

  it("ties are broken by the injected rng, not by node order", () => {
    const firstNodes = new Set<string>();
    for (let seed = 1; seed <= 20; seed++) {
      firstNodes.add(cluster().process(seed).placements[0]!.node);
    }
    expect(firstNodes.size).toBeGreaterThan(1);
  });

  it("does not mutate the snapshot or the pending replicas", () => {
    const h = cluster();
    h.addExisting({ workloadKey: "ns/api", node: h.nodes[0]!.name });
    const snapshot = deepFreeze(h.snapshot());
    const pending = deepFreeze([...h.pending]);
    const before = structuredClone({ snapshot, pending });
    const plan = schedule({ snapshot, pending, nowMs: 0, rng: seededRng(3) });
    expect(plan.placements).toHaveLength(10);
    expect({ snapshot, pending }).toEqual(before);
  });

  it("places replicas in input order and reports the snapshot revision", () => {
    const h = cluster();
    const plan = h.process();
    expect(plan.snapshotRevision).toBe(h.revision);
    expect(plan.placements.map((p) => p.replicaId)).toEqual(h.pending.map((r) => r.id));
  });

  it("a stale node index in the snapshot cannot hide a replica from anti-affinity", () => {
    const nodes = [makeNode("n1"), makeNode("n2")];
    const snapshot: ClusterSnapshot = {
      revision: 1,
      nodes,
      replicas: [{ id: "old", workloadKey: "ns/web", node: "n1" }],
      // Stale: n1 moved, and the index does not know it.
      nodeIndexByName: new Map([["n1", 1]]),
    };
    const replica = makeReplica("r", "ns/web", { placement: { antiAffinity: true } });
    const plan = schedule({ snapshot, pending: [replica], nowMs: 0, rng: seededRng(1) });
    expect(plan.placements.map((p) => p.node)).toEqual(["n2"]);
  });
});

describe("REQ-021 framework robustness", () => {
  it("a score plugin returning NaN cannot leave a feasible replica unplaced", () => {
    const broken: ScorePlugin = { name: "Broken", score: () => Number.NaN };
    const plan = scheduleWith(
      { filters: defaultFilters, scores: [{ plugin: broken, weight: 1 }] },
      {
        snapshot: { revision: 1, nodes: [makeNode("n1"), makeNode("n2")], replicas: [] },
        pending: [makeReplica("r", "ns/w")],
        nowMs: 0,
        rng: seededRng(1),
      },
    );
    expect(plan.placements).toHaveLength(1);
  });
});

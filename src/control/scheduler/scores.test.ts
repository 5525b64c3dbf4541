import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { seededRng } from "../../lib/rng.js";
import type { ScorePlugin } from "./plugin.js";
import { schedule } from "./schedule.js";
import {
  cost,
  locality,
  networkPenalty,
  reliability,
  unknownCostScore,
  unknownEgressPenalty,
  utilizationBalance,
  weightedScores,
} from "./scores.js";
import {
  makeNode,
  makeReplica,
  type NodeTemplate,
  runScore,
  SchedulerHarness,
} from "./testing/harness.js";
import { defaultWeights, type Placement, type ScoreWeights } from "./types.js";

const plugins: ScorePlugin[] = [locality, reliability, cost, utilizationBalance, networkPenalty];

describe("REQ-021 score plugins", () => {
  it("every plugin stays within 0..100 whatever the node looks like", () => {
    const odd = fc.oneof(
      fc.double({ noNaN: false }),
      fc.constantFrom(0, -1, Number.NaN, Number.POSITIVE_INFINITY),
    );
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            cpu: odd,
            mem: odd,
            usedCpu: odd,
            usedMem: odd,
            egress: odd,
            rel: odd,
            price: fc.option(odd),
            preferTaints: fc.nat(6),
          }),
          { minLength: 1, maxLength: 5 },
        ),
        fc.record({ cpu: fc.nat(100_000), bw: fc.nat(100_000) }),
        fc.constantFrom("binpack", "spread"),
        (shapes, req, strategy) => {
          const nodes = shapes.map((s, i) =>
            makeNode(`n${i}`, {
              capacity: { cpuMillicores: s.cpu, memoryMiB: s.mem },
              allocated: { cpuMillicores: s.usedCpu, memoryMiB: s.usedMem },
              egressMbps: s.egress,
              reliability: s.rel,
              costPerHour: s.price ?? undefined,
              taints: Array.from({ length: s.preferTaints }, (_, k) => ({
                key: `t${k}`,
                value: "v",
                effect: "PreferNoSchedule" as const,
              })),
            }),
          );
          const replica = makeReplica("r", "ns/w", {
            resources: { cpuMillicores: req.cpu, bandwidthMbps: req.bw },
            placement: { strategy, zones: { required: [], preferred: ["a"] } },
          });
          for (const plugin of plugins) {
            for (let i = 0; i < nodes.length; i++) {
              const value = runScore(plugin, replica, nodes, i);
              expect(value, plugin.name).toBeGreaterThanOrEqual(0);
              expect(value, plugin.name).toBeLessThanOrEqual(100);
            }
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  const localityCases: [string, Partial<Placement>, NodeTemplate, number][] = [
    ["no preference: every node is local", {}, { region: "r1", zone: "a" }, 100],
    ["preferred zone matches", { zones: { required: [], preferred: ["a"] } }, { zone: "a" }, 100],
    ["preferred zone missed", { zones: { required: [], preferred: ["b"] } }, { zone: "a" }, 0],
    [
      "region matches but zone does not",
      { regions: { required: [], preferred: ["r1"] }, zones: { required: [], preferred: ["b"] } },
      { region: "r1", zone: "a" },
      50,
    ],
  ];
  it.each(localityCases)("Locality: %s", (_name, placement, node, expected) => {
    const replica = makeReplica("r", "ns/w", { placement });
    expect(runScore(locality, replica, [makeNode("n", node)])).toBe(expected);
  });

  it("Reliability is reliability × 100", () => {
    const replica = makeReplica("r", "ns/w");
    expect(runScore(reliability, replica, [makeNode("n", { reliability: 0.9 })])).toBeCloseTo(90);
    expect(runScore(reliability, replica, [makeNode("n", { reliability: 1 })])).toBe(100);
  });

  it("Cost: cheapest 100, dearest 0, normalised across candidates; unknown 50", () => {
    const replica = makeReplica("r", "ns/w");
    const nodes = [
      makeNode("cheap", { costPerHour: 0.1 }),
      makeNode("mid", { costPerHour: 0.3 }),
      makeNode("dear", { costPerHour: 0.5 }),
      makeNode("unknown"),
    ];
    expect(nodes.map((_, i) => runScore(cost, replica, nodes, i))).toEqual([
      100,
      50,
      0,
      unknownCostScore,
    ]);
    const same = [makeNode("x", { costPerHour: 1 }), makeNode("y", { costPerHour: 1 })];
    expect(runScore(cost, replica, same, 0)).toBe(unknownCostScore);
  });

  it("REQ-022 UtilizationBalance: bin-pack prefers the fuller node, spread the emptier", () => {
    const nodes = [
      makeNode("busy", { allocated: { cpuMillicores: 3000, memoryMiB: 6144 } }),
      makeNode("idle"),
    ];
    const binpack = makeReplica("r", "ns/w");
    const spread = makeReplica("r", "ns/w", { placement: { strategy: "spread" } });
    expect(runScore(utilizationBalance, binpack, nodes, 0)).toBeGreaterThan(
      runScore(utilizationBalance, binpack, nodes, 1),
    );
    expect(runScore(utilizationBalance, spread, nodes, 0)).toBeLessThan(
      runScore(utilizationBalance, spread, nodes, 1),
    );
    // Mean of cpu and memory after placement: (3500/4000 + 6656/8192) / 2.
    expect(runScore(utilizationBalance, binpack, nodes, 0)).toBeCloseTo(
      100 * ((3500 / 4000 + 6656 / 8192) / 2),
    );
  });

  it("NetworkPenalty: share of egress, unknown egress, untolerated PreferNoSchedule", () => {
    const replica = makeReplica("r", "ns/w", { resources: { bandwidthMbps: 250 } });
    const spot = { key: "spot", value: "true", effect: "PreferNoSchedule" } as const;
    expect(runScore(networkPenalty, replica, [makeNode("n", { egressMbps: 1000 })])).toBe(25);
    expect(runScore(networkPenalty, replica, [makeNode("n", { egressMbps: 0 })])).toBe(
      unknownEgressPenalty,
    );
    expect(
      runScore(networkPenalty, replica, [makeNode("n", { egressMbps: 1000, taints: [spot] })]),
    ).toBe(50);
    const tolerant = makeReplica("r", "ns/w", {
      resources: { bandwidthMbps: 250 },
      placement: { tolerations: [{ key: "spot", operator: "Exists" }] },
    });
    expect(
      runScore(networkPenalty, tolerant, [makeNode("n", { egressMbps: 1000, taints: [spot] })]),
    ).toBe(25);
  });
});

describe("REQ-021 weighted formula", () => {
  it("S = w_l·locality + w_r·reliability + w_c·cost + w_u·balance − w_n·penalty", () => {
    const h = new SchedulerHarness();
    h.addNodes(3, (i) => ({ reliability: 0.7 + i * 0.1, costPerHour: 0.2 * (i + 1) }));
    h.addWorkload({ key: "ns/web", replicas: 1 });
    const [placed] = h.process().placements;
    expect(placed).toBeDefined();
    const s = placed!.scores;
    const w = defaultWeights;
    expect(Object.keys(s).sort()).toEqual(
      ["Cost", "Locality", "NetworkPenalty", "Reliability", "UtilizationBalance"].sort(),
    );
    expect(placed!.score).toBeCloseTo(
      w.locality * s.Locality! +
        w.reliability * s.Reliability! +
        w.cost * s.Cost! +
        w.utilizationBalance * s.UtilizationBalance! -
        w.networkPenalty * s.NetworkPenalty!,
    );
  });

  it("the defaults are REQ-021's 0.3 / 0.25 / 0.15 / 0.2 / 0.1, penalty subtracted", () => {
    expect(defaultWeights).toEqual({
      locality: 0.3,
      reliability: 0.25,
      cost: 0.15,
      utilizationBalance: 0.2,
      networkPenalty: 0.1,
    });
    expect(weightedScores(defaultWeights).map((s) => [s.plugin.name, s.weight])).toEqual([
      ["Locality", 0.3],
      ["Reliability", 0.25],
      ["Cost", 0.15],
      ["UtilizationBalance", 0.2],
      ["NetworkPenalty", -0.1],
    ]);
  });

  it("changing the weights changes the winner", () => {
    // "steady" never flaps but is dear; "cheap" flaps and costs little.
    const nodes = [
      makeNode("steady", { reliability: 1, costPerHour: 1 }),
      makeNode("cheap", { reliability: 0.4, costPerHour: 0.1 }),
    ];
    const winner = (weights: ScoreWeights) =>
      schedule({
        snapshot: { revision: 1, nodes, replicas: [] },
        pending: [makeReplica("r", "ns/w")],
        weights,
        nowMs: 0,
        rng: { ...seededRng(0), next: () => 0 },
      }).placements[0]?.node;
    const zero = { locality: 0, reliability: 0, cost: 0, utilizationBalance: 0, networkPenalty: 0 };
    expect(winner({ ...zero, reliability: 1 })).toBe("steady");
    expect(winner({ ...zero, cost: 1 })).toBe("cheap");
    expect(winner({ ...defaultWeights, reliability: 0.6 })).toBe("steady");
    expect(winner({ ...defaultWeights, cost: 0.6 })).toBe("cheap");
  });

  it("a weight that is not a number counts as 0 instead of freezing every choice", () => {
    const h = new SchedulerHarness();
    h.addNodes(2);
    h.weights = { ...defaultWeights, cost: Number.NaN };
    h.addWorkload({ key: "ns/web", replicas: 1 });
    expect(h.process().placements).toHaveLength(1);
  });
});

/**
 * Properties of schedule() over random clusters and workloads. The checks below are an
 * independent oracle: they restate each rule from the product and style documents rather
 * than calling the plugins they test.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { seededRng } from "../../lib/rng.js";
import { schedule } from "./schedule.js";
import { makePlacement } from "./testing/harness.js";
import type {
  ClusterSnapshot,
  ExistingReplica,
  PendingReplica,
  Placement,
  Plan,
  Resources,
  SchedNode,
  Taint,
  Toleration,
} from "./types.js";

const numRuns = 300;
const zones = ["a", "b", "c", "d"];
const regions = ["r1", "r2"];
const taintPool: Taint[] = [
  { key: "gpu", value: "true", effect: "NoSchedule" },
  { key: "dedicated", value: "db", effect: "NoSchedule" },
  { key: "spot", value: "true", effect: "PreferNoSchedule" },
];
const tolerationPool: Toleration[] = [
  { key: "gpu", operator: "Exists" },
  { key: "dedicated", operator: "Equal", value: "db", effect: "NoSchedule" },
  { key: "dedicated", operator: "Equal", value: "web" },
  { key: "spot", operator: "Exists", effect: "PreferNoSchedule" },
];

const resourcesArb = (min: Resources, max: Resources) =>
  fc.record({
    cpuMillicores: fc.integer({ min: min.cpuMillicores, max: max.cpuMillicores }),
    memoryMiB: fc.integer({ min: min.memoryMiB, max: max.memoryMiB }),
    storageGiB: fc.integer({ min: min.storageGiB, max: max.storageGiB }),
    bandwidthMbps: fc.integer({ min: min.bandwidthMbps, max: max.bandwidthMbps }),
  });

const none: Resources = { cpuMillicores: 0, memoryMiB: 0, storageGiB: 0, bandwidthMbps: 0 };

/** Round numbers, so that requests often fill a node exactly (the ≤ edge of the fit). */
const roundResourcesArb = (unit: Resources, maxUnits: number) =>
  fc.record({
    cpuMillicores: fc.nat(maxUnits).map((k) => k * unit.cpuMillicores),
    memoryMiB: fc.nat(maxUnits).map((k) => k * unit.memoryMiB),
    storageGiB: fc.nat(maxUnits).map((k) => k * unit.storageGiB),
    bandwidthMbps: fc.nat(maxUnits).map((k) => k * unit.bandwidthMbps),
  });
const roundUnit: Resources = {
  cpuMillicores: 250,
  memoryMiB: 512,
  storageGiB: 5,
  bandwidthMbps: 25,
};

/** Mostly the common case, sometimes the odd one: the mix keeps plans non-trivial. */
const mostly = <T>(usual: fc.Arbitrary<T>, odd: fc.Arbitrary<T>) =>
  fc.oneof({ arbitrary: usual, weight: 4 }, { arbitrary: odd, weight: 1 });

// Healthy, roomy nodes most of the time, so plans place replicas and contend for room;
// every kind of bad node still shows up often enough to be tested.
const nodeArb = (name: string): fc.Arbitrary<SchedNode> =>
  fc
    .record({
      status: mostly(
        fc.constant("Ready" as const),
        fc.constantFrom("NotReady" as const, "Lost" as const, "Left" as const),
      ),
      cordoned: mostly(fc.constant(false), fc.constant(true)),
      region: fc.constantFrom(...regions),
      zone: fc.constantFrom(...zones),
      disk: fc.constantFrom("ssd", "hdd", undefined),
      taints: mostly(fc.constant<Taint[]>([]), fc.subarray(taintPool, { minLength: 1 })),
      drivers: mostly(
        fc.constant<string[]>(["container", "process"]),
        fc.subarray(["container", "process"], { maxLength: 1 }),
      ),
      capacity: fc.oneof(
        roundResourcesArb(roundUnit, 16),
        resourcesArb(
          { cpuMillicores: 1000, memoryMiB: 1024, storageGiB: 10, bandwidthMbps: 100 },
          { cpuMillicores: 8000, memoryMiB: 16384, storageGiB: 200, bandwidthMbps: 1000 },
        ),
        resourcesArb(none, {
          cpuMillicores: 1000,
          memoryMiB: 1024,
          storageGiB: 10,
          bandwidthMbps: 100,
        }),
      ),
      // Percent of capacity in use; above 100 the node is already overcommitted.
      loadPercent: fc.oneof(
        fc.constantFrom(0, 25, 50, 75),
        fc.integer({ min: 0, max: 80 }),
        fc.integer({ min: 80, max: 120 }),
      ),
      egressMbps: fc.constantFrom(0, 100, 1000),
      reliability: fc.double({ min: 0, max: 1, noNaN: true }),
      costPerHour: fc.option(fc.double({ min: 0, max: 2, noNaN: true }), { nil: undefined }),
    })
    .map((r): SchedNode => {
      const share = (x: number) => Math.floor((x * r.loadPercent) / 100);
      return {
        name,
        status: r.status,
        cordoned: r.cordoned,
        region: r.region,
        zone: r.zone,
        labels: r.disk === undefined ? {} : { disk: r.disk },
        taints: [...r.taints],
        drivers: [...r.drivers],
        capacity: r.capacity,
        allocated: {
          cpuMillicores: share(r.capacity.cpuMillicores),
          memoryMiB: share(r.capacity.memoryMiB),
          storageGiB: share(r.capacity.storageGiB),
          bandwidthMbps: share(r.capacity.bandwidthMbps),
        },
        egressMbps: r.egressMbps,
        reliability: r.reliability,
        costPerHour: r.costPerHour,
      };
    });

const placementArb: fc.Arbitrary<Placement> = fc
  .record({
    strategy: fc.constantFrom("binpack" as const, "spread" as const),
    requiredRegions: mostly(fc.constant<string[]>([]), fc.subarray(regions, { minLength: 1 })),
    preferredRegions: fc.subarray(regions, { maxLength: 1 }),
    requiredZones: mostly(fc.constant<string[]>([]), fc.subarray(zones, { minLength: 1 })),
    preferredZones: fc.subarray(zones, { maxLength: 2 }),
    antiAffinity: fc.boolean(),
    spreadAcrossZones: fc.boolean(),
    disk: mostly(fc.constant(undefined), fc.constant("ssd")),
    tolerations: fc.subarray(tolerationPool),
  })
  .map((r) =>
    makePlacement({
      strategy: r.strategy,
      regions: { required: r.requiredRegions, preferred: r.preferredRegions },
      zones: { required: r.requiredZones, preferred: r.preferredZones },
      antiAffinity: r.antiAffinity,
      spreadAcrossZones: r.spreadAcrossZones,
      nodeSelector: r.disk === undefined ? {} : { disk: r.disk },
      tolerations: r.tolerations,
    }),
  );

interface Scenario {
  snapshot: ClusterSnapshot;
  pending: PendingReplica[];
  seed: number;
}

const scenarioArb: fc.Arbitrary<Scenario> = fc
  .integer({ min: 1, max: 30 })
  .chain((nodeCount) =>
    fc.record({
      nodes: fc.tuple(...Array.from({ length: nodeCount }, (_, i) => nodeArb(`n${i}`))),
      workloads: fc.array(
        fc.record({
          replicas: fc.integer({ min: 1, max: 8 }),
          driver: fc.constantFrom("container" as const, "process" as const),
          resources: fc.oneof(
            roundResourcesArb(roundUnit, 4),
            resourcesArb(none, {
              cpuMillicores: 1000,
              memoryMiB: 2048,
              storageGiB: 10,
              bandwidthMbps: 50,
            }),
          ),
          placement: placementArb,
          // The availability ask: usually the spec default (replicas − 1), sometimes any
          // minAvailable up to replicas, sometimes none at all.
          minAvailable: mostly(
            fc.constant<number | "default">("default"),
            fc.oneof(fc.integer({ min: 0, max: 8 }), fc.constant<number | "none">("none")),
          ),
          // Live replicas, by node position; a position past the end is a vanished node.
          // Some are leaving (stopping, or of a revision a rollout replaces).
          existingOn: fc.array(
            fc.tuple(fc.nat(nodeCount), mostly(fc.constant(false), fc.constant(true))),
            {
              maxLength: 8,
            },
          ),
        }),
        { minLength: 1, maxLength: 4 },
      ),
      // Interleaves the workloads' replicas instead of queueing them workload by workload.
      order: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 32, maxLength: 32 }),
      seed: fc.nat(),
    }),
  )
  .map(({ nodes, workloads, order, seed }) => {
    const pending: PendingReplica[] = [];
    const replicas: ExistingReplica[] = [];
    workloads.forEach((w, k) => {
      const workloadKey = `ns/w${k}`;
      const total = w.replicas + w.existingOn.filter(([, leaving]) => !leaving).length;
      const availability =
        w.minAvailable === "none"
          ? undefined
          : {
              replicas: total,
              minAvailable:
                w.minAvailable === "default" ? total - 1 : Math.min(w.minAvailable, total),
            };
      for (let i = 0; i < w.replicas; i++) {
        pending.push({
          id: `${workloadKey}-${i}`,
          workloadKey,
          driver: w.driver,
          resources: w.resources,
          placement: w.placement,
          ...(availability ? { availability } : {}),
        });
      }
      w.existingOn.forEach(([at, leaving], i) => {
        replicas.push({
          id: `${workloadKey}-live-${i}`,
          workloadKey,
          node: `n${at}`,
          ...(leaving ? { leaving } : {}),
        });
      });
    });
    const keyed = pending.map((replica, i) => ({
      replica,
      key: order[i % order.length]! + i * 1e-9,
    }));
    keyed.sort((a, b) => a.key - b.key);
    return {
      snapshot: { revision: 7, nodes: [...nodes], replicas },
      pending: keyed.map((k) => k.replica),
      seed,
    };
  });

function run({ snapshot, pending, seed }: Scenario): Plan {
  return schedule({ snapshot, pending, nowMs: 0, rng: seededRng(seed) });
}

// --- the oracle: each rule restated ---

function tolerated(taint: Taint, tolerations: readonly Toleration[]): boolean {
  return tolerations.some(
    (t) =>
      (!t.effect || t.effect === taint.effect) &&
      (t.key === "" ? t.operator === "Exists" : t.key === taint.key) &&
      (t.operator === "Exists" || (t.value ?? "") === taint.value),
  );
}

/** Everything about the node and the replica's own constraints, nothing about occupancy. */
function policyAllows(node: SchedNode, replica: PendingReplica): boolean {
  const p = replica.placement;
  return (
    node.status === "Ready" &&
    !node.cordoned &&
    node.drivers.includes(replica.driver) &&
    node.taints.every((t) => t.effect !== "NoSchedule" || tolerated(t, p.tolerations)) &&
    (p.regions.required.length === 0 || p.regions.required.includes(node.region)) &&
    (p.zones.required.length === 0 || p.zones.required.includes(node.zone)) &&
    Object.entries(p.nodeSelector).every(([k, v]) => node.labels[k] === v)
  );
}

const dimensions = ["cpuMillicores", "memoryMiB", "storageGiB", "bandwidthMbps"] as const;

function byName(snapshot: ClusterSnapshot): Map<string, SchedNode> {
  return new Map(snapshot.nodes.map((n) => [n.name, n]));
}

function replicaById(pending: PendingReplica[]): Map<string, PendingReplica> {
  return new Map(pending.map((r) => [r.id, r]));
}

describe("REQ-021 / REQ-022 scheduler properties", () => {
  it("(1) a plan never overcommits a node it places on, in any dimension", () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const plan = run(scenario);
        const nodes = byName(scenario.snapshot);
        const replicas = replicaById(scenario.pending);
        const used = new Map<string, Resources>();
        for (const p of plan.placements) {
          const node = nodes.get(p.node)!;
          const sum = used.get(p.node) ?? { ...node.allocated };
          const request = replicas.get(p.replicaId)!.resources;
          for (const d of dimensions) sum[d] += request[d];
          used.set(p.node, sum);
        }
        for (const [name, sum] of used) {
          const capacity = nodes.get(name)!.capacity;
          for (const d of dimensions)
            expect(sum[d], `${name} ${d}`).toBeLessThanOrEqual(capacity[d]);
        }
      }),
      { numRuns },
    );
  });

  it("(2) never co-locates two replicas of an anti-affine workload, counting live ones", () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const plan = run(scenario);
        const replicas = replicaById(scenario.pending);
        const occupied = new Set(
          scenario.snapshot.replicas.map((r) => `${r.workloadKey}@${r.node}`),
        );
        for (const p of plan.placements) {
          const replica = replicas.get(p.replicaId)!;
          const slot = `${replica.workloadKey}@${p.node}`;
          if (replica.placement.antiAffinity) expect(occupied.has(slot), slot).toBe(false);
          occupied.add(slot);
        }
      }),
      { numRuns },
    );
  });

  /*
   * (3) The zone-spread guarantee, exactly. For a workload with spreadAcrossZones, its
   * domain is the set of zones holding a node that passes its policy filters (Ready, not
   * cordoned, driver, NoSchedule taints tolerated, required region/zone, node selector).
   * Count its live replicas on nodes of the snapshot plus this plan's placements, per zone
   * of the domain. Then: every placement lands in a domain zone whose count is the minimum
   * at that moment; so after the plan, max − min ≤ max(1, max − min before the plan) — in
   * particular a balanced workload (skew ≤ 1) stays balanced.
   */
  it("(3) zone spread: each placement goes to a least-filled zone of the domain; skew ≤ 1 holds", () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const plan = run(scenario);
        const nodes = byName(scenario.snapshot);
        const replicas = replicaById(scenario.pending);
        const spreadKeys = new Set(
          scenario.pending.filter((r) => r.placement.spreadAcrossZones).map((r) => r.workloadKey),
        );
        for (const key of spreadKeys) {
          const template = scenario.pending.find((r) => r.workloadKey === key)!;
          const domain = new Set(
            scenario.snapshot.nodes.filter((n) => policyAllows(n, template)).map((n) => n.zone),
          );
          const counts = new Map([...domain].map((z) => [z, 0]));
          for (const live of scenario.snapshot.replicas) {
            const zone = nodes.get(live.node)?.zone;
            if (live.workloadKey === key && zone !== undefined && counts.has(zone)) {
              counts.set(zone, counts.get(zone)! + 1);
            }
          }
          const skew = () =>
            counts.size === 0 ? 0 : Math.max(...counts.values()) - Math.min(...counts.values());
          const skewBefore = skew();
          for (const p of plan.placements) {
            if (replicas.get(p.replicaId)!.workloadKey !== key) continue;
            const zone = nodes.get(p.node)!.zone;
            expect(counts.has(zone), `zone ${zone} in domain`).toBe(true);
            expect(counts.get(zone)).toBe(Math.min(...counts.values()));
            counts.set(zone, counts.get(zone)! + 1);
          }
          expect(skew()).toBeLessThanOrEqual(Math.max(1, skewBefore));
        }
      }),
      { numRuns },
    );
  });

  it("(4) never places on a node that is down, cordoned, lacks the driver, or breaks policy", () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const plan = run(scenario);
        const nodes = byName(scenario.snapshot);
        const replicas = replicaById(scenario.pending);
        for (const p of plan.placements) {
          expect(policyAllows(nodes.get(p.node)!, replicas.get(p.replicaId)!), p.node).toBe(true);
        }
      }),
      { numRuns },
    );
  });

  it("(5) every pending replica is placed or reported unschedulable, never both", () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const plan = run(scenario);
        const outcomes = [
          ...plan.placements.map((p) => p.replicaId),
          ...plan.unschedulable.map((u) => u.replicaId),
        ].sort();
        expect(outcomes).toEqual(scenario.pending.map((r) => r.id).sort());
        // Each node is counted once, by the first filter that rejected it.
        const total = scenario.snapshot.nodes.length;
        for (const u of plan.unschedulable) {
          const sum = (record: Record<string, number>) =>
            Object.values(record).reduce((a, b) => a + b, 0);
          expect(sum(u.rejections)).toBe(total);
          expect(sum(u.reasons)).toBe(total);
          expect(u.message.startsWith(`0/${total} nodes available`)).toBe(true);
        }
        for (const p of plan.placements) {
          for (const value of Object.values(p.scores)) {
            expect(value).toBeGreaterThanOrEqual(0);
            expect(value).toBeLessThanOrEqual(100);
          }
        }
      }),
      { numRuns },
    );
  });

  it("(6) a replica is reported unschedulable only when no node could take it at that point", () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const plan = run(scenario);
        const { nodes: nodeList, replicas: live } = scenario.snapshot;
        const nodes = byName(scenario.snapshot);
        const placedOn = new Map(plan.placements.map((p) => [p.replicaId, p.node]));
        const used = new Map(nodeList.map((n) => [n.name, { ...n.allocated }]));
        const holders = live.filter((r) => nodes.has(r.node)).map((r) => [r.workloadKey, r.node]);
        const feasible = (node: SchedNode, replica: PendingReplica): boolean => {
          const p = replica.placement;
          if (!policyAllows(node, replica)) return false;
          const u = used.get(node.name)!;
          if (dimensions.some((d) => u[d] + replica.resources[d] > node.capacity[d])) return false;
          const mine = holders.filter(([key]) => key === replica.workloadKey).map(([, n]) => n!);
          if (p.antiAffinity && mine.includes(node.name)) return false;
          if (!p.spreadAcrossZones) return true;
          const domain = new Set(
            nodeList.filter((n) => policyAllows(n, replica)).map((n) => n.zone),
          );
          const count = (zone: string) => mine.filter((n) => nodes.get(n)!.zone === zone).length;
          return count(node.zone) === Math.min(...[...domain].map(count));
        };
        for (const replica of scenario.pending) {
          const at = placedOn.get(replica.id);
          if (at === undefined) {
            const taker = nodeList.find((n) => feasible(n, replica));
            expect(taker?.name, `${replica.id} reported unschedulable`).toBeUndefined();
            continue;
          }
          expect(feasible(nodes.get(at)!, replica), `${replica.id} on ${at}`).toBe(true);
          const u = used.get(at)!;
          for (const d of dimensions) u[d] += replica.resources[d];
          holders.push([replica.workloadKey, at]);
        }
      }),
      { numRuns },
    );
  });

  /*
   * (7) The node-loss budget (REQ-030, ADR 0034), restated. A workload asking
   * minAvailable m > 0 of r replicas may lose any one node and keep m ready only if no
   * node holds more than max(1, r − m) of its replicas that stay (live and not leaving,
   * plus this plan's). Replaying the plan in order: each of its placements goes to a node
   * holding the fewest such replicas among the nodes that could take it at that moment by
   * every hard rule (policy, resources, anti-affinity, zone spread) — spread before stack —
   * so it stays within the budget whenever any such node is; and exactly the placements
   * that could not are marked overBudget. Hence a workload within budget before a plan
   * that marks none of its placements is within budget after it.
   */
  it("(7) REQ-030 node-loss budget: least-stacked feasible node, within budget whenever capacity allows", () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const plan = run(scenario);
        const { nodes: nodeList, replicas: live } = scenario.snapshot;
        const nodes = byName(scenario.snapshot);
        const replicas = replicaById(scenario.pending);
        const used = new Map(nodeList.map((n) => [n.name, { ...n.allocated }]));
        // Every live replica, for anti-affinity and zone spread; the staying ones, for the budget.
        const holders = live.filter((r) => nodes.has(r.node)).map((r) => [r.workloadKey, r.node]);
        const staying = new Map<string, number>();
        const stayKey = (key: string, node: string) => `${key}@${node}`;
        for (const r of live) {
          if (!nodes.has(r.node) || r.leaving) continue;
          staying.set(
            stayKey(r.workloadKey, r.node),
            (staying.get(stayKey(r.workloadKey, r.node)) ?? 0) + 1,
          );
        }
        const budgetOf = (replica: PendingReplica): number | undefined => {
          const a = replica.availability;
          if (a === undefined || a.minAvailable <= 0 || a.replicas <= 0) return undefined;
          return Math.max(1, a.replicas - a.minAvailable);
        };
        const mostBefore = new Map<string, number>();
        for (const [key, count] of staying) {
          const workload = key.slice(0, key.indexOf("@"));
          mostBefore.set(workload, Math.max(mostBefore.get(workload) ?? 0, count));
        }
        const markedOver = new Set<string>();
        const hardFeasible = (node: SchedNode, replica: PendingReplica): boolean => {
          const p = replica.placement;
          if (!policyAllows(node, replica)) return false;
          const u = used.get(node.name)!;
          if (dimensions.some((d) => u[d] + replica.resources[d] > node.capacity[d])) return false;
          const mine = holders.filter(([key]) => key === replica.workloadKey).map(([, n]) => n!);
          if (p.antiAffinity && mine.includes(node.name)) return false;
          if (!p.spreadAcrossZones) return true;
          const domain = new Set(
            nodeList.filter((n) => policyAllows(n, replica)).map((n) => n.zone),
          );
          const count = (zone: string) => mine.filter((n) => nodes.get(n)!.zone === zone).length;
          return count(node.zone) === Math.min(...[...domain].map(count));
        };
        for (const placement of plan.placements) {
          const replica = replicas.get(placement.replicaId)!;
          const budget = budgetOf(replica);
          const onNode = (name: string) => staying.get(stayKey(replica.workloadKey, name)) ?? 0;
          if (budget !== undefined) {
            const takers = nodeList.filter((n) => hardFeasible(n, replica));
            const fewest = Math.min(...takers.map((n) => onNode(n.name)));
            expect(onNode(placement.node), `${replica.id} on ${placement.node}`).toBe(fewest);
            expect(placement.overBudget !== undefined, `${replica.id} overBudget`).toBe(
              fewest >= budget,
            );
            if (fewest >= budget) markedOver.add(replica.workloadKey);
          } else {
            expect(placement.overBudget).toBeUndefined();
          }
          const u = used.get(placement.node)!;
          for (const d of dimensions) u[d] += replica.resources[d];
          holders.push([replica.workloadKey, placement.node]);
          const key = stayKey(replica.workloadKey, placement.node);
          staying.set(key, (staying.get(key) ?? 0) + 1);
        }
        for (const replica of scenario.pending) {
          const budget = budgetOf(replica);
          if (budget === undefined || markedOver.has(replica.workloadKey)) continue;
          if ((mostBefore.get(replica.workloadKey) ?? 0) > budget) continue;
          for (const n of nodeList) {
            const count = staying.get(stayKey(replica.workloadKey, n.name)) ?? 0;
            expect(count, `${replica.workloadKey} on ${n.name}`).toBeLessThanOrEqual(budget);
          }
        }
      }),
      { numRuns },
    );
  });

  it("is deterministic for a seed and leaves its input untouched", () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const before = structuredClone(scenario);
        const first = run(scenario);
        expect(scenario).toEqual(before);
        expect(run(scenario)).toEqual(first);
      }),
      { numRuns },
    );
  });
});

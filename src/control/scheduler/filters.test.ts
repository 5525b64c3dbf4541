import { describe, expect, it } from "vitest";
import {
  antiAffinity,
  defaultFilters,
  driverAvailable,
  fitsResources,
  nodeLossBudget,
  nodeReady,
  nodeSelector,
  regionZoneRequired,
  taintToleration,
  zoneSpread,
} from "./filters.js";
import type { FilterPlugin } from "./plugin.js";
import { makeNode, makeReplica, type NodeTemplate, runFilter } from "./testing/harness.js";
import type { ExistingReplica, Placement, Resources } from "./types.js";

interface Case {
  name: string;
  node?: NodeTemplate;
  replica?: { resources?: Partial<Resources>; placement?: Partial<Placement>; driver?: "process" };
  /** undefined = passes; otherwise the exact reason. */
  reason?: string;
}

const gpuTaint = { key: "gpu", value: "true", effect: "NoSchedule" } as const;

const table: [FilterPlugin, Case[]][] = [
  [
    nodeReady,
    [
      { name: "Ready passes" },
      { name: "NotReady rejects", node: { status: "NotReady" }, reason: "node NotReady" },
      { name: "Lost rejects", node: { status: "Lost" }, reason: "node Lost" },
      { name: "Left rejects", node: { status: "Left" }, reason: "node Left" },
      { name: "cordoned rejects", node: { cordoned: true }, reason: "node cordoned" },
    ],
  ],
  [
    driverAvailable,
    [
      { name: "offered driver passes", node: { drivers: ["container"] } },
      {
        name: "missing driver rejects naming it",
        node: { drivers: ["container"] },
        replica: { driver: "process" },
        reason: 'driver "process" not offered',
      },
      {
        name: "no drivers at all rejects",
        node: { drivers: [] },
        reason: 'driver "container" not offered',
      },
    ],
  ],
  [
    fitsResources,
    [
      {
        name: "exact fit passes",
        node: {
          capacity: { cpuMillicores: 1000, memoryMiB: 1024 },
          allocated: { cpuMillicores: 500 },
        },
        replica: { resources: { cpuMillicores: 500, memoryMiB: 1024 } },
      },
      {
        name: "cpu short by one rejects",
        node: { capacity: { cpuMillicores: 1000 }, allocated: { cpuMillicores: 501 } },
        replica: { resources: { cpuMillicores: 500 } },
        reason: "Insufficient cpu",
      },
      {
        name: "memory short rejects",
        node: { capacity: { memoryMiB: 1024 } },
        replica: { resources: { memoryMiB: 2048 } },
        reason: "Insufficient memory",
      },
      {
        name: "storage short rejects",
        node: { capacity: { storageGiB: 10 }, allocated: { storageGiB: 9.5 } },
        replica: { resources: { storageGiB: 1 } },
        reason: "Insufficient storage",
      },
      {
        name: "bandwidth short rejects",
        node: { capacity: { bandwidthMbps: 100 } },
        replica: { resources: { bandwidthMbps: 150 } },
        reason: "Insufficient bandwidth",
      },
      {
        name: "an overcommitted node takes not even an empty request",
        node: { capacity: { cpuMillicores: 1000 }, allocated: { cpuMillicores: 1200 } },
        replica: {
          resources: { cpuMillicores: 0, memoryMiB: 0, storageGiB: 0, bandwidthMbps: 0 },
        },
        reason: "Insufficient cpu",
      },
      {
        name: "unknown (NaN) capacity rejects",
        node: { capacity: { memoryMiB: Number.NaN } },
        reason: "Insufficient memory",
      },
    ],
  ],
  [
    taintToleration,
    [
      { name: "untainted passes" },
      {
        name: "untolerated NoSchedule rejects naming the taint",
        node: { taints: [gpuTaint] },
        reason: "untolerated taint gpu=true:NoSchedule",
      },
      {
        name: "Equal toleration passes",
        node: { taints: [gpuTaint] },
        replica: { placement: { tolerations: [{ key: "gpu", operator: "Equal", value: "true" }] } },
      },
      {
        name: "Equal with another value rejects",
        node: { taints: [gpuTaint] },
        replica: { placement: { tolerations: [{ key: "gpu", operator: "Equal", value: "no" }] } },
        reason: "untolerated taint gpu=true:NoSchedule",
      },
      {
        name: "Exists on the key passes",
        node: { taints: [gpuTaint] },
        replica: { placement: { tolerations: [{ key: "gpu", operator: "Exists" }] } },
      },
      {
        name: "Exists with empty key tolerates everything",
        node: { taints: [gpuTaint, { key: "x", value: "y", effect: "NoSchedule" }] },
        replica: { placement: { tolerations: [{ key: "", operator: "Exists" }] } },
      },
      {
        name: "toleration for another effect rejects",
        node: { taints: [gpuTaint] },
        replica: {
          placement: {
            tolerations: [{ key: "gpu", operator: "Exists", effect: "PreferNoSchedule" }],
          },
        },
        reason: "untolerated taint gpu=true:NoSchedule",
      },
      {
        name: "PreferNoSchedule is a score matter, not a filter one",
        node: { taints: [{ key: "spot", value: "true", effect: "PreferNoSchedule" }] },
      },
    ],
  ],
  [
    regionZoneRequired,
    [
      { name: "no requirement passes" },
      {
        name: "required region matches",
        node: { region: "eu" },
        replica: { placement: { regions: { required: ["eu", "us"], preferred: [] } } },
      },
      {
        name: "region outside the required list rejects",
        node: { region: "us" },
        replica: { placement: { regions: { required: ["eu"], preferred: [] } } },
        reason: "region not in required [eu]",
      },
      {
        name: "zone outside the required list rejects",
        node: { zone: "c" },
        replica: { placement: { zones: { required: ["a", "b"], preferred: [] } } },
        reason: "zone not in required [a, b]",
      },
      {
        name: "preferred-only never rejects",
        node: { zone: "c" },
        replica: { placement: { zones: { required: [], preferred: ["a"] } } },
      },
    ],
  ],
  [
    nodeSelector,
    [
      { name: "empty selector passes", node: { labels: { disk: "hdd" } } },
      {
        name: "matching labels pass",
        node: { labels: { disk: "ssd", tier: "edge" } },
        replica: { placement: { nodeSelector: { disk: "ssd" } } },
      },
      {
        name: "a different value rejects",
        node: { labels: { disk: "hdd" } },
        replica: { placement: { nodeSelector: { disk: "ssd" } } },
        reason: "node selector {disk=ssd} not matched",
      },
      {
        name: "a missing label rejects",
        replica: { placement: { nodeSelector: { tier: "core", disk: "ssd" } } },
        reason: "node selector {disk=ssd,tier=core} not matched",
      },
    ],
  ],
];

describe("REQ-021 filter plugins", () => {
  for (const [filter, cases] of table) {
    describe(filter.name, () => {
      it.each(cases)("$name", ({ node, replica, reason }) => {
        const status = runFilter(filter, makeReplica("r-1", "ns/web", replica), [
          makeNode("n1", node),
        ]);
        if (reason === undefined) expect(status).toEqual({ ok: true });
        else expect(status).toEqual({ ok: false, reason });
      });
    });
  }

  describe("AntiAffinity", () => {
    const nodes = [makeNode("n1"), makeNode("n2")];
    const existing: ExistingReplica[] = [{ id: "old", workloadKey: "ns/web", node: "n1" }];
    const anti = makeReplica("r-1", "ns/web", { placement: { antiAffinity: true } });

    it.each([
      ["a node holding the workload rejects", anti, 0, "anti-affinity: workload already on node"],
      ["a node without it passes", anti, 1, undefined],
      [
        "another workload's replica does not count",
        makeReplica("r-2", "ns/api", { placement: { antiAffinity: true } }),
        0,
        undefined,
      ],
      ["without anti-affinity co-location is fine", makeReplica("r-3", "ns/web"), 0, undefined],
    ] as const)("%s", (_name, replica, nodeIndex, reason) => {
      const status = runFilter(antiAffinity, replica, nodes, nodeIndex, existing);
      expect(status.ok ? undefined : status.reason).toBe(reason);
    });
  });

  describe("ZoneSpread", () => {
    const spread = makeReplica("r-1", "ns/web", { placement: { spreadAcrossZones: true } });

    it("rejects a zone above the least-filled one and passes the least-filled", () => {
      const nodes = [makeNode("a1", { zone: "a" }), makeNode("b1", { zone: "b" })];
      const existing = [{ id: "x", workloadKey: "ns/web", node: "a1" }];
      expect(runFilter(zoneSpread, spread, nodes, 0, existing)).toEqual({
        ok: false,
        reason: "zone spread: zone above the least-filled zone",
      });
      expect(runFilter(zoneSpread, spread, nodes, 1, existing)).toEqual({ ok: true });
    });

    it("ignores zones with no node the workload may use (the domain)", () => {
      const nodes = [
        makeNode("a1", { zone: "a" }),
        makeNode("b1", { zone: "b", status: "NotReady" }),
        makeNode("c1", { zone: "c", taints: [gpuTaint] }),
      ];
      const existing = [{ id: "x", workloadKey: "ns/web", node: "a1" }];
      expect(runFilter(zoneSpread, spread, nodes, 0, existing)).toEqual({ ok: true });
    });

    it("passes everything when spread is not asked for", () => {
      const nodes = [makeNode("a1", { zone: "a" }), makeNode("b1", { zone: "b" })];
      const existing = [{ id: "x", workloadKey: "ns/web", node: "a1" }];
      expect(runFilter(zoneSpread, makeReplica("r", "ns/web"), nodes, 0, existing)).toEqual({
        ok: true,
      });
    });
  });

  describe("NodeLossBudget (REQ-030, ADR 0034)", () => {
    const nodes = [makeNode("n1"), makeNode("n2")];
    const threeOfTwo = { replicas: 3, minAvailable: 2 };
    const replica = makeReplica("r-1", "ns/web", { availability: threeOfTwo });
    const sixOfFour = makeReplica("r-2", "ns/web", {
      availability: { replicas: 6, minAvailable: 4 },
    });
    const onN1 = (leaving = false): ExistingReplica => ({
      id: `x-${leaving}`,
      workloadKey: "ns/web",
      node: "n1",
      ...(leaving ? { leaving } : {}),
    });

    it.each([
      [
        "a node holding the budget (1 of 3 with minAvailable 2) rejects",
        replica,
        0,
        [onN1()],
        "node-loss budget full (at most 1 of 3 per node keeps minAvailable 2)",
      ],
      ["a node holding none passes", replica, 1, [onN1()], undefined],
      ["6 replicas with minAvailable 4 allow 2 per node", sixOfFour, 0, [onN1()], undefined],
      [
        "…and not 3",
        sixOfFour,
        0,
        [onN1(), { id: "y", workloadKey: "ns/web", node: "n1" }],
        "node-loss budget full (at most 2 of 6 per node keeps minAvailable 4)",
      ],
      [
        "minAvailable equal to replicas still allows 1 per node (not 0)",
        makeReplica("r-3", "ns/web", { availability: { replicas: 2, minAvailable: 2 } }),
        1,
        [onN1()],
        undefined,
      ],
      [
        "a leaving replica (stopping, or of a replaced revision) does not count",
        replica,
        0,
        [onN1(true)],
        undefined,
      ],
      [
        "another workload's replica does not count",
        makeReplica("r-4", "ns/api", { availability: threeOfTwo }),
        0,
        [onN1()],
        undefined,
      ],
      [
        "minAvailable 0 asks nothing of a node loss",
        makeReplica("r-5", "ns/web", { availability: { replicas: 3, minAvailable: 0 } }),
        0,
        [onN1()],
        undefined,
      ],
      ["no availability ask: no budget", makeReplica("r-6", "ns/web"), 0, [onN1()], undefined],
    ] as const)("%s", (_name, candidate, nodeIndex, existing, reason) => {
      const status = runFilter(nodeLossBudget, candidate, nodes, nodeIndex, [...existing]);
      expect(status.ok ? undefined : status.reason).toBe(reason);
    });

    it("is soft, and runs after every hard filter", () => {
      expect(nodeLossBudget.soft).toBe(true);
      const softAt = defaultFilters.findIndex((f) => f.soft === true);
      expect(defaultFilters.slice(softAt).every((f) => f.soft === true)).toBe(true);
    });
  });

  it("runs policy filters before occupancy ones (zone spread relies on it)", () => {
    const kinds = defaultFilters.map((f) => f.kind);
    expect(kinds.lastIndexOf("policy")).toBeLessThan(kinds.indexOf("occupancy"));
  });
});

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { seededRng } from "../../lib/rng.js";
import { probePlacement } from "../scheduler/explain.js";
import { schedule } from "../scheduler/schedule.js";
import { makeNode, makeReplica } from "../scheduler/testing/harness.js";
import type { ExistingReplica, SchedNode } from "../scheduler/types.js";
import {
  decideRebalance,
  type RebalanceDecision,
  type RebalanceInput,
  type RebalanceReplica,
  type RebalanceWorkload,
} from "./rebalancer.js";
import type { ReplicaRecord } from "./records.js";
import { reconcileWorkload } from "./workloadReconciler.js";

const options = { cooldownMs: 30_000, surgeTimeoutMs: 120_000 };

function workload(overrides: Partial<RebalanceWorkload> = {}): RebalanceWorkload {
  return {
    revision: 1,
    replicas: 3,
    minAvailable: 2,
    spreadAcrossZones: false,
    enabled: true,
    ...overrides,
  };
}

function replica(id: string, node: string, extra: Partial<RebalanceReplica> = {}) {
  return { id, node, zone: node.slice(0, 1), revision: 1, ready: true, ...extra };
}

function decide(overrides: Partial<RebalanceInput>): RebalanceDecision {
  return decideRebalance({
    workload: workload(),
    replicas: [],
    nowMs: 1_000_000,
    lastMoveStartedAtMs: undefined,
    findTarget: () => undefined,
    readyNodes: 3,
    readyZones: 3,
    options,
    ...overrides,
  });
}

describe("REQ-030 REQ-022 rebalancer decisions (ADR 0035)", () => {
  // Nodes named by zone: a1 and a2 are in zone a, c1 in zone c.
  const stacked = [replica("x", "a1"), replica("y", "a1"), replica("z", "b1")];

  it("REQ-030 starts a replacement on the node the scheduler picks when a node holds more than its budget", () => {
    let asked = 0;
    const decision = decide({
      replicas: stacked,
      findTarget: () => {
        asked++;
        return { node: "c1", zone: "c" };
      },
    });
    expect(asked).toBe(1);
    expect(decision).toEqual({
      type: "start",
      replaces: "x",
      fromNode: "a1",
      toNode: "c1",
      reason:
        "node a1 holds more than the node-loss budget (at most 1 of 3 per node keeps minAvailable 2): moving one to c1",
    });
  });

  it("does nothing when the scheduler has no node for one more", () => {
    expect(decide({ replicas: stacked })).toEqual({ type: "none" });
  });

  it("evens out even when too few nodes leave every one over budget (3/1 → 2/2 on two nodes)", () => {
    const replicas = [
      replica("w", "a1"),
      replica("x", "a1"),
      replica("y", "a1"),
      replica("z", "b1"),
    ];
    expect(
      decide({
        replicas,
        workload: workload({ replicas: 4, minAvailable: 3 }),
        readyNodes: 2,
        findTarget: () => ({ node: "b1", zone: "b" }),
      }),
    ).toMatchObject({ type: "start", replaces: "w", fromNode: "a1", toNode: "b1" });
    // 2/2 is as good as two nodes allow: a move to either would make it worse.
    const even = [replica("w", "a1"), replica("x", "a1"), replica("y", "b1"), replica("z", "b1")];
    expect(
      decide({
        replicas: even,
        workload: workload({ replicas: 4, minAvailable: 3 }),
        readyNodes: 2,
        findTarget: () => ({ node: "b1", zone: "b" }),
      }),
    ).toEqual({ type: "none" });
  });

  it("never asks the scheduler when no move could help", () => {
    const spread = [replica("x", "a1"), replica("y", "b1"), replica("z", "c1")];
    const findTarget = () => {
      throw new Error("asked");
    };
    expect(decide({ replicas: spread, findTarget })).toEqual({ type: "none" });
    // Two per node on as many Ready nodes as it uses: nowhere better to go.
    const even = [...spread, replica("u", "a1"), replica("v", "b1"), replica("w", "c1")];
    expect(
      decide({ replicas: even, workload: workload({ replicas: 6, minAvailable: 4 }), findTarget }),
    ).toEqual({ type: "none" });
  });

  it("does nothing unless the workload is steady and healthy, within the cool-down, or when turned off", () => {
    const findTarget = () => ({ node: "c1", zone: "c" });
    const notReady = [replica("x", "a1", { ready: false }), ...stacked.slice(1)];
    const pending = [...stacked.slice(0, 2), replica("z", "")];
    const oldRevision = [...stacked.slice(0, 2), replica("z", "b1", { revision: 0 })];
    const tooMany = [...stacked, replica("w", "b1")];
    for (const replicas of [notReady, pending, oldRevision, tooMany, stacked.slice(1)]) {
      expect(decide({ replicas, findTarget })).toEqual({ type: "none" });
    }
    expect(
      decide({ replicas: stacked, findTarget, lastMoveStartedAtMs: 1_000_000 - 29_999 }),
    ).toEqual({
      type: "none",
    });
    expect(
      decide({ replicas: stacked, findTarget, lastMoveStartedAtMs: 1_000_000 - 30_000 }).type,
    ).toBe("start");
    expect(
      decide({ replicas: stacked, findTarget, workload: workload({ enabled: false }) }),
    ).toEqual({
      type: "none",
    });
  });

  it("restores zone balance after a zone returns (spreadAcrossZones): 2/1/0 → a move into zone c", () => {
    const replicas = [replica("x", "a1"), replica("y", "a2"), replica("z", "b1")];
    expect(
      decide({
        replicas,
        workload: workload({ spreadAcrossZones: true }),
        readyNodes: 4,
        findTarget: () => ({ node: "c1", zone: "c" }),
      }),
    ).toMatchObject({
      type: "start",
      replaces: "x",
      toNode: "c1",
      reason: "zones are unbalanced (spreadAcrossZones): moving one from a1 to c1 in zone c",
    });
  });

  describe("a move under way", () => {
    const move = { replaces: "x", fromNode: "a1", startedAtMs: 1_000_000, reason: "budget" };
    const surge = (extra: Partial<RebalanceReplica>) =>
      replica("s", "c1", { move: { ...move }, ...extra });

    it("waits while the replacement is not ready, then stops the over-stacked replica", () => {
      const now = 1_000_000 + 5_000;
      expect(decide({ nowMs: now, replicas: [...stacked, surge({ ready: false })] })).toEqual({
        type: "none",
      });
      expect(decide({ nowMs: now, replicas: [...stacked, surge({})] })).toEqual({
        type: "finish",
        surge: "s",
        retire: "x",
        fromNode: "a1",
        toNode: "c1",
        reason: "budget",
      });
    });

    it("REQ-030 never stops a replica that would leave fewer than minAvailable ready", () => {
      const others = [
        replica("x", "a1"),
        replica("y", "a1", { ready: false }),
        replica("z", "b1", { ready: false }),
      ];
      // Ready: x and the surge; stopping x leaves 1 < 2.
      expect(decide({ replicas: [...others, surge({})], nowMs: 1_010_000 })).toEqual({
        type: "none",
      });
      // Nor does giving up: the ready replacement is kept as an ordinary replica, and the
      // reconciler's scale-down removes a not-ready one.
      expect(decide({ replicas: [...others, surge({})], nowMs: 1_000_000 + 120_001 })).toEqual({
        type: "finish",
        surge: "s",
        retire: undefined,
        fromNode: "a1",
        toNode: "c1",
        reason:
          "stopping a replica would have left fewer than minAvailable 2 ready for 120s; kept, since stopping it would leave fewer than minAvailable 2 ready",
      });
      // With enough others ready again, a timed-out replacement simply goes.
      const recovered = [
        replica("x", "a1"),
        replica("y", "a1", { ready: false }),
        replica("z", "b1"),
      ];
      expect(
        decide({ replicas: [...recovered, surge({ ready: false })], nowMs: 1_000_000 + 120_001 }),
      ).toMatchObject({ type: "abandon" });
    });

    it("stops a different replica when that leaves the better spread", () => {
      // The move meant x (on a1), but y on a1 and the surge's landing make stopping y no
      // better than x: the meant one goes on a tie.
      expect(decide({ replicas: [...stacked, surge({})] })).toMatchObject({ retire: "x" });
      // Landed on b1 instead of c1: stopping x leaves a1:1, b1:2 — no better. Give it up.
      expect(decide({ replicas: [...stacked, surge({ node: "b1", zone: "b" })] })).toEqual({
        type: "abandon",
        surge: "s",
        reason: "the replacement landed on b1, where it would not improve the spread",
      });
    });

    it("gives up a replacement that was never placed or never became ready", () => {
      const late = 1_000_000 + 120_001;
      expect(
        decide({ nowMs: late, replicas: [...stacked, surge({ node: "", zone: "" })] }),
      ).toEqual({
        type: "abandon",
        surge: "s",
        reason: "the replacement was not placed within 120s",
      });
      expect(decide({ nowMs: late, replicas: [...stacked, surge({ ready: false })] })).toEqual({
        type: "abandon",
        surge: "s",
        reason: "the replacement on c1 was not ready within 120s",
      });
    });

    it("finishes without a stop when the replaced replica went meanwhile, and gives up when turned off", () => {
      expect(decide({ replicas: [stacked[1]!, stacked[2]!, surge({})] })).toMatchObject({
        type: "finish",
        retire: undefined,
        reason: "replica x went meanwhile",
      });
      expect(
        decide({ replicas: [...stacked, surge({})], workload: workload({ enabled: false }) }),
      ).toMatchObject({ type: "abandon", reason: "rebalancing was turned off" });
    });
  });
});

// ---------------------------------------------------------------------------------------------
// A simulated cluster: the real reconciler, rebalancer and scheduler, with an oracle that
// restates the promises rather than calling the code it tests.

interface SimReplica extends ReplicaRecord {
  readyAtMs: number;
}

type Step = [elapsedMs: number, breaks: boolean, crashes: number[]];

interface Scenario {
  nodes: SchedNode[];
  replicas: number;
  minAvailable: number;
  spreadAcrossZones: boolean;
  initial: number[];
  /**
   * Per step: ms that pass, whether a replica started now turns out broken (never ready),
   * and which replicas (by position) stop being ready for a minute (crashes).
   */
  steps: Step[];
  seed: number;
}

const scenarioArb: fc.Arbitrary<Scenario> = fc
  .record({
    nodeCount: fc.integer({ min: 1, max: 6 }),
    zoneCount: fc.integer({ min: 1, max: 3 }),
    replicas: fc.integer({ min: 1, max: 6 }),
    minAvailableShare: fc.double({ min: 0, max: 1, noNaN: true }),
    spreadAcrossZones: fc.boolean(),
    initial: fc.array(fc.nat(5), { minLength: 6, maxLength: 6 }),
    steps: fc.array(
      fc.tuple(
        fc.integer({ min: 0, max: 40_000 }),
        fc.boolean(),
        fc.array(fc.nat(7), { maxLength: 2 }),
      ),
      {
        minLength: 60,
        maxLength: 60,
      },
    ),
    seed: fc.nat(),
  })
  .map((r) => ({
    nodes: Array.from({ length: r.nodeCount }, (_, i) =>
      makeNode(`n${i}`, { zone: `z${i % r.zoneCount}` }),
    ),
    replicas: r.replicas,
    minAvailable: Math.floor(r.minAvailableShare * r.replicas),
    spreadAcrossZones: r.spreadAcrossZones,
    initial: r.initial.slice(0, r.replicas).map((k) => k % r.nodeCount),
    steps: r.steps,
    seed: r.seed,
  }));

function zoneOfNode(scenario: Scenario, node: string): string {
  return scenario.nodes.find((n) => n.name === node)?.zone ?? "";
}

function simulate(scenario: Scenario) {
  const rng = seededRng(scenario.seed);
  const zoneOf = new Map(scenario.nodes.map((n) => [n.name, n.zone]));
  const intent = {
    revision: 1,
    replicas: scenario.replicas,
    minAvailable: scenario.minAvailable,
    maxSurge: 1,
    maxUnavailable: 0,
  };
  const availability = { replicas: scenario.replicas, minAvailable: scenario.minAvailable };
  const placement = { spreadAcrossZones: scenario.spreadAcrossZones };
  let nowMs = 1_000_000;
  let seq = 0;
  let replicas: SimReplica[] = scenario.initial.map((k) => ({
    id: `r${seq++}`,
    namespace: "ns",
    workload: "web",
    revision: 1,
    node: `n${k}`,
    desired: "Running",
    resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0, bandwidthMbps: 0 },
    createdAtMs: 0,
    readyAtMs: 0,
  }));
  const broken = new Set<string>();
  const downUntilMs = new Map<string, number>();
  const isReady = (r: SimReplica) =>
    r.node !== "" &&
    !broken.has(r.id) &&
    nowMs >= r.readyAtMs &&
    nowMs >= (downUntilMs.get(r.id) ?? 0);
  const existing = (): ExistingReplica[] =>
    replicas
      .filter((r) => r.node !== "")
      .map((r) => ({ id: r.id, workloadKey: "ns/web", node: r.node }));
  const log: {
    decision: RebalanceDecision;
    readyBefore: number;
    readyAfter: number;
    atMs: number;
  }[] = [];
  const reconcilerActions: ("create" | "stop" | "forget" | "finishMove")[] = [];
  let lastStartMs: number | undefined;

  for (const [elapsedMs, breaks, crashes] of scenario.steps) {
    nowMs += elapsedMs;
    for (const k of crashes) downUntilMs.set(replicas[k % replicas.length]!.id, nowMs + 60_000);
    // The scheduler places what is pending.
    const pending = replicas.filter((r) => r.node === "");
    if (pending.length > 0) {
      const plan = schedule({
        snapshot: { revision: 1, nodes: scenario.nodes, replicas: existing() },
        pending: pending.map((r) => ({
          ...makeReplica(r.id, "ns/web", { placement, availability }),
        })),
        nowMs,
        rng,
      });
      for (const p of plan.placements) {
        const placed = replicas.find((r) => r.id === p.replicaId)!;
        placed.node = p.node;
        placed.readyAtMs = nowMs + 1_000;
      }
    }
    const records = replicas.map((r) => ({
      ...r,
      status: isReady(r)
        ? {
            phase: "Running" as const,
            ready: true,
            restarts: 0,
            reason: "",
            message: "",
            hostPorts: {},
            driver: "process",
            reportedAtMs: nowMs,
          }
        : undefined,
    }));
    const readyBefore = replicas.filter(isReady).length;
    // The reconciler runs first, as in a controller pass, and its actions apply.
    const reconciled = reconcileWorkload({
      workload: intent,
      replicas: records,
      nodeStatus: () => "Ready",
      newReplicaId: () => `r${seq++}`,
    });
    for (const action of reconciled.actions) {
      reconcilerActions.push(action.type);
      if (action.type === "stop") replicas = replicas.filter((r) => r.id !== action.id);
    }
    const decision = decideRebalance({
      workload: { ...intent, spreadAcrossZones: scenario.spreadAcrossZones, enabled: true },
      replicas: replicas.map((r) => ({
        id: r.id,
        node: r.node,
        zone: zoneOf.get(r.node) ?? "",
        revision: r.revision,
        ready: isReady(r),
        ...(r.move ? { move: r.move } : {}),
      })),
      nowMs,
      lastMoveStartedAtMs: lastStartMs,
      findTarget: () => {
        const probe = probePlacement(
          { revision: 1, nodes: scenario.nodes, replicas: existing() },
          makeReplica("probe", "ns/web", { placement, availability }),
        );
        return probe ? { node: probe.node, zone: zoneOf.get(probe.node)! } : undefined;
      },
      readyNodes: scenario.nodes.length,
      readyZones: new Set(scenario.nodes.map((n) => n.zone)).size,
      options: { cooldownMs: 30_000, surgeTimeoutMs: 120_000 },
    });
    if (decision.type === "start") {
      lastStartMs = nowMs;
      const id = `r${seq++}`;
      if (breaks) broken.add(id);
      replicas.push({
        id,
        namespace: "ns",
        workload: "web",
        revision: 1,
        node: "",
        desired: "Running",
        resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0, bandwidthMbps: 0 },
        createdAtMs: nowMs,
        readyAtMs: Number.POSITIVE_INFINITY,
        move: {
          replaces: decision.replaces,
          fromNode: decision.fromNode,
          startedAtMs: nowMs,
          reason: decision.reason,
        },
      });
    } else if (decision.type === "finish") {
      replicas = replicas.filter((r) => r.id !== decision.retire);
      const surge = replicas.find((r) => r.id === decision.surge)!;
      surge.move = { ...surge.move!, finishedAtMs: nowMs };
    } else if (decision.type === "abandon") {
      replicas = replicas.filter((r) => r.id !== decision.surge);
    }
    log.push({ decision, readyBefore, readyAfter: replicas.filter(isReady).length, atMs: nowMs });
  }
  return { log, replicas, reconcilerActions, isReady };
}

describe("REQ-030 REQ-022 rebalancer in a simulated cluster (ADR 0035)", () => {
  it("never takes ready replicas below minAvailable, moves one at a time with a cool-down, and the reconciler never mistakes a surge for an extra or a missing replica", () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const { log, reconcilerActions } = simulate(scenario);
        // A pass (reconciler, then rebalancer) never leaves fewer ready than minAvailable,
        // unless there were fewer to begin with (then never fewer than before). Crashes
        // happen between passes.
        for (const step of log) {
          expect(step.readyAfter).toBeGreaterThanOrEqual(
            Math.min(step.readyBefore, scenario.minAvailable),
          );
        }
        // The reconciler creates nothing (no replica is lost here), and stops only the
        // extra a move leaves when it keeps its replacement for the sake of minAvailable.
        const kept = log.filter(
          (s) => s.decision.type === "finish" && s.decision.retire === undefined,
        ).length;
        expect(reconcilerActions.filter((a) => a !== "stop")).toEqual([]);
        expect(reconcilerActions.length).toBeLessThanOrEqual(kept);
        // Starts are a cool-down apart; at most one move is under way at a time.
        const starts = log.filter((s) => s.decision.type === "start").map((s) => s.atMs);
        for (let k = 1; k < starts.length; k++) {
          expect(starts[k]! - starts[k - 1]!).toBeGreaterThanOrEqual(30_000);
        }
        let open = 0;
        for (const step of log) {
          if (step.decision.type === "start") open++;
          if (step.decision.type === "finish" || step.decision.type === "abandon") open--;
          expect(open).toBeGreaterThanOrEqual(0);
          expect(open).toBeLessThanOrEqual(1);
        }
      }),
      { numRuns: 200 },
    );
  });

  it("settles: with every replica healthy it ends with zones within one (spreadAcrossZones), or nodes within one and within budget when the nodes allow (minAvailable > 0), and then stops moving", () => {
    fc.assert(
      fc.property(
        scenarioArb.map((s) => ({
          ...s,
          // Time passes (a move waits for a cool-down and a replacement's readiness).
          steps: s.steps.map(([ms]): Step => [5_000 + ms, false, []]),
        })),
        (scenario) => {
          // Enough steps for every move: each takes a few steps and a cool-down.
          const long = {
            ...scenario,
            steps: [...scenario.steps, ...scenario.steps, ...scenario.steps],
          };
          const { log, replicas } = simulate(long);
          const counts = scenario.nodes.map(
            (n) => replicas.filter((r) => r.node === n.name).length,
          );
          // Quiet at the end: the last 20 decisions are all "none".
          expect(log.slice(-20).every((s) => s.decision.type === "none")).toBe(true);
          if (scenario.spreadAcrossZones) {
            // Zone balance comes first (ADR 0010); nodes within a zone may stay uneven.
            const zones = [...new Set(scenario.nodes.map((n) => n.zone))];
            const perZone = zones.map(
              (z) =>
                replicas.filter((r) => r.node !== "" && zoneOfNode(scenario, r.node) === z).length,
            );
            expect(Math.max(...perZone) - Math.min(...perZone)).toBeLessThanOrEqual(1);
            return;
          }
          // minAvailable 0 asks nothing of a node loss: those bin-pack and are left alone.
          if (scenario.minAvailable > 0) {
            expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
            // Restated budget: no node over max(1, r − m) when there are nodes enough.
            const budget = Math.max(1, scenario.replicas - scenario.minAvailable);
            if (scenario.nodes.length * budget >= scenario.replicas) {
              expect(Math.max(...counts)).toBeLessThanOrEqual(budget);
            }
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

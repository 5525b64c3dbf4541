/**
 * The rebalancer (ADR 0035): when a workload's replicas are spread worse than they could
 * be — a node holds more than its node-loss budget while another could take one, zones
 * are more than one apart under spreadAcrossZones, or a node holds two more than one the
 * scheduler would pick — it moves one replica, surge first: a replacement starts where
 * the scheduler puts it, and a replica is stopped only once the replacement is ready and
 * only if that leaves minAvailable ready. Pure: time, the replicas and "where would one
 * more go" come in as data; the controller writes what it decides.
 *
 * It cannot flap: a move is made only when it makes the spread strictly better by one
 * ordering (zone balance, then replicas over budget, then stacking), which a move never
 * makes worse; so without a node coming or going the moves run out. A cool-down per
 * workload and one move at a time bound how fast they run.
 */
import { nodeLossBudget } from "../scheduler/budget.js";
import type { ReplicaMove } from "./records.js";

export interface RebalanceOptions {
  /** Least time between the starts of two moves of one workload. */
  cooldownMs: number;
  /** A replacement not ready this long after its move started is given up. */
  surgeTimeoutMs: number;
}

export const defaultRebalanceOptions: RebalanceOptions = {
  cooldownMs: 30_000,
  surgeTimeoutMs: 120_000,
};

export interface RebalanceWorkload {
  revision: number;
  /** Desired replicas. */
  replicas: number;
  minAvailable: number;
  spreadAcrossZones: boolean;
  /** `placement.rebalance` of the current revision and the coordinator's switch, both. */
  enabled: boolean;
}

export interface RebalanceReplica {
  id: string;
  /** "" while pending. */
  node: string;
  /** The node's zone; "" while pending. */
  zone: string;
  revision: number;
  ready: boolean;
  move?: ReplicaMove;
}

export interface RebalanceTarget {
  node: string;
  zone: string;
}

export interface RebalanceInput {
  workload: RebalanceWorkload;
  /** The workload's live replicas: desired Running and not on a lost or departed node. */
  replicas: RebalanceReplica[];
  nowMs: number;
  /** When this workload's last move started, as far as anyone knows (records or memory). */
  lastMoveStartedAtMs: number | undefined;
  /**
   * Where the scheduler would put one more replica of the current revision now (the
   * least-stacked node that could take it, over the budget if it must); undefined when
   * nowhere. Called at most once, and only when a move could help: it costs a scheduling
   * cycle. Whether a move there helps is this module's call, not the scheduler's.
   */
  findTarget: () => RebalanceTarget | undefined;
  /** Nodes and zones with a Ready, schedulable node: a cheap bound on where a move could go. */
  readyNodes: number;
  readyZones: number;
  options: RebalanceOptions;
}

export type RebalanceDecision =
  | { type: "none" }
  /** Create a replacement (pending; the scheduler places it) for `replaces`. */
  | { type: "start"; replaces: string; fromNode: string; toNode: string; reason: string }
  /** Stop `retire` (if any) and mark the surge's move finished, in one write. */
  | {
      type: "finish";
      surge: string;
      retire: string | undefined;
      fromNode: string;
      toNode: string;
      reason: string;
    }
  /** Stop the surge: the move would not help, could not be placed, or never became ready. */
  | { type: "abandon"; surge: string; reason: string };

const none: RebalanceDecision = { type: "none" };

/** One move per call, at most; see the file comment for the rules. */
export function decideRebalance(input: RebalanceInput): RebalanceDecision {
  const { workload, replicas, nowMs, options } = input;
  const liveIds = new Set(replicas.map((r) => r.id));
  const inFlight = replicas.filter(
    (r) =>
      r.move !== undefined && r.move.finishedAtMs === undefined && r.revision === workload.revision,
  );
  if (inFlight.length > 0) return followMove(input, inFlight, liveIds);
  if (!workload.enabled) return none;

  // Start only from a steady, healthy state: every replica of the revision, placed and
  // ready, none too many or too few. Anything else is the reconciler's to fix first.
  const current = replicas.filter((r) => r.revision === workload.revision);
  if (current.length !== replicas.length || current.length !== workload.replicas) return none;
  if (current.some((r) => r.node === "" || !r.ready)) return none;
  if (
    input.lastMoveStartedAtMs !== undefined &&
    nowMs - input.lastMoveStartedAtMs < options.cooldownMs
  ) {
    return none;
  }
  const budget = budgetOf(workload);
  const placed = current.map((r) => ({ id: r.id, node: r.node, zone: r.zone }));
  const byNode = Number.isFinite(budget);
  const { readyNodes, readyZones, findTarget } = input;
  if (!couldImprove(placed, byNode, workload.spreadAcrossZones, readyNodes, readyZones)) {
    return none;
  }
  const target = findTarget();
  if (target === undefined) return none;
  const before = measure(placed, budget, workload.spreadAcrossZones);
  // The replica whose move to the target helps most (the first such on a tie).
  let best: { id: string; node: string; after: Measure } | undefined;
  for (const source of placed) {
    const after = measure(
      [...placed.filter((p) => p !== source), { id: "target", ...target }],
      budget,
      workload.spreadAcrossZones,
    );
    if (compare(after, before) < 0 && (best === undefined || compare(after, best.after) < 0)) {
      best = { id: source.id, node: source.node, after };
    }
  }
  if (best === undefined) return none;
  return {
    type: "start",
    replaces: best.id,
    fromNode: best.node,
    toNode: target.node,
    reason: why(before, best.after, best.node, target, budget, workload),
  };
}

/** What to do about a move under way: finish it, wait for it, or give it up. */
function followMove(
  input: RebalanceInput,
  inFlight: RebalanceReplica[],
  liveIds: ReadonlySet<string>,
): RebalanceDecision {
  const { workload, replicas, nowMs, options } = input;
  const readyNow = replicas.filter((r) => r.ready).length;
  /**
   * Stops a surge that is not wanted — unless it is ready and stopping it would leave
   * fewer than minAvailable ready: then the move ends and the surge stays as an ordinary
   * replica, and the reconciler's scale-down (not-ready replicas first) removes the extra.
   */
  const giveUp = (surge: RebalanceReplica, reason: string): RebalanceDecision => {
    if (surge.ready && readyNow - 1 < workload.minAvailable) {
      return {
        type: "finish",
        surge: surge.id,
        retire: undefined,
        fromNode: surge.move?.fromNode ?? "",
        toNode: surge.node,
        reason: `${reason}; kept, since stopping it would leave fewer than minAvailable ${workload.minAvailable} ready`,
      };
    }
    return { type: "abandon", surge: surge.id, reason };
  };
  const surge = inFlight[0]!;
  const move = surge.move!;
  // One move at a time; a second one can only come from a race, and goes.
  if (inFlight.length > 1) return giveUp(inFlight[1]!, "another move is under way");
  if (!liveIds.has(move.replaces)) {
    return {
      type: "finish",
      surge: surge.id,
      retire: undefined,
      fromNode: move.fromNode,
      toNode: surge.node,
      reason: `replica ${move.replaces} went meanwhile`,
    };
  }
  if (!workload.enabled) return giveUp(surge, "rebalancing was turned off");
  const timedOut = nowMs - move.startedAtMs > options.surgeTimeoutMs;
  if (surge.node === "") {
    return timedOut
      ? giveUp(surge, `the replacement was not placed within ${seconds(options.surgeTimeoutMs)}`)
      : none;
  }
  const budget = budgetOf(workload);
  const current = replicas.filter((r) => r.revision === workload.revision && r.node !== "");
  const placed = current.map((r) => ({ id: r.id, node: r.node, zone: r.zone }));
  const before = measure(
    placed.filter((p) => p.id !== surge.id),
    budget,
    workload.spreadAcrossZones,
  );
  // Which replica to stop now that the replacement has a node: the one whose stop leaves
  // the best spread, the one the move meant first on a tie.
  const candidates = [
    ...placed.filter((p) => p.id === move.replaces),
    ...placed.filter((p) => p.id !== move.replaces && p.id !== surge.id),
  ];
  let best: { id: string; node: string; after: Measure } | undefined;
  for (const candidate of candidates) {
    const after = measure(
      placed.filter((p) => p !== candidate),
      budget,
      workload.spreadAcrossZones,
    );
    if (compare(after, before) < 0 && (best === undefined || compare(after, best.after) < 0)) {
      best = { id: candidate.id, node: candidate.node, after };
    }
  }
  if (best === undefined) {
    return giveUp(
      surge,
      `the replacement landed on ${surge.node}, where it would not improve the spread`,
    );
  }
  const retiring = replicas.find((r) => r.id === best.id);
  const readyAfter = readyNow - (retiring?.ready === true ? 1 : 0);
  if (surge.ready && readyAfter >= workload.minAvailable) {
    return {
      type: "finish",
      surge: surge.id,
      retire: best.id,
      fromNode: best.node,
      toNode: surge.node,
      reason: move.reason,
    };
  }
  if (timedOut) {
    return giveUp(
      surge,
      surge.ready
        ? `stopping a replica would have left fewer than minAvailable ${workload.minAvailable} ready for ${seconds(options.surgeTimeoutMs)}`
        : `the replacement on ${surge.node} was not ready within ${seconds(options.surgeTimeoutMs)}`,
    );
  }
  return none;
}

function budgetOf(workload: RebalanceWorkload): number {
  // minAvailable 0 asks nothing of a node loss: no replica is ever over budget.
  return workload.minAvailable > 0
    ? nodeLossBudget({ replicas: workload.replicas, minAvailable: workload.minAvailable })
    : Number.POSITIVE_INFINITY;
}

interface Placed {
  id: string;
  node: string;
  zone: string;
}

/**
 * How far a spread is from ideal, compared in this order: the sum of squared replica
 * counts per zone (only under spreadAcrossZones; it falls exactly when a replica moves to
 * a zone holding at least two fewer), the replicas over the node-loss budget, and the sum
 * of squared counts per node (it falls when a replica moves to a node holding at least two
 * fewer: spread before stack). The node terms count only for a workload with a budget
 * (minAvailable > 0), as in the scheduler. Smaller is better.
 */
type Measure = readonly [number, number, number];

function measure(placed: readonly Placed[], budget: number, byZone: boolean): Measure {
  const perNode = new Map<string, number>();
  const perZone = new Map<string, number>();
  for (const p of placed) {
    perNode.set(p.node, (perNode.get(p.node) ?? 0) + 1);
    perZone.set(p.zone, (perZone.get(p.zone) ?? 0) + 1);
  }
  let zoneSquares = 0;
  if (byZone) for (const count of perZone.values()) zoneSquares += count * count;
  let overBudget = 0;
  let nodeSquares = 0;
  // Without a budget (minAvailable 0) the scheduler bin-packs: nodes are not its business.
  if (Number.isFinite(budget)) {
    for (const count of perNode.values()) {
      overBudget += Math.max(0, count - budget);
      nodeSquares += count * count;
    }
  }
  return [zoneSquares, overBudget, nodeSquares];
}

function compare(a: Measure, b: Measure): number {
  return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
}

/**
 * Cheap: whether any move could help, before asking the scheduler. Every term of the
 * measure falls only when a replica moves to a node (or zone) holding at least two fewer
 * than where it was: an empty one, if there are more Ready ones than it uses, or one it
 * uses with two fewer.
 */
function couldImprove(
  placed: readonly Placed[],
  byNode: boolean,
  byZone: boolean,
  readyNodes: number,
  readyZones: number,
): boolean {
  const perNode = new Map<string, number>();
  const perZone = new Map<string, number>();
  for (const p of placed) {
    perNode.set(p.node, (perNode.get(p.node) ?? 0) + 1);
    perZone.set(p.zone, (perZone.get(p.zone) ?? 0) + 1);
  }
  const helps = (counts: Map<string, number>, ready: number): boolean => {
    const values = [...counts.values()];
    const most = Math.max(0, ...values);
    const fewest = counts.size < ready ? 0 : Math.min(...values);
    return most - fewest >= 2;
  };
  return (byNode && helps(perNode, readyNodes)) || (byZone && helps(perZone, readyZones));
}

/** The move's reason, from what it improves first. */
function why(
  before: Measure,
  after: Measure,
  fromNode: string,
  target: RebalanceTarget,
  budget: number,
  workload: RebalanceWorkload,
): string {
  if (after[0] < before[0]) {
    return `zones are unbalanced (spreadAcrossZones): moving one from ${fromNode} to ${target.node} in zone ${target.zone}`;
  }
  if (after[1] < before[1]) {
    return (
      `node ${fromNode} holds more than the node-loss budget (at most ${budget} of ` +
      `${workload.replicas} per node keeps minAvailable ${workload.minAvailable}): ` +
      `moving one to ${target.node}`
    );
  }
  return `node ${fromNode} holds two or more than ${target.node}: spreading before stacking`;
}

function seconds(ms: number): string {
  return `${Math.round(ms / 1000)}s`;
}

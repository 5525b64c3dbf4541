/**
 * One scheduling cycle for one replica: pre-steps, filter every node, score the survivors,
 * pick the best (ties broken by the injected rng). Shared by schedule() and explain so the
 * explanation is always the scheduler's own reasoning, not a re-implementation of it.
 */
import type { Rng } from "../../lib/rng.js";
import { budgetApplies } from "./budget.js";
import type { FilterPlugin, SchedulingContext } from "./plugin.js";
import type { WeightedScore } from "./scores.js";
import { needsCounts } from "./state.js";
import type { PendingReplica, ScoredNode } from "./types.js";

export interface Framework {
  readonly filters: readonly FilterPlugin[];
  readonly scores: readonly WeightedScore[];
}

export interface CycleOptions {
  /** Breaks ties; without one the first best node in snapshot order wins. */
  readonly rng: Rng | undefined;
  /**
   * How many of the best nodes the replica could go to (feasible ones, or when none, those
   * failing only soft filters) to report (explain); 0 skips the work.
   */
  readonly topFeasible: number;
  /** When nothing is feasible: how many best near-miss nodes to report. */
  readonly topNearMiss: number;
}

export interface CycleResult {
  readonly totalNodes: number;
  readonly feasibleNodes: number;
  /** Filter name → nodes it was the first to reject; only filters that rejected any. */
  readonly rejections: Record<string, number>;
  /** Reason → nodes. */
  readonly reasons: Map<string, number>;
  /** Index of the chosen node, −1 when none could take the replica. */
  readonly chosen: number;
  readonly chosenScore: number;
  /**
   * No node passed every filter, and the chosen one failed only soft filters (the
   * node-loss budget): the placement goes over them.
   */
  readonly overSoft: boolean;
  readonly topFeasible: RankedNode[];
  readonly topNearMiss: RankedNode[];
}

/** A reported node, with its index so callers can look it up again without a search. */
export interface RankedNode extends ScoredNode {
  readonly index: number;
}

/** Scores closer than this are a tie: float noise must not decide placements. */
const tieEpsilon = 1e-9;

export function runCycle(
  ctx: SchedulingContext,
  framework: Framework,
  replica: PendingReplica,
  options: CycleOptions,
): CycleResult {
  const { state } = ctx;
  const { scores } = framework;
  const nodes = state.nodes;
  const n = nodes.length;

  const filters = prepareCycle(ctx, framework.filters, replica);

  const rejectedBy = new Int32Array(filters.length);
  const reasons = new Map<string, number>();
  // Rejected nodes tend to come in runs with the same reason (a zone, a full rack), so
  // counting runs keeps the map out of the per-node path.
  let runReason = "";
  let runCount = 0;
  const feasible = state.feasible;
  const nearMiss = state.nearMiss;
  const softMiss = state.softMiss;
  let feasibleCount = 0;
  let nearMissCount = 0;
  let softMissCount = 0;

  for (let i = 0; i < n; i++) {
    const node = nodes[i]!;
    let f = 0;
    for (; f < filters.length; f++) {
      const status = filters[f]!.filter(ctx, replica, node, i);
      if (!status.ok) {
        rejectedBy[f] = rejectedBy[f]! + 1;
        if (status.reason === runReason) {
          runCount++;
        } else {
          if (runCount > 0) reasons.set(runReason, (reasons.get(runReason) ?? 0) + runCount);
          runReason = status.reason;
          runCount = 1;
        }
        break;
      }
    }
    if (f === filters.length) {
      feasible[feasibleCount++] = i;
    } else if (filters[f]!.soft === true) {
      // Soft filters run last (prepareCycle checks), so this node passed every hard one.
      softMiss[softMissCount++] = i;
    } else if (filters[f]!.kind === "occupancy") {
      nearMiss[nearMissCount++] = i;
    }
  }
  if (runCount > 0) reasons.set(runReason, (reasons.get(runReason) ?? 0) + runCount);

  const rejections: Record<string, number> = {};
  for (let f = 0; f < filters.length; f++) {
    if (rejectedBy[f]! > 0) rejections[filters[f]!.name] = rejectedBy[f]!;
  }

  let chosen = -1;
  let chosenScore = Number.NEGATIVE_INFINITY;
  const topFeasible = new TopNodes(options.topFeasible);
  const topNearMiss = new TopNodes(options.topNearMiss);
  // Nodes that pass every filter first; failing that, those that failed only soft ones.
  const overSoft = feasibleCount === 0 && softMissCount > 0;
  const candidates = overSoft ? softMiss : feasible;
  const candidateCount = overSoft ? softMissCount : feasibleCount;

  if (candidateCount > 0) {
    for (const s of scores) s.plugin.preScore?.(ctx, replica, candidates, candidateCount);
    let chosenTier = 0;
    let ties = 0;
    for (let k = 0; k < candidateCount; k++) {
      const i = candidates[k]!;
      const tier = stackTier(ctx, i);
      const total = weightedTotal(ctx, scores, replica, i);
      if (
        chosen < 0 ||
        tier < chosenTier ||
        (tier === chosenTier && total > chosenScore + tieEpsilon)
      ) {
        chosen = i;
        chosenScore = total;
        chosenTier = tier;
        ties = 1;
      } else if (tier === chosenTier && total >= chosenScore - tieEpsilon) {
        // Reservoir sampling over the tied nodes: each ends up chosen with equal odds,
        // in one pass and without collecting them.
        ties++;
        if (options.rng !== undefined && options.rng.next() * ties < 1) chosen = i;
      }
      topFeasible.offer(i, total, tier);
    }
    // The winner is reported with its own total, not the first of its tie group's.
    if (chosen >= 0) chosenScore = weightedTotal(ctx, scores, replica, chosen);
  } else if (options.topNearMiss > 0 && nearMissCount > 0) {
    for (const s of scores) s.plugin.preScore?.(ctx, replica, nearMiss, nearMissCount);
    for (let k = 0; k < nearMissCount; k++) {
      const i = nearMiss[k]!;
      topNearMiss.offer(i, weightedTotal(ctx, scores, replica, i), 0);
    }
  }

  return {
    totalNodes: n,
    feasibleNodes: feasibleCount,
    rejections,
    reasons,
    chosen,
    chosenScore,
    overSoft: overSoft && chosen >= 0,
    topFeasible: topFeasible.list(ctx),
    topNearMiss: topNearMiss.list(ctx),
  };
}

/**
 * Spread before stack (ADR 0034): for a workload with a node-loss budget, a node holding
 * fewer of its staying replicas wins over any score; bin-packing decides among equals.
 */
function stackTier(ctx: SchedulingContext, i: number): number {
  if (!ctx.cycle.spreadOverNodes) return 0;
  return ctx.cycle.workload?.stayingPerNode.get(i) ?? 0;
}

/**
 * Resets the cycle state and runs every filter's pre-step; returns the filters that need
 * to run per node for this replica. Exported so plugin tests set up a cycle the same way.
 */
export function prepareCycle(
  ctx: SchedulingContext,
  filters: readonly FilterPlugin[],
  replica: PendingReplica,
): FilterPlugin[] {
  ctx.cycle.reset();
  if (needsCounts(replica)) ctx.cycle.workload = ctx.state.workload(replica.workloadKey);
  ctx.cycle.spreadOverNodes = budgetApplies(replica.availability);
  const active: FilterPlugin[] = [];
  let softSeen = "";
  for (const f of filters) {
    if (f.soft === true) softSeen = f.name;
    else if (softSeen !== "") {
      // runCycle relies on it: a node a soft filter rejects must have passed every hard one.
      throw new Error(`filter ${f.name} runs after the soft filter ${softSeen}`);
    }
    if ((f.preFilter?.(ctx, replica) ?? "run") === "run") active.push(f);
  }
  return active;
}

function weightedTotal(
  ctx: SchedulingContext,
  scores: readonly WeightedScore[],
  replica: PendingReplica,
  i: number,
): number {
  const node = ctx.state.nodes[i]!;
  let total = 0;
  for (const s of scores) {
    if (s.weight !== 0) total += s.weight * s.plugin.score(ctx, replica, node, i);
  }
  // A plugin that returned NaN is a bug, but it must not make a feasible node unplaceable.
  return Number.isNaN(total) ? Number.NEGATIVE_INFINITY : total;
}

/** Each score plugin's 0..100 value for one node; only called for the chosen node. */
export function scoreBreakdown(
  ctx: SchedulingContext,
  scores: readonly WeightedScore[],
  replica: PendingReplica,
  i: number,
): Record<string, number> {
  const node = ctx.state.nodes[i]!;
  const out: Record<string, number> = {};
  for (const s of scores) out[s.plugin.name] = s.plugin.score(ctx, replica, node, i);
  return out;
}

/** "0/5 nodes available: 3 Insufficient memory, 2 zone not in required [a]" */
export function formatMessage(
  totalNodes: number,
  feasibleNodes: number,
  reasons: ReadonlyMap<string, number>,
): string {
  const head = `${feasibleNodes}/${totalNodes} nodes available`;
  if (reasons.size === 0) return totalNodes === 0 ? `${head}: no nodes in the cluster` : head;
  const parts = [...reasons]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .map(([reason, count]) => `${count} ${reason}`);
  return `${head}: ${parts.join(", ")}`;
}

/**
 * The k best (fewest of the workload on the node, then score, then snapshot order) without
 * sorting every node. k is tiny (≤ 5), so insertion into a short array beats a heap.
 */
class TopNodes {
  private readonly indices: number[] = [];
  private readonly totals: number[] = [];
  private readonly tiers: number[] = [];

  constructor(private readonly k: number) {}

  offer(i: number, total: number, tier: number): void {
    if (this.k === 0) return;
    const len = this.indices.length;
    if (len === this.k && !this.ahead(total, tier, len - 1)) return;
    let at = len;
    while (at > 0 && this.ahead(total, tier, at - 1)) at--;
    this.indices.splice(at, 0, i);
    this.totals.splice(at, 0, total);
    this.tiers.splice(at, 0, tier);
    if (this.indices.length > this.k) {
      this.indices.pop();
      this.totals.pop();
      this.tiers.pop();
    }
  }

  list(ctx: SchedulingContext): RankedNode[] {
    return this.indices.map((index, k) => ({
      index,
      node: ctx.state.nodes[index]!.name,
      score: this.totals[k]!,
    }));
  }

  /** Whether (total, tier) ranks strictly before the entry at position k. */
  private ahead(total: number, tier: number, k: number): boolean {
    const other = this.tiers[k]!;
    return tier < other || (tier === other && total > this.totals[k]! + tieEpsilon);
  }
}

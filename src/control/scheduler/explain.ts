/**
 * `cloudless workload explain`: why is this replica pending, or where would it go? Runs the
 * scheduler's own cycle against the snapshot (nothing placed by a plan), so the numbers are
 * exactly what schedule() would see for this replica alone.
 */
import {
  type CycleResult,
  formatMessage,
  type RankedNode,
  runCycle,
  scoreBreakdown,
} from "./framework.js";
import { CycleState, type SchedulingContext } from "./plugin.js";
import {
  defaultFramework,
  invalidReplica,
  invalidRequest,
  overBudgetText,
  unschedulableBestScores,
} from "./schedule.js";
import { SchedulingState } from "./state.js";
import {
  type ClusterSnapshot,
  defaultWeights,
  type PendingReplica,
  type ScoredNode,
  type ScoreWeights,
  type Unschedulable,
} from "./types.js";

/** How many of the best feasible nodes explain lists. */
export const explainBestScores = 5;

export interface UnschedulableExplanation extends Unschedulable {
  schedulable: false;
  totalNodes: number;
}

export interface SchedulableExplanation {
  schedulable: true;
  replicaId: string;
  workloadKey: string;
  totalNodes: number;
  feasibleNodes: number;
  /** Filter name → nodes it rejected, as for an unschedulable replica. */
  rejections: Record<string, number>;
  reasons: Record<string, number>;
  message: string;
  /**
   * Fewest of the workload first (when it has a node-loss budget), then highest score,
   * with per-plugin scores; ties in snapshot order (no rng here).
   */
  bestScores: ScoredNode[];
  /**
   * Set when no node that could take the replica is within its workload's node-loss
   * budget, so it would go over it (ADR 0034): which node and what it would take.
   */
  overBudget?: string;
}

export type Explanation = UnschedulableExplanation | SchedulableExplanation;

export function explainPending(
  snapshot: ClusterSnapshot,
  replica: PendingReplica,
  weights: ScoreWeights = defaultWeights,
): Explanation {
  const totalNodes = snapshot.nodes.length;
  const invalid = invalidRequest(replica.resources);
  if (invalid !== undefined) {
    return { schedulable: false, totalNodes, ...invalidReplica(replica, invalid) };
  }
  const framework = defaultFramework(weights);
  const { ctx, result } = oneCycle(snapshot, replica, weights, explainBestScores);
  // The cycle's pre-score state is still in place, so breakdowns match the totals.
  const withBreakdown = (nodes: RankedNode[]): ScoredNode[] =>
    nodes.map(({ index, node, score }) => ({
      node,
      score,
      scores: scoreBreakdown(ctx, framework.scores, replica, index),
    }));
  const common = {
    replicaId: replica.id,
    workloadKey: replica.workloadKey,
    totalNodes,
    rejections: result.rejections,
    reasons: Object.fromEntries(result.reasons),
    message: formatMessage(totalNodes, result.feasibleNodes, result.reasons),
  };
  if (result.chosen < 0) {
    return {
      schedulable: false,
      ...common,
      eligibleNodes: 0,
      bestScores: withBreakdown(result.topNearMiss),
    };
  }
  const explanation: SchedulableExplanation = {
    schedulable: true,
    ...common,
    feasibleNodes: result.feasibleNodes,
    bestScores: withBreakdown(result.topFeasible),
  };
  if (result.overSoft) {
    const node = ctx.state.nodes[result.chosen]!.name;
    const holds = (ctx.cycle.workload?.stayingPerNode.get(result.chosen) ?? 0) + 1;
    explanation.overBudget = overBudgetText(replica, node, holds, "would place");
    explanation.message = `${explanation.message}; ${explanation.overBudget}`;
  }
  return explanation;
}

/** Where one more replica would go now, and whether only over its node-loss budget. */
export interface ProbedPlacement {
  node: string;
  overBudget: boolean;
}

/**
 * The node the scheduler would give this replica alone against the snapshot (ties in
 * snapshot order), or undefined when none could take it. The rebalancer asks it where a
 * replica moved for a better spread would land (ADR 0035).
 */
export function probePlacement(
  snapshot: ClusterSnapshot,
  replica: PendingReplica,
  weights: ScoreWeights = defaultWeights,
): ProbedPlacement | undefined {
  if (invalidRequest(replica.resources) !== undefined) return undefined;
  const { ctx, result } = oneCycle(snapshot, replica, weights, 0);
  if (result.chosen < 0) return undefined;
  return { node: ctx.state.nodes[result.chosen]!.name, overBudget: result.overSoft };
}

function oneCycle(
  snapshot: ClusterSnapshot,
  replica: PendingReplica,
  weights: ScoreWeights,
  topFeasible: number,
): { ctx: SchedulingContext; result: CycleResult } {
  const framework = defaultFramework(weights);
  const ctx: SchedulingContext = {
    nowMs: 0,
    state: new SchedulingState(snapshot, [replica]),
    cycle: new CycleState(),
    filters: framework.filters,
  };
  const result = runCycle(ctx, framework, replica, {
    rng: undefined,
    topFeasible,
    topNearMiss: topFeasible > 0 ? unschedulableBestScores : 0,
  });
  return { ctx, result };
}

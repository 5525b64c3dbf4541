/**
 * `cloudless workload explain`: why is this replica pending, or where would it go? Runs the
 * scheduler's own cycle against the snapshot (nothing placed by a plan), so the numbers are
 * exactly what schedule() would see for this replica alone.
 */
import { formatMessage, type RankedNode, runCycle, scoreBreakdown } from "./framework.js";
import { CycleState, type SchedulingContext } from "./plugin.js";
import {
  defaultFramework,
  invalidReplica,
  invalidRequest,
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
  /** Highest first, with per-plugin scores; ties in snapshot order (no rng here). */
  bestScores: ScoredNode[];
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
  const ctx: SchedulingContext = {
    nowMs: 0,
    state: new SchedulingState(snapshot, [replica]),
    cycle: new CycleState(),
    filters: framework.filters,
  };
  const result = runCycle(ctx, framework, replica, {
    rng: undefined,
    topFeasible: explainBestScores,
    topNearMiss: unschedulableBestScores,
  });
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
  if (result.feasibleNodes === 0) {
    return {
      schedulable: false,
      ...common,
      eligibleNodes: 0,
      bestScores: withBreakdown(result.topNearMiss),
    };
  }
  return {
    schedulable: true,
    ...common,
    feasibleNodes: result.feasibleNodes,
    bestScores: withBreakdown(result.topFeasible),
  };
}

/**
 * The scheduler core's public surface (DESIGN.md, decision 4). The coordinator calls
 * schedule() and commits the Plan; the CLI's `workload explain` calls explainPending().
 * Plugins are exported for tests and for the benchmark, not for runtime extension.
 */
export {
  budgetApplies,
  budgetText,
  type NodeLossRisk,
  nodeLossBudget as nodeLossBudgetOf,
  nodeLossRisk,
  nodesNeeded,
} from "./budget.js";
export {
  type Explanation,
  explainBestScores,
  explainPending,
  type ProbedPlacement,
  probePlacement,
  type SchedulableExplanation,
  type UnschedulableExplanation,
} from "./explain.js";
export {
  antiAffinity,
  defaultFilters,
  driverAvailable,
  fitsResources,
  isTolerated,
  nodeLossBudget,
  nodeReady,
  nodeSelector,
  regionZoneRequired,
  taintToleration,
  tolerates,
  zoneSpread,
} from "./filters.js";
export { type Framework, formatMessage } from "./framework.js";
export type {
  FilterPlugin,
  FilterRejection,
  FilterStatus,
  SchedulingContext,
  ScorePlugin,
} from "./plugin.js";
export { defaultFramework, schedule, scheduleSteps, scheduleWith } from "./schedule.js";
export {
  cost,
  locality,
  networkPenalty,
  reliability,
  utilizationBalance,
  type WeightedScore,
  weightedScores,
} from "./scores.js";
export {
  type Availability,
  type ClusterSnapshot,
  type Driver,
  defaultWeights,
  type ExistingReplica,
  type NodeStatus,
  type PendingReplica,
  type Placement,
  type Plan,
  type PlannedPlacement,
  type ResourceName,
  type Resources,
  type SchedNode,
  type ScheduleInput,
  type ScoredNode,
  type ScoreWeights,
  type Taint,
  type TaintEffect,
  type Toleration,
  type Unschedulable,
} from "./types.js";

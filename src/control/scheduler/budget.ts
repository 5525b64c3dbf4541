/**
 * The node-loss budget (ADR 0034, REQ-030): how many of a workload's replicas one node may
 * hold so that losing it still leaves minAvailable ready. Pure arithmetic shared by the
 * scheduler's filter, the workload status and the rebalancer, so all three mean the same.
 */
import type { Availability } from "./types.js";

/**
 * Whether the workload asks anything of a node loss: with minAvailable 0 (or no ask at all)
 * any placement keeps it, and replicas bin-pack as REQ-022 says.
 */
export function budgetApplies(
  availability: Availability | undefined,
): availability is Availability {
  return availability !== undefined && availability.minAvailable > 0 && availability.replicas > 0;
}

/**
 * At most this many replicas per node: losing one node then leaves at least
 * replicas − budget ≥ minAvailable. Never below 1, or a workload whose minAvailable equals
 * its replica count could not be placed at all.
 */
export function nodeLossBudget(availability: Availability): number {
  return Math.max(1, availability.replicas - availability.minAvailable);
}

/** Nodes the workload needs to stay within its budget everywhere. */
export function nodesNeeded(availability: Availability): number {
  return Math.ceil(availability.replicas / nodeLossBudget(availability));
}

/** "at most 1 of 3 per node keeps minAvailable 2": the budget, said once for every message. */
export function budgetText(availability: Availability): string {
  const budget = nodeLossBudget(availability);
  return `at most ${budget} of ${availability.replicas} per node keeps minAvailable ${availability.minAvailable}`;
}

export interface NodeLossRisk {
  /** The node holding the most replicas (the first such name in sort order). */
  node: string;
  holds: number;
  budget: number;
  nodesNeeded: number;
  /** One line for a status or an explanation. */
  message: string;
}

/**
 * The node whose loss would take the workload below minAvailable, if any: replicas per
 * node are the ones that stay (current revision, desired Running, placed).
 */
export function nodeLossRisk(
  availability: Availability,
  replicasPerNode: ReadonlyMap<string, number>,
): NodeLossRisk | undefined {
  if (!budgetApplies(availability)) return undefined;
  const budget = nodeLossBudget(availability);
  let worst: string | undefined;
  let holds = 0;
  for (const [node, count] of replicasPerNode) {
    if (count > holds || (count === holds && worst !== undefined && node < worst)) {
      worst = node;
      holds = count;
    }
  }
  if (worst === undefined || holds <= budget) return undefined;
  const needed = nodesNeeded(availability);
  return {
    node: worst,
    holds,
    budget,
    nodesNeeded: needed,
    message:
      `losing node ${worst} would leave fewer than minAvailable ${availability.minAvailable} ` +
      `ready: it holds ${holds} of ${availability.replicas} replicas ` +
      `(${budgetText(availability)}; that needs ${needed} nodes with room)`,
  };
}

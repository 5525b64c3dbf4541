/**
 * What the controller does after the plan applier answered: retry at once what it refused,
 * at most maxPlanAttempts plans in a row that placed nothing (as Nomad bounds an
 * evaluation's attempts), then wait for the next change or resync and say why once.
 * Pure: the controller keeps the count and records the events.
 */
import type { NewEvent } from "../events/eventLog.js";
import type { PlanResult, RejectedPlacement } from "../scheduler/planCheck.js";
import type { Versioned } from "./clusterState.js";
import { type ReplicaRecord, workloadId } from "./records.js";

/**
 * Plans in a row the applier may refuse wholly before the controller stops retrying at
 * once (Nomad's maxServiceScheduleAttempts is 5 too); the resync and changes retry later.
 */
export const maxPlanAttempts = 5;

export interface RetryVerdict {
  /** Plans in a row, this one included, whose placements were all refused. */
  refusedInARow: number;
  /** Ask for another pass at once, against the newer state. */
  retryNow: boolean;
  /** This plan used the last attempt: say why the replicas wait (once per streak). */
  exhausted: boolean;
}

export function afterPlan(
  result: Pick<PlanResult, "placed" | "rejected">,
  refusedBefore: number,
  maxAttempts = maxPlanAttempts,
): RetryVerdict {
  if (result.rejected.length === 0 || result.placed.length > 0) {
    // Progress (or nothing refused) ends a streak; what was refused is retried at once.
    return { refusedInARow: 0, retryNow: result.rejected.length > 0, exhausted: false };
  }
  const refusedInARow = refusedBefore + 1;
  return {
    refusedInARow,
    retryNow: refusedInARow < maxAttempts,
    exhausted: refusedInARow === maxAttempts,
  };
}

/** One PlacementRetriesExhausted event per workload whose replicas the last plan refused. */
export function exhaustedEvents(
  rejected: readonly RejectedPlacement[],
  pending: ReadonlyMap<string, Versioned<ReplicaRecord>>,
  maxAttempts = maxPlanAttempts,
): NewEvent[] {
  const byWorkload = new Map<string, RejectedPlacement[]>();
  for (const rejection of rejected) {
    const record = pending.get(rejection.replicaId)?.value;
    if (!record) continue;
    const key = workloadId(record.namespace, record.workload);
    byWorkload.set(key, [...(byWorkload.get(key) ?? []), rejection]);
  }
  return [...byWorkload].map(([key, rejections]) => {
    const last = rejections.at(-1) as RejectedPlacement;
    const count = rejections.length;
    return {
      type: "PlacementRetriesExhausted",
      category: "scheduling",
      subject: `workload/${key}`,
      reason: last.reason,
      message: `${count} replica${count === 1 ? "" : "s"} not placed: the plan applier refused ${maxAttempts} plans in a row (last: ${last.reason}, ${last.detail}); retried on the next change or resync`,
    };
  });
}

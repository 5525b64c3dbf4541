/**
 * What stopping the agent does (ADR 0028, ADR 0031), decided in one place: whether it
 * says Leave (and announces a restart), whether the replicas stop, and what it reports.
 */

export interface StopPlan {
  /** Say Leave with this back_within_ms (0: for good); undefined: say nothing. */
  leaveBackWithinMs: number | undefined;
  /**
   * Stop the replicas. Leaving the cluster does: the coordinator places them elsewhere,
   * and two copies must not run. A restart keeps them (the coordinator keeps them here),
   * and so does a plain stop; the desired set stays on disk for the next agent.
   */
  stopReplicas: boolean;
  /** The exit message. */
  message: string;
}

export function stopPlan(leave: boolean, restartWithinMs: number): StopPlan {
  if (!leave) return { leaveBackWithinMs: undefined, stopReplicas: false, message: "stopped" };
  if (restartWithinMs > 0) {
    return {
      leaveBackWithinMs: restartWithinMs,
      stopReplicas: false,
      message: "stopped for a restart; replicas keep running",
    };
  }
  return { leaveBackWithinMs: 0, stopReplicas: true, message: "left the cluster" };
}

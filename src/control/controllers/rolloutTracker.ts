/**
 * Which rollouts this coordinator saw in progress, per workload, so that a completed one is
 * announced once (RolloutCompleted). A workload already complete when first seen (e.g.
 * after a coordinator restart) is not announced again. Pure: the controller records the
 * event it returns.
 */
import type { NewEvent } from "../events/eventLog.js";

/** The reconciler's status of a workload, as far as a rollout's end is concerned. */
export interface RolloutStatus {
  phase: string;
  updatedReplicas: number;
  desiredReplicas: number;
  replicas: number;
  readyReplicas: number;
}

export class RolloutTracker {
  /** Revisions seen in progress, per workload. */
  private readonly rollouts = new Map<string, { revision: number; inProgress: boolean }>();

  /** Notes a workload's status this pass; returns the event to record when its rollout just completed. */
  note(key: string, revision: number, status: RolloutStatus): NewEvent | undefined {
    const complete =
      status.phase === "Running" &&
      status.updatedReplicas === status.desiredReplicas &&
      status.replicas === status.desiredReplicas;
    const seen = this.rollouts.get(key);
    if (!seen || seen.revision !== revision) {
      this.rollouts.set(key, { revision, inProgress: !complete });
      return undefined;
    }
    if (!complete) {
      seen.inProgress = true;
      return undefined;
    }
    if (!seen.inProgress) return undefined;
    seen.inProgress = false;
    return {
      type: "RolloutCompleted",
      category: "scheduling",
      subject: `workload/${key}`,
      reason: "Complete",
      message: `revision ${revision}: ${status.readyReplicas}/${status.desiredReplicas} replicas updated and ready`,
    };
  }

  /** The workload is gone. */
  forget(key: string): void {
    this.rollouts.delete(key);
  }

  /** A new leadership term starts with nothing seen. */
  clear(): void {
    this.rollouts.clear();
  }
}

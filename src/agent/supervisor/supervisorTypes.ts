import type { ReportedReplicaPhase } from "../../lib/replicaPhase.js";
import type { ReplicaRunSpec } from "../drivers/driver.js";
import type { ProbeSpec } from "../probes/probeTypes.js";

export type RestartPolicy = "Always" | "OnFailure" | "Never";

/** One replica this node should run, as the coordinator (or the local state file) wants it. */
export interface DesiredReplica {
  spec: ReplicaRunSpec;
  restartPolicy: RestartPolicy;
  liveness?: ProbeSpec;
  readiness?: ProbeSpec;
  terminationGracePeriodSeconds: number;
  /** Bumps whenever the coordinator changes this replica; a new generation replaces it. */
  generation: number;
  /**
   * W3C trace context of the coordinator's placement of this replica: its first start
   * is a span in that trace. Not part of the spec (a change never replaces a replica).
   */
  traceparent?: string;
}

/** The phases an agent reports: every phase but the coordinator's own (lib/replicaPhase.ts). */
export type ReplicaPhase = ReportedReplicaPhase;

/** What the agent tells the coordinator about one replica. */
export interface ReplicaReport {
  replicaId: string;
  phase: ReplicaPhase;
  /** Running and its readiness probe passing (or Running with no readiness probe). */
  ready: boolean;
  /** Times the replica was started again after it had run. */
  restarts: number;
  /** A CamelCase word for machines ("CrashLoopBackOff", "ImageNotFound"); "" when none. */
  reason: string;
  /** One line for humans. */
  message: string;
  exitCode?: number;
  startedAtMs?: number;
  /** Port name → port on the node where it is reachable. */
  hostPorts: Record<string, number>;
  driver: string;
  /** When phase or readiness last changed. */
  lastTransitionAtMs: number;
}

/**
 * Everything the supervisor must remember across an agent restart to keep serving
 * without the coordinator (NFR-A1): the desired set, and the host ports it handed
 * out (the driver interface cannot read them back from a running replica).
 */
export interface SupervisorSnapshot {
  version: 1;
  /** null when no desired set was ever given: then nothing found on the node is removed. */
  desired: DesiredReplica[] | null;
  replicas: Record<
    string,
    {
      hostPorts: Record<string, number>;
      /** Generation of the spec the replica was last started with (set while it runs). */
      runningGeneration?: number;
      /**
       * Restarts so far, so the count the coordinator shows survives an agent restart.
       * Absent in snapshots written before it existed.
       */
      restarts?: number;
    }
  >;
}

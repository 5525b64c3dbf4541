/**
 * A replica as this node's supervisor holds it (what it means to do, what it last saw,
 * what it reports) and the pure questions asked of it. Not the coordinator's stored
 * ReplicaRecord (control/controllers/records.ts), which is the cluster's view of a
 * placement.
 */

import { canonicalJson } from "../../lib/canonicalJson.js";
import { knownHostPorts } from "./hostPortAssigner.js";
import type { ReplicaProbes } from "./replicaProbes.js";
import type { Intent, Termination } from "./restartPolicy.js";
import type { DesiredReplica, ReplicaPhase, SupervisorSnapshot } from "./supervisorTypes.js";

export interface SupervisedReplica {
  id: string;
  desired: DesiredReplica;
  intent: Intent;
  hostPorts: Record<string, number>;
  phase: ReplicaPhase;
  reason: string;
  message: string;
  exitCode?: number;
  /** Reported start time of the current run. */
  startedAtMs?: number;
  /** When the current run began on our clock; the back-off resets from here. */
  runSinceMs?: number;
  restarts: number;
  /** Consecutive failures (exits, kills, failed starts) driving the back-off. */
  failures: number;
  nextAttemptAtMs: number;
  /** It ran at least once, so the next start is a restart. */
  hasRun: boolean;
  /** This supervisor has asked the driver to start it at least once. */
  startAttempted: boolean;
  /** Generation of the spec the replica on the node was started with, when known. */
  runningGeneration?: number;
  /**
   * Restored from a snapshot that saw it running: if the runtime no longer has it, it
   * was lost while no agent watched, and the restart policy decides (not a first start).
   */
  restoredRunning: boolean;
  lastTermination?: Termination;
  /** Shown instead of reason/message while the driver cannot be asked. */
  driverProblem?: { reason: string; message: string };
  /** The probes of the current run. */
  probes?: ReplicaProbes;
  readinessPassing: boolean;
  /** The liveness probe's last failure message while it is failing. */
  livenessFailure?: string;
  /** A probe found one of the replica's host ports held by something else (this run). */
  portConflict?: { name: string; port: number; holder: string };
  /**
   * Ports a probe found held by something else: never given to this replica again,
   * whatever a bind check says (a foreign IPv6-only listener does not stop an IPv4 bind).
   */
  foreignPorts: number[];
  lastTransitionAtMs: number;
  cancelWake?: () => void;
}

/**
 * A record for a replica first seen in the desired set, taking over what a restored
 * snapshot knew of it (its host ports, restarts and running generation).
 */
export function newRecord(
  desired: DesiredReplica,
  restored: SupervisorSnapshot["replicas"][string] | undefined,
  nowMs: number,
): SupervisedReplica {
  return {
    id: desired.spec.replicaId,
    desired,
    intent: "start",
    hostPorts: restored ? { ...restored.hostPorts } : knownHostPorts(desired),
    phase: "Pending",
    reason: "",
    message: "waiting to start",
    restarts: restored?.restarts ?? 0,
    failures: 0,
    nextAttemptAtMs: 0,
    hasRun: false,
    startAttempted: false,
    ...(restored?.runningGeneration !== undefined
      ? { runningGeneration: restored.runningGeneration }
      : {}),
    restoredRunning:
      restored?.runningGeneration !== undefined &&
      restored.runningGeneration === desired.generation,
    readinessPassing: false,
    foreignPorts: [],
    lastTransitionAtMs: nowMs,
  };
}

/** The runtime runs a generation of the spec the coordinator has since replaced. */
export function isStale(record: Pick<SupervisedReplica, "runningGeneration" | "desired">): boolean {
  return (
    record.runningGeneration !== undefined && record.runningGeneration !== record.desired.generation
  );
}

/** The replica's grace period between SIGTERM and SIGKILL; 30 s when the spec's is unusable. */
export function graceMsOf(desired: DesiredReplica): number {
  const seconds = desired.terminationGracePeriodSeconds;
  return Number.isFinite(seconds) && seconds >= 0 ? Math.round(seconds * 1000) : 30_000;
}

/** A new generation or a different run spec means a new replica; probe changes do not. */
export function isReplacement(current: DesiredReplica, next: DesiredReplica): boolean {
  return (
    current.generation !== next.generation ||
    canonicalJson(current.spec) !== canonicalJson(next.spec)
  );
}

/** Whether the probes differ (they are restarted; the replica is not). */
export function probesChanged(current: DesiredReplica, next: DesiredReplica): boolean {
  return canonicalJson(probeSpecs(current)) !== canonicalJson(probeSpecs(next));
}

function probeSpecs(desired: DesiredReplica): unknown {
  return { liveness: desired.liveness ?? null, readiness: desired.readiness ?? null };
}

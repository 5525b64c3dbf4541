/**
 * The phases of a replica: one list for the whole program. The agent reports a phase
 * for each replica on its node; the coordinator stores it in the replica's record,
 * exports a count per phase as a metric and shows it in status. Two phases are the
 * coordinator's alone (placed but not reported yet; being stopped): an agent never
 * reports them. Neutral ground (lib/), so the agent and the control plane share it
 * without importing each other.
 */

/** Every phase, in the order the metrics export them. */
export const replicaPhases = [
  "Pending",
  "Scheduled",
  "Starting",
  "Running",
  "CrashLoopBackOff",
  "Succeeded",
  "Failed",
  "Stopped",
  "Stopping",
] as const;

export type ReplicaPhase = (typeof replicaPhases)[number];

/** Phases only the coordinator gives a replica. */
export const coordinatorOnlyPhases = [
  "Scheduled",
  "Stopping",
] as const satisfies readonly ReplicaPhase[];

/** A phase an agent reports for a replica on its node. */
export type ReportedReplicaPhase = Exclude<ReplicaPhase, (typeof coordinatorOnlyPhases)[number]>;

/** The phases an agent reports, in the order of replicaPhases. */
export const reportedReplicaPhases: readonly ReportedReplicaPhase[] = replicaPhases.filter(
  (phase): phase is ReportedReplicaPhase =>
    !(coordinatorOnlyPhases as readonly string[]).includes(phase),
);

const known: ReadonlySet<string> = new Set(replicaPhases);

export function isReplicaPhase(value: string): value is ReplicaPhase {
  return known.has(value);
}

/**
 * A phase read from the wire (an agent's report is a string): itself when it is one,
 * else `fallback` — a newer agent's phase this coordinator does not know yet.
 */
export function replicaPhaseOr(value: string, fallback: ReplicaPhase): ReplicaPhase {
  return isReplicaPhase(value) ? value : fallback;
}

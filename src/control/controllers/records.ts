/**
 * Workload and replica records as the store holds them. The coordinator is the only
 * writer: API handlers write workloads, controllers write replicas, and agents'
 * status reports reach the store through the coordinator.
 */
import type { ReplicaPhase } from "../../lib/replicaPhase.js";

export interface ResourcesRecord {
  cpuMillicores: number;
  memoryMiB: number;
  storageGiB: number;
  bandwidthMbps: number;
}

export interface WorkloadRecord {
  uid: string;
  namespace: string;
  name: string;
  /** Template revision: bumps when anything but the replica count or rollout knobs changes. */
  revision: number;
  templateHash: string;
  /** The full applied document (defaults applied), canonical form. */
  spec: unknown;
  replicas: number;
  minAvailable: number;
  createdAtMs: number;
  updatedAtMs: number;
  /**
   * W3C traceparent of the API call that last changed the workload (set while tracing is
   * on): replicas the controller creates for it soon after join that trace.
   */
  traceparent?: string;
}

export interface WorkloadRevisionRecord {
  revision: number;
  templateHash: string;
  spec: unknown;
  createdAtMs: number;
}

/** One list for the agent and the coordinator (lib/replicaPhase.ts). */
export type { ReplicaPhase };

export interface ReplicaStatusRecord {
  phase: ReplicaPhase;
  ready: boolean;
  restarts: number;
  reason: string;
  message: string;
  exitCode?: number;
  startedAtMs?: number;
  hostPorts: Record<string, number>;
  driver: string;
  reportedAtMs: number;
}

export interface ReplicaRecord {
  id: string;
  namespace: string;
  workload: string;
  revision: number;
  /** "" while pending. */
  node: string;
  desired: "Running" | "Stopped";
  resources: ResourcesRecord;
  createdAtMs: number;
  scheduledAtMs?: number;
  /** Why it is not placed yet (the scheduler's summary). */
  pendingReason?: string;
  stopRequestedAtMs?: number;
  status?: ReplicaStatusRecord;
  /**
   * W3C trace context the replica's next step joins: the creating apply's until it is
   * placed, then its placement's (sent to the agent with the assignment).
   */
  traceparent?: string;
  /** Set on a replica the rebalancer started to improve the spread (ADR 0035). */
  move?: ReplicaMove;
}

/**
 * A move of one replica for a better spread, recorded on the replacement (ADR 0035). Until
 * it finishes, the replacement is a surge: while the replaced replica is live the pair
 * counts as one, so the reconciler neither scales the surge away nor adds another.
 */
export interface ReplicaMove {
  /** The replica the move means to replace (the final pick may differ; see the rebalancer). */
  replaces: string;
  /** Where the replaced replica ran when the move started. */
  fromNode: string;
  startedAtMs: number;
  /** Why the move started, for its events. */
  reason: string;
  /** Set when the move is done: the replacement is then an ordinary replica. */
  finishedAtMs?: number;
}

export const workloadPrefix = "/workloads/";
export const revisionPrefix = "/workloadrevisions/";
export const replicaPrefix = "/replicas/";

export function workloadKey(namespace: string, name: string): string {
  return `${workloadPrefix}${namespace}/${name}`;
}

export function revisionKey(namespace: string, name: string, revision: number): string {
  return `${revisionPrefix}${namespace}/${name}/${String(revision).padStart(10, "0")}`;
}

export function revisionListPrefix(namespace: string, name: string): string {
  return `${revisionPrefix}${namespace}/${name}/`;
}

export function replicaKey(namespace: string, workload: string, id: string): string {
  return `${replicaPrefix}${namespace}/${workload}/${id}`;
}

export function replicaListPrefix(namespace: string, workload: string): string {
  return `${replicaPrefix}${namespace}/${workload}/`;
}

/** "namespace/name": how workloads are keyed inside the controllers and scheduler. */
export function workloadId(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

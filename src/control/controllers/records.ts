/**
 * Workload and replica records as the store holds them. The coordinator is the only
 * writer: API handlers write workloads, controllers write replicas, and agents'
 * status reports reach the store through the coordinator.
 */
import { z } from "zod";
import { type ReplicaPhase, replicaPhases } from "../../lib/replicaPhase.js";

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
  /**
   * The configs with `onChange: restart` the current revision was made for, by name
   * (ADR 0056): a config whose record changed since makes a new revision, which rolls.
   */
  configVersions?: ConfigStamps;
}

/** A config's version (for people) and its record's store revision (for the decision). */
export interface ConfigStamp {
  /** 0: the config did not exist when the revision was made. */
  version: number;
  modRevision: number;
}

export type ConfigStamps = Record<string, ConfigStamp>;

export interface WorkloadRevisionRecord {
  revision: number;
  templateHash: string;
  spec: unknown;
  createdAtMs: number;
  /** Set on a revision made because configs changed (onChange: restart, ADR 0056). */
  configVersions?: ConfigStamps;
  /** Why the revision was made when it was not an apply: "config changed: app v3". */
  cause?: string;
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

// ---------------------------------------------------------------------------------------------
// Codecs: each record as it is decoded where it leaves the store (lib/recordCodec.ts's
// decodeRecord). Loose objects: a field this version does not know is kept, not dropped, so
// a record read, changed and written back loses nothing a newer writer put there. Typed
// against the interfaces above, so a field added there and not here fails to compile.

const count = z.number().int().nonnegative();
const timeMs = z.number();

export const resourcesRecordSchema: z.ZodType<ResourcesRecord> = z.looseObject({
  cpuMillicores: z.number().nonnegative(),
  memoryMiB: z.number().nonnegative(),
  storageGiB: z.number().nonnegative(),
  bandwidthMbps: z.number().nonnegative(),
});

const configStampsSchema: z.ZodType<ConfigStamps> = z.record(
  z.string(),
  z.looseObject({ version: count, modRevision: count }),
);

export const workloadRecordSchema: z.ZodType<WorkloadRecord> = z.looseObject({
  uid: z.string(),
  namespace: z.string().min(1),
  name: z.string().min(1),
  revision: count,
  templateHash: z.string(),
  spec: z.unknown(),
  replicas: count,
  minAvailable: count,
  createdAtMs: timeMs,
  updatedAtMs: timeMs,
  traceparent: z.string().optional(),
  configVersions: configStampsSchema.optional(),
});

export const workloadRevisionRecordSchema: z.ZodType<WorkloadRevisionRecord> = z.looseObject({
  revision: count,
  templateHash: z.string(),
  spec: z.unknown(),
  createdAtMs: timeMs,
  configVersions: configStampsSchema.optional(),
  cause: z.string().optional(),
});

export const replicaStatusRecordSchema: z.ZodType<ReplicaStatusRecord> = z.looseObject({
  phase: z.enum(replicaPhases),
  ready: z.boolean(),
  restarts: count,
  reason: z.string(),
  message: z.string(),
  exitCode: z.number().optional(),
  startedAtMs: timeMs.optional(),
  // Tolerated absent, as the API reads it (status written before ports were reported).
  hostPorts: z.record(z.string(), z.number()).default({}),
  driver: z.string(),
  reportedAtMs: timeMs,
});

export const replicaMoveSchema: z.ZodType<ReplicaMove> = z.looseObject({
  replaces: z.string(),
  fromNode: z.string(),
  startedAtMs: timeMs,
  reason: z.string(),
  finishedAtMs: timeMs.optional(),
});

export const replicaRecordSchema: z.ZodType<ReplicaRecord> = z.looseObject({
  id: z.string().min(1),
  namespace: z.string().min(1),
  workload: z.string().min(1),
  revision: count,
  node: z.string(),
  desired: z.enum(["Running", "Stopped"]),
  resources: resourcesRecordSchema,
  createdAtMs: timeMs,
  scheduledAtMs: timeMs.optional(),
  pendingReason: z.string().optional(),
  stopRequestedAtMs: timeMs.optional(),
  status: replicaStatusRecordSchema.optional(),
  traceparent: z.string().optional(),
  move: replicaMoveSchema.optional(),
});

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

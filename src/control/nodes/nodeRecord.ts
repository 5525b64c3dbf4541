import { z } from "zod";
import type { NodeInfo } from "../../api/gen/cloudless/v1/node_pb.js";
import type { NodeStatus } from "../membership/membershipTracker.js";

/** What the store holds for a node, under /nodes/<name>. */
export interface NodeCapacityRecord {
  cpuMillicores: number;
  memoryMiB: number;
  storageGiB: number;
  iopsClass: string;
  measuredIops: number;
  egressMbps: number;
  egressSource: string;
  source: string;
}

/**
 * The agent's description of its machine as stored: the contract's NodeInfo (one
 * definition, in proto/cloudless/v1/node.proto) without protobuf's bookkeeping fields.
 */
export type NodeInfoRecord = Omit<NodeInfo, "$typeName" | "$unknown">;

export interface TaintRecord {
  key: string;
  value: string;
  effect: "NoSchedule" | "PreferNoSchedule";
}

export interface NodeRecord {
  name: string;
  uid: string;
  status: NodeStatus;
  statusReason: string;
  region: string;
  zone: string;
  labels: Record<string, string>;
  taints: TaintRecord[];
  capacity: NodeCapacityRecord;
  info: NodeInfoRecord;
  cordoned: boolean;
  draining: boolean;
  enrolledAtMs: number;
  lastTransitionAtMs: number;
  /** The certificate serials this node may present: the newest first, the previous one while it rotates. */
  certSerials: string[];
  certExpiresAtMs: number;
  address: string;
  enrollments: number;
  /**
   * The restart grace its agent announced in its last hello, as granted (after the
   * coordinator's cap); absent or 0 when none (ADR 0031).
   */
  restartGraceMs?: number;
  /**
   * While NotReady without a stream (reconnecting, restarting): when it is judged Lost
   * unless it returns. A new leader keeps it (MembershipTracker.restore).
   */
  lostDeadlineMs?: number;
}

export const nodeKeyPrefix = "/nodes/";

export function nodeKey(name: string): string {
  return nodeKeyPrefix + name;
}

export function emptyCapacity(): NodeCapacityRecord {
  return {
    cpuMillicores: 0,
    memoryMiB: 0,
    storageGiB: 0,
    iopsClass: "",
    measuredIops: 0,
    egressMbps: 0,
    egressSource: "unknown",
    source: "measured",
  };
}

export function emptyInfo(): NodeInfoRecord {
  return {
    os: "",
    arch: "",
    kernel: "",
    hostname: "",
    agentVersion: "",
    cpuModel: "",
    drivers: [],
  };
}

// ---------------------------------------------------------------------------------------------
// Codec: a node record as it is decoded where it leaves the store (lib/recordCodec.ts).
// Loose objects keep fields this version does not know; typed against the interfaces above.

const nodeCapacityRecordSchema: z.ZodType<NodeCapacityRecord> = z.looseObject({
  cpuMillicores: z.number().nonnegative(),
  memoryMiB: z.number().nonnegative(),
  storageGiB: z.number().nonnegative(),
  iopsClass: z.string(),
  measuredIops: z.number().nonnegative(),
  egressMbps: z.number().nonnegative(),
  egressSource: z.string(),
  source: z.string(),
});

const nodeInfoRecordSchema: z.ZodType<NodeInfoRecord> = z.looseObject({
  os: z.string(),
  arch: z.string(),
  kernel: z.string(),
  hostname: z.string(),
  agentVersion: z.string(),
  cpuModel: z.string(),
  drivers: z.array(z.string()),
});

const taintRecordSchema: z.ZodType<TaintRecord> = z.looseObject({
  key: z.string(),
  value: z.string(),
  effect: z.enum(["NoSchedule", "PreferNoSchedule"]),
});

export const nodeRecordSchema: z.ZodType<NodeRecord> = z.looseObject({
  name: z.string().min(1),
  uid: z.string(),
  status: z.enum(["Ready", "NotReady", "Lost", "Left"]),
  statusReason: z.string(),
  region: z.string(),
  zone: z.string(),
  labels: z.record(z.string(), z.string()),
  // Records written before taints existed have none.
  taints: z.array(taintRecordSchema).default([]),
  capacity: nodeCapacityRecordSchema,
  info: nodeInfoRecordSchema,
  cordoned: z.boolean(),
  draining: z.boolean(),
  enrolledAtMs: z.number(),
  lastTransitionAtMs: z.number(),
  certSerials: z.array(z.string()),
  certExpiresAtMs: z.number(),
  address: z.string(),
  enrollments: z.number().int().nonnegative(),
  restartGraceMs: z.number().nonnegative().optional(),
  lostDeadlineMs: z.number().optional(),
});

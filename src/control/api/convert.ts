import { create } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { type Event, EventSchema } from "../../api/gen/cloudless/v1/event_pb.js";
import {
  type Capacity,
  CapacitySchema,
  type Node,
  type NodeInfo,
  NodeInfoSchema,
  NodeSchema,
  type ReplicaReport,
  type Taint,
  TaintSchema,
} from "../../api/gen/cloudless/v1/node_pb.js";
import { type TokenInfo, TokenInfoSchema } from "../../api/gen/cloudless/v1/token_pb.js";
import type { ReportedReplica } from "../controllers/replicaStatusWriter.js";
import type { ClusterEvent } from "../events/eventLog.js";
import type {
  NodeCapacityRecord,
  NodeInfoRecord,
  NodeRecord,
  TaintRecord,
} from "../nodes/nodeRecord.js";
import { emptyPlacements, type NodePlacements } from "../nodes/placements.js";
import type { TokenRecord } from "../tokens/tokenRegistry.js";

export function nodeToProto(
  record: NodeRecord,
  lastHeartbeatMs: number | undefined,
  placed: NodePlacements = emptyPlacements(),
): Node {
  return create(NodeSchema, {
    name: record.name,
    uid: record.uid,
    status: record.status,
    statusReason: record.statusReason,
    region: record.region,
    zone: record.zone,
    labels: record.labels,
    taints: (record.taints ?? []).map((taint) => create(TaintSchema, taint)),
    capacity: capacityToProto(record.capacity),
    info: create(NodeInfoSchema, record.info),
    cordoned: record.cordoned,
    draining: record.draining,
    enrolledAt: timestampFromMs(record.enrolledAtMs),
    lastTransitionAt: timestampFromMs(record.lastTransitionAtMs),
    lastHeartbeatAt: lastHeartbeatMs === undefined ? undefined : timestampFromMs(lastHeartbeatMs),
    certExpiresAt: timestampFromMs(record.certExpiresAtMs),
    address: record.address,
    enrollments: record.enrollments,
    replicaCount: placed.replicaCount,
    allocated: create(CapacitySchema, {
      cpuMillicores: Math.round(placed.allocated.cpuMillicores),
      memoryMib: Math.round(placed.allocated.memoryMiB),
      storageGib: placed.allocated.storageGiB,
      egressMbps: Math.round(placed.allocated.bandwidthMbps),
    }),
    lostDeadline:
      record.status === "NotReady" && record.lostDeadlineMs !== undefined
        ? timestampFromMs(record.lostDeadlineMs)
        : undefined,
    restartGraceMs: record.restartGraceMs ?? 0,
  });
}

export function reportFromProto(report: ReplicaReport): ReportedReplica {
  return {
    replicaId: report.replicaId,
    phase: report.phase,
    ready: report.ready,
    restarts: report.restarts,
    reason: report.reason,
    message: report.message,
    ...(report.phase === "Failed" || report.phase === "Succeeded" || report.exitCode !== 0
      ? { exitCode: report.exitCode }
      : {}),
    ...(report.startedAt ? { startedAtMs: timestampMs(report.startedAt) } : {}),
    hostPorts: { ...report.hostPorts },
    driver: report.driver,
  };
}

export function taintsFromProto(taints: readonly Taint[]): TaintRecord[] {
  return taints.map((taint) => ({
    key: taint.key,
    value: taint.value,
    effect: taint.effect === "PreferNoSchedule" ? "PreferNoSchedule" : "NoSchedule",
  }));
}

export function capacityToProto(capacity: NodeCapacityRecord): Capacity {
  return create(CapacitySchema, {
    cpuMillicores: Math.round(capacity.cpuMillicores),
    memoryMib: Math.round(capacity.memoryMiB),
    storageGib: capacity.storageGiB,
    iopsClass: capacity.iopsClass,
    measuredIops: Math.round(capacity.measuredIops),
    egressMbps: Math.round(capacity.egressMbps),
    egressSource: capacity.egressSource,
    source: capacity.source,
  });
}

export function capacityFromProto(capacity: Capacity | undefined): NodeCapacityRecord {
  return {
    cpuMillicores: capacity?.cpuMillicores ?? 0,
    memoryMiB: capacity?.memoryMib ?? 0,
    storageGiB: capacity?.storageGib ?? 0,
    iopsClass: capacity?.iopsClass ?? "",
    measuredIops: capacity?.measuredIops ?? 0,
    egressMbps: capacity?.egressMbps ?? 0,
    egressSource: capacity?.egressSource || "unknown",
    source: capacity?.source || "measured",
  };
}

export function infoFromProto(info: NodeInfo | undefined): NodeInfoRecord {
  return {
    os: info?.os ?? "",
    arch: info?.arch ?? "",
    kernel: info?.kernel ?? "",
    hostname: info?.hostname ?? "",
    agentVersion: info?.agentVersion ?? "",
    cpuModel: info?.cpuModel ?? "",
    drivers: [...(info?.drivers ?? [])],
  };
}

export function eventToProto(event: ClusterEvent): Event {
  return create(EventSchema, {
    id: event.id,
    time: timestampFromMs(event.timeMs),
    type: event.type,
    category: event.category,
    subject: event.subject,
    reason: event.reason,
    message: event.message,
    actor: event.actor,
    attributes: event.attributes,
  });
}

export function tokenToProto(record: TokenRecord): TokenInfo {
  return create(TokenInfoSchema, {
    id: record.id,
    description: record.description,
    createdAt: timestampFromMs(record.createdAtMs),
    expiresAt: timestampFromMs(record.expiresAtMs),
    usedAt: record.usedAtMs === undefined ? undefined : timestampFromMs(record.usedAtMs),
    usedBy: record.usedBy ?? "",
  });
}

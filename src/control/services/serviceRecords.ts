/**
 * What the services module keeps in the store (ADR 0048): a record per service with its
 * VIP, so the VIP survives rollouts, rescheduling, coordinator restarts and leader
 * changes; and a record per node with what its agent last reported of its mesh side, so
 * `network peers` answers on any coordinator. Both decoded at the edge (recordCodec).
 */
import { z } from "zod";

export const serviceRecordPrefix = "/services/";
export const meshPeerRecordPrefix = "/meshpeers/";

export interface ServiceRecord {
  vip: string;
  /** The ports the service had when last written (for reading the record by hand). */
  ports: { name: string; port: number }[];
  createdAtMs: number;
}

export const serviceRecordSchema: z.ZodType<ServiceRecord> = z.looseObject({
  vip: z.string(),
  ports: z.array(z.looseObject({ name: z.string(), port: z.number().int() })),
  createdAtMs: z.number(),
});

export function serviceRecordKey(namespace: string, name: string): string {
  return `${serviceRecordPrefix}${namespace}/${name}`;
}

export interface PeerPathRecord {
  node: string;
  path: string;
  via: string;
  address: string;
  rttMs: number;
  bytesSent: number;
  bytesReceived: number;
  changedAtMs: number;
  activeFlows: number;
}

export interface MeshPeerRecord {
  node: string;
  meshPort: number;
  addresses: string[];
  relay: boolean;
  peers: PeerPathRecord[];
  reportedAtMs: number;
}

export const meshPeerRecordSchema: z.ZodType<MeshPeerRecord> = z.looseObject({
  node: z.string(),
  meshPort: z.number().int(),
  addresses: z.array(z.string()),
  relay: z.boolean(),
  peers: z.array(
    z.looseObject({
      node: z.string(),
      path: z.string(),
      via: z.string(),
      address: z.string(),
      rttMs: z.number(),
      bytesSent: z.number(),
      bytesReceived: z.number(),
      changedAtMs: z.number(),
      activeFlows: z.number(),
    }),
  ),
  reportedAtMs: z.number(),
});

export function meshPeerRecordKey(node: string): string {
  return `${meshPeerRecordPrefix}${node}`;
}

/** The fields of a report that are not counters: a change of one is written at once. */
export function reportShape(record: MeshPeerRecord): string {
  return JSON.stringify([
    record.meshPort,
    record.addresses,
    record.relay,
    record.peers.map((p) => [p.node, p.path, p.via, p.address]),
  ]);
}

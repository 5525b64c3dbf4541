/** Services, endpoints and peers as the API and the heartbeat stream carry them. */
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type MeshPeer,
  MeshPeerSchema,
  type NodePeers,
  NodePeersSchema,
  PeerPathSchema,
  type Service,
  ServiceEndpointSchema,
  ServicePortSchema,
  ServiceSchema,
} from "../../api/gen/cloudless/v1/service_pb.js";
import type { NodeRecord } from "../nodes/nodeRecord.js";
import type { ServiceView } from "./endpoints.js";
import type { MeshPeerRecord, ServiceRecord } from "./serviceRecords.js";

export function dnsNameOf(namespace: string, name: string, clusterDomain: string): string {
  return `${name}.${namespace}.svc.${clusterDomain}`;
}

export function serviceToProto(
  view: ServiceView,
  record: ServiceRecord | undefined,
  clusterDomain: string,
): Service {
  return create(ServiceSchema, {
    namespace: view.namespace,
    name: view.name,
    dnsName: dnsNameOf(view.namespace, view.name, clusterDomain),
    vip: record?.vip ?? "",
    ports: view.ports.map((p) =>
      create(ServicePortSchema, { name: p.name, port: p.port, protocol: "tcp" }),
    ),
    endpoints: view.endpoints.map((e) =>
      create(ServiceEndpointSchema, {
        replicaId: e.replicaId,
        node: e.node,
        zone: e.zone,
        region: e.region,
        ready: e.ready,
        weight: e.weight,
        hostPorts: e.hostPorts,
        revision: BigInt(e.revision),
        workload: e.workload,
      }),
    ),
    workloads: view.workloads,
    ...(record ? { createdAt: timestampFromMs(record.createdAtMs) } : {}),
  });
}

/**
 * The host of "host:port" as peer.ts writes it ("1.2.3.4:5", "::ffff:1.2.3.4:5",
 * "::1:5"), IPv4-mapped IPv6 unwrapped; "" when there is none.
 */
export function hostOfObserved(address: string): string {
  const colon = address.lastIndexOf(":");
  if (colon <= 0) return "";
  const host = address.slice(0, colon);
  if (host === "unknown") return "";
  return host.startsWith("::ffff:") && host.includes(".") ? host.slice("::ffff:".length) : host;
}

/**
 * A member node as the mesh knows it: its advertised addresses first (what the operator
 * said), then the one the coordinator observed on its stream (what NAT shows).
 */
export function meshPeerOf(node: NodeRecord, report: MeshPeerRecord | undefined): MeshPeer {
  const addresses = [...(report?.addresses ?? [])];
  const observed = hostOfObserved(node.address);
  if (observed !== "" && !addresses.includes(observed)) addresses.push(observed);
  return create(MeshPeerSchema, {
    node: node.name,
    zone: node.zone,
    region: node.region,
    addresses,
    meshPort: report?.meshPort ?? 0,
    relay: report?.relay ?? false,
    enrolledAt: timestampFromMs(node.enrolledAtMs),
  });
}

export function nodePeersToProto(record: MeshPeerRecord): NodePeers {
  return create(NodePeersSchema, {
    node: record.node,
    meshPort: record.meshPort,
    addresses: record.addresses,
    relay: record.relay,
    reportedAt: timestampFromMs(record.reportedAtMs),
    peers: record.peers.map((p) =>
      create(PeerPathSchema, {
        node: p.node,
        path: p.path,
        via: p.via,
        address: p.address,
        rttMs: p.rttMs,
        bytesSent: BigInt(Math.max(0, Math.trunc(p.bytesSent))),
        bytesReceived: BigInt(Math.max(0, Math.trunc(p.bytesReceived))),
        activeFlows: p.activeFlows,
        ...(p.changedAtMs > 0 ? { changedAt: timestampFromMs(p.changedAtMs) } : {}),
      }),
    ),
  });
}

import type { PeerCertificate } from "node:tls";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ClusterService } from "../gen/cloudless/v1/cluster_pb.js";
import { EventService } from "../gen/cloudless/v1/event_pb.js";
import { NodeService } from "../gen/cloudless/v1/node_pb.js";
import { TokenService } from "../gen/cloudless/v1/token_pb.js";
import { WorkloadService } from "../gen/cloudless/v1/workload_pb.js";

export interface TransportOptions {
  baseUrl: string;
  /** Absent only for enrollment, before the cluster name is known (the CA is pinned). */
  clusterName?: string;
  caPem: string;
  /** Absent only for enrollment, which authenticates with a token instead. */
  certPem?: string;
  keyPem?: string;
  /** Deadline for unary calls. */
  timeoutMs?: number;
}

/**
 * An mTLS gRPC transport that trusts only the cluster CA and only a peer whose
 * certificate names a coordinator of this cluster, whatever address it was dialled
 * on — a node certificate from the same CA cannot pose as the coordinator.
 */
export function createCoordinatorTransport(options: TransportOptions): Transport {
  return createGrpcTransport({
    baseUrl: options.baseUrl,
    defaultTimeoutMs: options.timeoutMs ?? 15_000,
    pingIntervalMs: 10_000,
    pingTimeoutMs: 5_000,
    idleConnectionTimeoutMs: 60_000,
    nodeOptions: {
      ca: options.caPem,
      ...(options.certPem ? { cert: options.certPem } : {}),
      ...(options.keyPem ? { key: options.keyPem } : {}),
      rejectUnauthorized: true,
      checkServerIdentity: (_host: string, certificate: PeerCertificate) =>
        checkCoordinatorIdentity(certificate, options.clusterName),
    },
  });
}

export function checkCoordinatorIdentity(
  certificate: PeerCertificate,
  clusterName: string | undefined,
): Error | undefined {
  const names = (certificate.subjectaltname ?? "").split(", ");
  const isCoordinator = (name: string) => {
    const match = /^URI:spiffe:\/\/([^/]+)\/coordinator\/[^/]+$/.exec(name);
    return match !== null && (clusterName === undefined || match[1] === clusterName);
  };
  if (names.some(isCoordinator)) return undefined;
  return new Error(
    `the server's certificate does not belong to a coordinator of cluster "${clusterName ?? "?"}"`,
  );
}

export interface CoordinatorClients {
  nodes: Client<typeof NodeService>;
  tokens: Client<typeof TokenService>;
  events: Client<typeof EventService>;
  workloads: Client<typeof WorkloadService>;
  cluster: Client<typeof ClusterService>;
}

export function createClients(transport: Transport): CoordinatorClients {
  return {
    nodes: createClient(NodeService, transport),
    tokens: createClient(TokenService, transport),
    events: createClient(EventService, transport),
    workloads: createClient(WorkloadService, transport),
    cluster: createClient(ClusterService, transport),
  };
}

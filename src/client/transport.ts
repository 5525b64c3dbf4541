import type * as http2 from "node:http2";
import type { PeerCertificate } from "node:tls";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { ClusterService } from "../api/gen/cloudless/v1/cluster_pb.js";
import { ConfigService } from "../api/gen/cloudless/v1/config_pb.js";
import { EventService } from "../api/gen/cloudless/v1/event_pb.js";
import { NodeService } from "../api/gen/cloudless/v1/node_pb.js";
import { PolicyService } from "../api/gen/cloudless/v1/policy_pb.js";
import { SecretService } from "../api/gen/cloudless/v1/secret_pb.js";
import { ServiceService } from "../api/gen/cloudless/v1/service_pb.js";
import { TokenService } from "../api/gen/cloudless/v1/token_pb.js";
import { UserService } from "../api/gen/cloudless/v1/user_pb.js";
import { WorkloadService } from "../api/gen/cloudless/v1/workload_pb.js";
import { namesCoordinator } from "../api/identity.js";

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
  const nodeOptions = {
    ca: options.caPem,
    ...(options.certPem ? { cert: options.certPem } : {}),
    ...(options.keyPem ? { key: options.keyPem } : {}),
    rejectUnauthorized: true,
    checkServerIdentity: (_host: string, certificate: PeerCertificate) =>
      checkCoordinatorIdentity(certificate, options.clusterName),
  };
  return createGrpcTransport({
    baseUrl: options.baseUrl,
    defaultTimeoutMs: options.timeoutMs ?? 15_000,
    nodeOptions,
    sessionManager: new SessionErrorGuard(
      new Http2SessionManager(
        options.baseUrl,
        { pingIntervalMs: 10_000, pingTimeoutMs: 5_000, idleConnectionTimeoutMs: 60_000 },
        nodeOptions,
      ),
    ),
  });
}

/** What connect-node's transports take as a session manager (its type is not exported). */
type NodeHttp2ClientSessionManager = NonNullable<
  Parameters<typeof createGrpcTransport>[0]["sessionManager"]
>;

/** The guard's listener: the session is already destroyed, its streams already failed. */
export function ignoreLateSessionError(): void {}

/**
 * connect-node's session manager destroys an HTTP/2 session with an error when a PING
 * is answered later than pingTimeoutMs (an event loop stalled for seconds), and it can do
 * so after it removed its own "error" listeners from that session: the error is then an
 * uncaught exception. The agent daemon has a last-resort handler for it; the hollow
 * simulator counted them (1,876 of 2,000 nodes in one loaded benchmark), and any other
 * process (the CLI, an embedding) would exit. Every session handed out here keeps a
 * listener of ours for life: such an error still fails the session's streams (callers
 * reconnect); it no longer becomes an uncaught exception.
 */
export class SessionErrorGuard implements NodeHttp2ClientSessionManager {
  private readonly guarded = new WeakSet<http2.ClientHttp2Session>();

  constructor(private readonly inner: NodeHttp2ClientSessionManager) {}

  get authority(): string {
    return this.inner.authority;
  }

  async request(
    method: string,
    path: string,
    headers: http2.OutgoingHttpHeaders,
    options: Omit<http2.ClientSessionRequestOptions, "signal">,
  ): Promise<http2.ClientHttp2Stream> {
    const stream = await this.inner.request(method, path, headers, options);
    const session = stream.session as http2.ClientHttp2Session | undefined;
    if (session && !this.guarded.has(session)) {
      this.guarded.add(session);
      session.on("error", ignoreLateSessionError);
    }
    return stream;
  }

  notifyResponseByteRead(stream: http2.ClientHttp2Stream): void {
    this.inner.notifyResponseByteRead(stream);
  }
}

export function checkCoordinatorIdentity(
  certificate: PeerCertificate,
  clusterName: string | undefined,
): Error | undefined {
  if (namesCoordinator(certificate.subjectaltname ?? "", clusterName)) return undefined;
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
  services: Client<typeof ServiceService>;
  users: Client<typeof UserService>;
  secrets: Client<typeof SecretService>;
  policies: Client<typeof PolicyService>;
  configs: Client<typeof ConfigService>;
}

export function createClients(transport: Transport): CoordinatorClients {
  return {
    nodes: createClient(NodeService, transport),
    tokens: createClient(TokenService, transport),
    events: createClient(EventService, transport),
    workloads: createClient(WorkloadService, transport),
    cluster: createClient(ClusterService, transport),
    services: createClient(ServiceService, transport),
    users: createClient(UserService, transport),
    secrets: createClient(SecretService, transport),
    policies: createClient(PolicyService, transport),
    configs: createClient(ConfigService, transport),
  };
}

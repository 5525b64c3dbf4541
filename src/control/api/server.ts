import type { IncomingMessage, ServerResponse } from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { Code, createContextValues } from "@connectrpc/connect";
import { CloudlessError, toConnectError } from "../../api/errors.js";
import { NodeService } from "../../api/gen/cloudless/v1/node_pb.js";
import { WorkloadService } from "../../api/gen/cloudless/v1/workload_pb.js";
import { limits, specTooLargeMessage } from "../../api/limits.js";
import type { Clock } from "../../lib/clock.js";
import { RELAY_SESSION_WINDOW_BYTES, relayHttp2Settings } from "../../lib/mesh/relayClient.js";
import type { Rng } from "../../lib/rng.js";
import type { AuditLog } from "../../observe/audit.js";
import type { Logger } from "../../observe/logger.js";
import type { CoordinatorMetrics } from "../../observe/metrics.js";
import { metricsPath } from "../../observe/metrics.js";
import type { EventLog } from "../events/eventLog.js";
import type { StreamRoute } from "../modules/module.js";
import type { NodeRegistry } from "../nodes/nodeRegistry.js";
import { type Store, StoreError } from "../store/store.js";
import type { UserRegistry } from "../users/userRegistry.js";
import { type AuditedMethods, auditInterceptor, auditRefusal } from "./audit.js";
import { authorizationInterceptor } from "./authorization.js";
import { errorMappingInterceptor } from "./errorInterceptor.js";
import { encodeGrpcMessagesPerSpec, percentEncodeGrpcMessage } from "./grpcMessage.js";
import {
  countRefusedRequest,
  formerMemberMessage,
  metricsInterceptor,
  proceduresOf,
  serveMetrics,
} from "./metricsInterceptor.js";
import { cappedNodeAdapter } from "./nodeAdapter.js";
import { isCurrentMember, type Peer, peerKey, resolvePeer } from "./peer.js";
import { requestContextInterceptor, requestLogger } from "./requestContext.js";

/** The only method that answers without a client certificate: it requires a token. */
const enrollPath = `/${NodeService.typeName}/${NodeService.method.enroll.name}`;

/** Largest request message accepted; bigger ones are refused before they are parsed. */
export const readMaxBytes = limits.requestBytes;
const applyWorkloadPath = `/${WorkloadService.typeName}/${WorkloadService.method.applyWorkload.name}`;
const tlsHandshakeTimeoutMs = 10_000;
const maxConnections = 20_000;

export interface ApiServerOptions {
  host: string;
  port: number;
  tls: { keyPem: string; certPem: string; caPem: string };
}

/** What the listener itself needs; the services it serves come from the modules' routes. */
export interface ApiServerServices {
  clusterName: string;
  /** /readyz asks it for its revision. */
  store: Store;
  /** A deleted node's certificate is refused: membership is checked per request. */
  nodes: NodeRegistry;
  /** A revoked user's certificate is refused the same way (ADR 0051). */
  users: UserRegistry;
  events: EventLog;
  audit: AuditLog;
  /** The modules' raw stream endpoints (the mesh relay); absent: none. */
  streamRoutes?: readonly StreamRoute[];
  /** The modules' state-changing methods: these enter the audit log (NFR-C1). */
  audited: AuditedMethods;
  clock: Clock;
  rng: Rng;
  logger: Logger;
  metrics: CoordinatorMetrics;
  /** Registers every module's API services. */
  routes: (router: ConnectRouter) => void;
}

export interface ApiServer {
  port: number;
  close(): Promise<void>;
}

/**
 * One listener serves gRPC, gRPC-web and Connect (HTTP/JSON) from the same handlers
 * over TLS. Every request but Enroll must carry a client certificate from the
 * cluster CA. Plain-text HTTP on the port gets a one-line hint instead of silence.
 */
export async function startApiServer(
  services: ApiServerServices,
  options: ApiServerOptions,
): Promise<ApiServer> {
  const authenticationFailures = new RateLimitedRecorder(10_000, services.clock);
  const permissionDenials = new RateLimitedRecorder(10_000, services.clock);

  const recordAuthenticationFailure = (peer: Peer, methodName: string, reason: string) =>
    authenticationFailures.maybeRecord(peer.address, () =>
      services.events.record({
        type: "AuthenticationFailed",
        category: "security",
        subject: `peer/${peer.address}`,
        reason: "NoValidClientCertificate",
        message: `${methodName} refused: ${reason}`,
        actor: `anonymous@${peer.address}`,
      }),
    );
  const unauthenticatedMessage = (reason: string) =>
    `${reason}; use the admin config written by \`cloudless up\` (--config) or a node certificate`;

  const authenticate: Interceptor = (next) => async (request) => {
    const isEnroll = request.url.endsWith(enrollPath);
    const peer = request.contextValues.get(peerKey);
    if (!isEnroll && !peer.identity) {
      const reason = peer.refusal ?? "no client certificate was presented";
      recordAuthenticationFailure(peer, request.method.name, reason);
      throw toConnectError(CloudlessError.unauthenticated(unauthenticatedMessage(reason)));
    }
    if (peer.identity && !isEnroll) {
      if (!(await isCurrentMember(services, peer.identity))) {
        recordAuthenticationFailure(
          peer,
          request.method.name,
          `${peer.identity.kind} "${peer.identity.name}" presented a revoked certificate`,
        );
        throw toConnectError(
          CloudlessError.unauthenticated(
            peer.identity.kind === "user"
              ? `the certificate of user "${peer.identity.name}" was revoked or replaced; ask an admin for a new client config (\`cloudless user create\`)`
              : `node "${peer.identity.name}" is no longer a member of this cluster (deleted or re-enrolled); join again with a new token`,
          ),
        );
      }
    }
    return next(request);
  };

  const mapErrors = errorMappingInterceptor((error, mapped, request) => {
    if (mapped.code === Code.PermissionDenied) {
      // Security decisions are events (REQ-071); at most one per caller per method per
      // 10 s, so a misbehaving client cannot flood the log.
      const peer = request.contextValues.get(peerKey);
      const actor = peer.identity ? `${peer.identity.kind}/${peer.identity.name}` : "anonymous";
      permissionDenials.maybeRecord(`${actor}|${request.method.name}`, () =>
        services.events.record({
          type: "PermissionDenied",
          category: "security",
          subject: `${actor}`,
          reason: "NotAuthorized",
          message: `${request.method.name} refused: ${mapped.rawMessage}`,
          actor,
          attributes: { address: peer.address, method: request.method.name },
        }),
      );
    }
    if (mapped.code === 13) {
      // The request's logger names the method and carries its reqId (and traceId).
      requestLogger({ values: request.contextValues }, services.logger).error(
        { err: error },
        "internal error",
      );
    } else if (error instanceof StoreError) {
      // The caller got one line; the store's own words (endpoints, etcd's error) are here.
      requestLogger({ values: request.contextValues }, services.logger).warn(
        { err: error },
        `store failure answered as ${Code[mapped.code]}: ${mapped.rawMessage}`,
      );
    }
  });

  // Refused requests are counted by method for the procedures the modules serve.
  const procedures = proceduresOf(services.routes);

  const handler = cappedNodeAdapter({
    routes: services.routes,
    // A spec too large to read gets the answer of one too large to accept: one limit,
    // one error, whatever the size (issue 12).
    caps: new Map([
      [
        applyWorkloadPath,
        {
          maxBytes: readMaxBytes,
          refusal: () => toConnectError(CloudlessError.invalid(specTooLargeMessage())),
        },
      ],
    ]),
    // Request ID, logger and trace span outermost, so they cover everything; then
    // metrics and audit: they see the codes of refusals by the others.
    interceptors: [
      requestContextInterceptor(services.logger, services.rng),
      metricsInterceptor(services.metrics),
      auditInterceptor(services),
      mapErrors,
      authenticate,
      // Roles (ADR 0051): after authentication, before any handler.
      authorizationInterceptor(services),
    ],
    readMaxBytes,
    // HTTP/JSON requests with a field the method does not have are refused
    // (InvalidArgument naming the key) rather than half-understood: `{"nmae": "x"}`
    // must not act on an empty name. Binary gRPC keeps protobuf's rule (unknown fields
    // are skipped), which lets older and newer agents and CLIs talk to each other.
    jsonOptions: { ignoreUnknownFields: false },
    contextValues: (request) =>
      createContextValues().set(peerKey, resolvePeer(request, services.clusterName)),
    fallback: (request, response) => {
      const peer: Peer = resolvePeer(request, services.clusterName);
      response.writeHead(peer.identity ? 404 : 401, { "content-type": "application/json" });
      response.end(
        JSON.stringify(
          peer.identity
            ? { code: "not_found", message: "no such method" }
            : { code: "unauthenticated", message: "a client certificate is required" },
        ),
      );
    },
  });

  // A caller without a valid client certificate is refused before its request body is
  // read or parsed: only Enroll (which carries a token) is open to it.
  const guarded = (
    request: http2.Http2ServerRequest | IncomingMessage,
    response: http2.Http2ServerResponse | ServerResponse,
  ) => {
    const peer = resolvePeer(request, services.clusterName);
    const pathname = (request.url ?? "").split("?")[0] ?? "";
    // Prometheus metrics (REQ-070): for cluster identities only, like everything else.
    if (pathname === metricsPath && peer.identity) {
      serveMetrics(services, peer, request, response).catch(() => response.destroy());
      return;
    }
    // Health for supervisors (/healthz: the process serves; /readyz: it can reach its
    // store). Like everything else they need a cluster certificate, and they answer only
    // "ok" or "not ready" so they reveal nothing.
    if ((pathname === "/healthz" || pathname === "/readyz") && peer.identity) {
      serveHealth(services, peer, pathname, response).catch(() => response.destroy());
      return;
    }
    const streamRoute = services.streamRoutes?.find((route) => pathname.startsWith(route.prefix));
    if (streamRoute && peer.identity) {
      serveStreamRoute(services, streamRoute, peer.identity, request, response).catch(() =>
        response.destroy(),
      );
      return;
    }
    if (peer.identity || pathname === enrollPath) {
      if (String(request.headers["content-type"] ?? "").startsWith("application/grpc")) {
        encodeGrpcMessagesPerSpec(response);
      }
      handler(request, response);
      return;
    }
    const reason = peer.refusal ?? "no client certificate was presented";
    recordAuthenticationFailure(peer, pathname.split("/").pop() || pathname, reason);
    countRefusedRequest(services.metrics, pathname, procedures);
    const message = unauthenticatedMessage(reason);
    // The refusal is sent once its audit entry (if the method is audited) is on disk.
    auditRefusal(services, peer, pathname, message)
      .then(() => refuseUnauthenticated(request, response, message))
      .catch(() => response.destroy());
  };

  const tlsServer = http2.createSecureServer(
    {
      key: options.tls.keyPem,
      // Sending the CA with the leaf lets a joining agent pin it by fingerprint.
      cert: options.tls.certPem + options.tls.caPem,
      ca: options.tls.caPem,
      requestCert: true,
      // Enrollment needs no certificate; everything else is refused by `authenticate`.
      rejectUnauthorized: false,
      allowHTTP1: true,
      minVersion: "TLSv1.2",
      handshakeTimeout: tlsHandshakeTimeoutMs,
      // Relay streams (the mesh relay module) need wider windows than the 64 KiB default,
      // which would cap a relayed flow at one window per round trip.
      settings: { maxConcurrentStreams: 1000, ...relayHttp2Settings },
    },
    guarded,
  );
  tlsServer.on("tlsClientError", (error) => {
    services.logger.debug({ err: error }, "TLS handshake failed");
  });
  tlsServer.on("session", (session) => {
    try {
      session.setLocalWindowSize(RELAY_SESSION_WINDOW_BYTES);
    } catch {
      // A session torn down before its settings were exchanged: nothing to widen.
    }
  });
  tlsServer.on("sessionError", (error) => {
    services.logger.debug({ err: error }, "HTTP/2 session error");
  });

  const sockets = new Set<net.Socket>();
  const listener = net.createServer({ pauseOnConnect: true }, (socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    socket.setTimeout(tlsHandshakeTimeoutMs, () => socket.destroy());
    socket.once("readable", () => {
      const head: Buffer | null = socket.read(1);
      if (!head) {
        socket.destroy();
        return;
      }
      socket.setTimeout(0);
      socket.unshift(head);
      // 0x16 is a TLS handshake record; anything else is plain text or garbage.
      if (head[0] === 0x16) {
        tlsServer.emit("connection", socket);
      } else {
        refusePlainText(socket);
      }
    });
    socket.resume();
    socket.pause();
  });
  listener.maxConnections = maxConnections;

  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(options.port, options.host, () => {
      listener.off("error", reject);
      resolve();
    });
  });
  const address = listener.address() as net.AddressInfo;

  return {
    port: address.port,
    async close() {
      await new Promise<void>((resolve) => {
        listener.close(() => resolve());
        tlsServer.close();
        for (const socket of sockets) socket.destroy();
      });
    },
  };
}

/**
 * Answers an unauthenticated request in its own protocol without reading its body:
 * gRPC and gRPC-web get a trailers-only Unauthenticated status, Connect streaming an
 * end-stream error, everything else (Connect unary, HTTP/JSON) a 401.
 */
function refuseUnauthenticated(
  request: http2.Http2ServerRequest | IncomingMessage,
  response: http2.Http2ServerResponse | ServerResponse,
  message: string,
): void {
  const contentType = String(request.headers["content-type"] ?? "").toLowerCase();
  const reply = response as ServerResponse;
  if (contentType.startsWith("application/grpc")) {
    reply.writeHead(200, {
      "content-type": contentType,
      "grpc-status": String(Code.Unauthenticated),
      "grpc-message": percentEncodeGrpcMessage(message),
    });
    reply.end();
  } else if (contentType.startsWith("application/connect+")) {
    const error = Buffer.from(JSON.stringify({ error: { code: "unauthenticated", message } }));
    const envelope = Buffer.alloc(5);
    envelope[0] = 0b10; // end-stream flag
    envelope.writeUInt32BE(error.length, 1);
    reply.writeHead(200, { "content-type": contentType });
    reply.end(Buffer.concat([envelope, error]));
  } else {
    reply.writeHead(401, { "content-type": "application/json" });
    reply.end(JSON.stringify({ code: "unauthenticated", message }));
  }
}

const readinessTimeoutMs = 1_000;

/** A module's raw stream endpoint, for a verified caller that is still a member. */
async function serveStreamRoute(
  services: ApiServerServices,
  route: StreamRoute,
  identity: NonNullable<Peer["identity"]>,
  request: http2.Http2ServerRequest | IncomingMessage,
  response: http2.Http2ServerResponse | ServerResponse,
): Promise<void> {
  if (!(await isCurrentMember(services, identity))) {
    const reply = response as ServerResponse;
    reply.writeHead(401, { "content-type": "application/json" });
    reply.end(JSON.stringify({ code: "unauthenticated", message: formerMemberMessage }));
    return;
  }
  route.handle(request as http2.Http2ServerRequest, response as http2.Http2ServerResponse, {
    kind: identity.kind,
    name: identity.name,
  });
}

async function serveHealth(
  services: ApiServerServices,
  peer: Peer,
  pathname: string,
  response: http2.Http2ServerResponse | ServerResponse,
): Promise<void> {
  const reply = response as ServerResponse;
  // A deleted node's certificate still chains to the CA; like the API, health refuses it.
  if (!peer.identity || !(await isCurrentMember(services, peer.identity))) {
    reply.writeHead(401, { "content-type": "application/json" });
    reply.end(JSON.stringify({ code: "unauthenticated", message: formerMemberMessage }));
    return;
  }
  let ready = true;
  if (pathname === "/readyz") {
    let timer: NodeJS.Timeout | undefined;
    ready = await Promise.race([
      services.store.currentRevision().then(
        () => true,
        () => false,
      ),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), readinessTimeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }
  reply.writeHead(ready ? 200 : 503, { "content-type": "text/plain" });
  reply.end(ready ? "ok\n" : "not ready\n");
}

function refusePlainText(socket: net.Socket): void {
  const body =
    "this port speaks TLS only and requires a client certificate; use https:// with the cluster CA\n";
  socket.end(
    `HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}

/** Records at most one event per key per interval, so a scanner cannot flood the event log. */
class RateLimitedRecorder {
  private readonly lastMs = new Map<string, number>();
  constructor(
    private readonly intervalMs: number,
    private readonly clock: Clock,
  ) {}
  maybeRecord(key: string, record: () => Promise<void>): void {
    const host = key.replace(/:\d+$/, "");
    const now = this.clock.nowMs();
    if (now - (this.lastMs.get(host) ?? 0) < this.intervalMs) return;
    if (this.lastMs.size > 10_000) this.lastMs.clear();
    this.lastMs.set(host, now);
    record().catch(() => undefined);
  }
}

/**
 * The agent's mesh node (issue 14; REQ-040, REQ-060, REQ-003; ADR 0046): the L4 mutual-TLS
 * transport between agents.
 *
 * - One TLS 1.3 listener with the node certificate. ALPN `cloudless-mesh/1` carries one
 *   flow per connection (a header line names the target replica, the acceptor connects to
 *   it on 127.0.0.1 and pipes); ALPN `h2` is the relay hub, when the node serves as a relay.
 *   Both ends check each other: a node certificate of this cluster, of a current member,
 *   issued to the member's current incarnation (peerCheck.ts).
 * - `dial` reaches a replica on another node: directly at the peer's advertised addresses,
 *   or relayed through a coordinator or a --relay node, with TLS end to end inside the
 *   relayed stream so the relay sees only ciphertext. A path table per peer says which,
 *   with RTT and bytes; a background round re-probes direct paths of relayed peers and
 *   pings the peers in use.
 * - Every node keeps a listen stream to each relay it knows, so nodes behind NAT can be
 *   reached through it.
 */
import * as http2 from "node:http2";
import * as net from "node:net";
import type { Duplex } from "node:stream";
import * as tls from "node:tls";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type MeshPeer,
  type PeerPath,
  PeerPathSchema,
} from "../../../api/gen/cloudless/v1/service_pb.js";
import type { Clock } from "../../../lib/clock.js";
import {
  DeadlineError,
  encodeFlowHeader,
  encodeFlowReply,
  type FlowCounters,
  type FlowHeader,
  MAX_FLOW_HEADER_BYTES,
  MESH_ALPN,
  parseFlowHeader,
  parseFlowReply,
  pipeFlow,
  readLine,
} from "../../../lib/mesh/flowHeader.js";
import {
  MAX_RELAY_LINE_BYTES,
  openRelaySession,
  parseHostPort,
  RELAY_SESSION_WINDOW_BYTES,
  type RelayAccept,
  readListenStream,
  relayHttp2Settings,
  relayPaths,
  relayRequest,
} from "../../../lib/mesh/relayClient.js";
import { handleRelayRequest, RELAY_PATH_PREFIX, RelayHub } from "../../../lib/mesh/relayHub.js";
import { startStopwatch } from "../../../lib/stopwatch.js";
import type { Logger } from "../../../observe/logger.js";
import { endSpan, extractContext, spanKind, startSpan } from "../../../observe/tracing.js";
import {
  checkNodeCertificate,
  checkRelayCertificate,
  checkSocketPeer,
  type RelayExpectation,
} from "./peerCheck.js";

export interface MeshIdentity {
  clusterName: string;
  nodeName: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

export interface MeshTarget {
  namespace: string;
  service: string;
  port: string;
  replicaId: string;
}

export interface MeshNodeOptions {
  /** Read per handshake: certificates renew. */
  identity: () => MeshIdentity;
  /** Listen address; port 0 = ephemeral. */
  host: string;
  port: number;
  /** Serve the relay hub for others (--relay). */
  relay: boolean;
  /** The 127.0.0.1 port of a replica of that service port running on this node, or undefined. */
  resolveLocal: (target: MeshTarget) => number | undefined;
  logger: Logger;
  clock: Clock;
  /**
   * A peer's path changed: `from` and `to` are "direct", "relayed" or "unreachable" (`from`
   * is "" for a peer's first path), `via` the relay of a relayed path, else "".
   */
  onPathChange?: (peer: string, from: string, to: string, via: string) => void;
  /** Overrides of the limits below, for tests. */
  limits?: Partial<MeshLimits>;
}

export interface MeshLimits {
  /** A TLS handshake that takes longer is cut (a slow or silent client holds a socket). */
  handshakeTimeoutMs: number;
  /** From the handshake to the header line: a client that says nothing is cut. */
  headerTimeoutMs: number;
  /** Connecting to the local replica. */
  localConnectTimeoutMs: number;
  /** Inbound flows at once; more are answered "busy" (each holds two sockets). */
  maxConcurrentInboundFlows: number;
  /**
   * TCP connections on the mesh port at once, handshakes and relay sessions included:
   * bounds file descriptors against a flood before anyone is authenticated.
   */
  maxConnections: number;
  /** The longest dial deadline a caller may ask for. */
  maxDialTimeoutMs: number;
  /** A flow with no byte either way for this long is closed (Envoy's TCP idle default). */
  flowIdleTimeoutMs: number;
  /** A dial's whole deadline when the caller gives none. */
  defaultDialTimeoutMs: number;
  /** One path of a background probe may take at most this. */
  directAttemptTimeoutMs: number;
  /** A dial starts its next path after this if the current one has not connected. */
  attemptStaggerMs: number;
  /** Period of the background round (re-probe direct paths, ping peers in use). */
  probeIntervalMs: number;
  /** Peers probed per round at most: bounded work however many peers are in use. */
  maxProbesPerRound: number;
  /** A peer not dialled for this long is no longer probed. */
  probeIdleAfterMs: number;
  /** Relay listen reconnect back-off: first and largest delay. */
  relayRetryInitialMs: number;
  relayRetryMaxMs: number;
  /**
   * An HTTP/2 PING on each relay session this often: keeps the NAT mapping of a node
   * behind a home router alive (many drop idle TCP after a few minutes) and finds a dead
   * relay; a PING unanswered within the handshake timeout ends the session (reconnect).
   */
  relayKeepaliveMs: number;
  /** Peers kept in the path table; the least recently used is dropped beyond it. */
  maxPathEntries: number;
  /** Members in a setPeers list (the cluster's node limit); a longer list is refused whole. */
  maxPeers: number;
  /** Relays a node keeps a listen stream on (a session and a stream each); extra are skipped. */
  maxRelayLinks: number;
}

export const defaultMeshLimits: MeshLimits = {
  handshakeTimeoutMs: 10_000,
  headerTimeoutMs: 10_000,
  localConnectTimeoutMs: 5_000,
  maxConcurrentInboundFlows: 4_096,
  maxConnections: 8_192,
  maxDialTimeoutMs: 120_000,
  flowIdleTimeoutMs: 3_600_000,
  defaultDialTimeoutMs: 10_000,
  directAttemptTimeoutMs: 3_000,
  attemptStaggerMs: 250,
  probeIntervalMs: 10_000,
  maxProbesPerRound: 16,
  probeIdleAfterMs: 60_000,
  relayRetryInitialMs: 1_000,
  relayRetryMaxMs: 30_000,
  relayKeepaliveMs: 25_000,
  maxPathEntries: 10_000,
  maxPeers: 10_000,
  maxRelayLinks: 16,
};

export type MeshDialErrorCode = "unreachable" | "refused" | "timeout";

export class MeshDialError extends Error {
  constructor(
    readonly code: MeshDialErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "MeshDialError";
  }
}

type PathKind = "direct" | "relayed" | "unreachable";

interface PeerState {
  node: string;
  /** "" until the first dial or probe of the peer has an outcome. */
  path: PathKind | "";
  via: string;
  address: string;
  rttMs: number;
  /** Bytes of flows that ended; live flows are added from their sockets. */
  closedBytesSent: number;
  closedBytesReceived: number;
  flows: Set<tls.TLSSocket>;
  changedAtMs: number;
  lastUsedMs: number;
}

interface RelayLink {
  key: string;
  /** What `via` shows: "coordinator <host:port>" or the relay node's name. */
  via: string;
  addresses: string[];
  expect: RelayExpectation;
  session?: http2.ClientHttp2Session;
  listening: boolean;
  retryDelayMs: number;
  cancelRetry?: () => void;
  cancelKeepalive?: () => void;
  closed: boolean;
}

/** One way to reach a peer. */
type Attempt =
  | { kind: "direct"; address: string; host: string; port: number }
  | { kind: "relayed"; link: RelayLink };

interface OpenedFlow {
  socket: tls.TLSSocket;
  attempt: Attempt;
  rttMs: number;
}

/** A failure that says the peer answered but refused, so no other path is tried. */
class RefusedError extends Error {}

interface CachedIdentity {
  identity: MeshIdentity;
  key: string;
  clientContext: tls.SecureContext;
}

function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

export class MeshNode {
  private readonly limits: MeshLimits;
  private readonly logger: Logger;
  private server?: tls.Server;
  private h2Server?: http2.Http2Server;
  private hub?: RelayHub;
  private members = new Map<string, MeshPeer>();
  private readonly paths = new Map<string, PeerState>();
  private readonly links = new Map<string, RelayLink>();
  private readonly sockets = new Set<Duplex>();
  private readonly h2Sessions = new Set<http2.Http2Session>();
  private readonly sessionNode = new WeakMap<http2.Http2Session, string>();
  private nextSessionNode: string | undefined;
  private readonly refusalCounts = new Map<string, number>();
  private inboundFlows = 0;
  /** Inbound flows by the peer that opened them: cut when the peer leaves the member list. */
  private readonly inboundByPeer = new Map<string, Set<tls.TLSSocket>>();
  private cached?: CachedIdentity;
  private serverContextKey = "";
  private cancelProbe?: () => void;
  private probing = false;
  private started = false;
  private stopped = false;

  constructor(private readonly options: MeshNodeOptions) {
    this.limits = { ...defaultMeshLimits, ...options.limits };
    this.logger = options.logger;
  }

  /** Starts listening; resolves with the bound port. */
  async start(): Promise<{ port: number }> {
    if (this.started) throw new Error("the mesh node was already started");
    this.started = true;
    const identity = this.options.identity();
    this.serverContextKey = identityKey(identity);
    const server = tls.createServer({
      key: identity.keyPem,
      cert: identity.certPem,
      ca: identity.caPem,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: "TLSv1.3",
      ALPNProtocols: this.options.relay ? [MESH_ALPN, "h2"] : [MESH_ALPN],
      handshakeTimeout: this.limits.handshakeTimeoutMs,
      allowHalfOpen: true,
      // No Nagle on a flow: its reply line and the replica's first bytes are small writes
      // in a row, and with Nagle the second waits for the peer's delayed ACK (~40 ms). A new
      // flow took 58 ms to open on loopback with it, 9 ms without (as Envoy, every socket).
      noDelay: true,
    });
    // Before TLS's own listener: a renewed certificate is in place for this handshake.
    server.prependListener("connection", (socket: Duplex) => {
      this.refreshServerContext();
      this.track(socket);
    });
    server.on("secureConnection", (socket) => this.onSecureConnection(socket));
    server.on("tlsClientError", (error, socket) => {
      this.countRefusal(`TLS handshake failed: ${error.message}`);
      // With a listener here Node leaves the socket open (a handshake timeout included).
      socket.destroy();
    });
    server.maxConnections = this.limits.maxConnections;
    this.server = server;
    if (this.options.relay) {
      this.hub = new RelayHub({
        isMember: (node) => this.members.has(node),
        logger: this.logger,
      });
      const h2Server = http2.createServer({
        settings: { ...relayHttp2Settings, maxConcurrentStreams: 1_000 },
      });
      h2Server.on("session", (session) => {
        session.setLocalWindowSize(RELAY_SESSION_WINDOW_BYTES);
        if (this.nextSessionNode !== undefined) {
          this.sessionNode.set(session, this.nextSessionNode);
        }
        this.h2Sessions.add(session);
        session.once("close", () => this.h2Sessions.delete(session));
        session.on("error", () => {});
      });
      h2Server.on("request", (request, response) => {
        const caller = this.sessionNode.get(request.stream.session!);
        if (caller === undefined || !request.url.startsWith(RELAY_PATH_PREFIX)) {
          response.stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
          return;
        }
        handleRelayRequest(this.hub!, request, response, caller);
      });
      this.h2Server = h2Server;
    }
    await new Promise<void>((resolve, reject) => {
      server.once("error", (error: NodeJS.ErrnoException) => {
        const where = formatAddress(this.options.host, this.options.port);
        reject(
          new Error(
            `cannot listen on the mesh address ${where} (${error.code ?? error.message}): choose a free port or address`,
          ),
        );
      });
      server.listen({ host: this.options.host, port: this.options.port }, () => {
        server.removeAllListeners("error");
        resolve();
      });
    });
    server.on("error", (error) => this.logger.warn({ err: error }, "mesh listener error"));
    this.scheduleProbe();
    // Relays named before start are connected now.
    for (const link of this.links.values()) this.connectLink(link, 0);
    const address = server.address() as net.AddressInfo;
    this.logger.info({ port: address.port, relay: this.options.relay }, "mesh listening");
    return { port: address.port };
  }

  /**
   * The member list (a peer not in it is refused either way) and the relays to keep a
   * listen stream to: coordinator relays as host:port, plus peers with `relay` set.
   */
  setPeers(peers: MeshPeer[], coordinatorRelays: string[]): void {
    if (this.stopped) return;
    if (peers.length > this.limits.maxPeers) {
      throw new RangeError(
        `the member list has ${peers.length} nodes, more than the mesh accepts (${this.limits.maxPeers}); the previous list stays`,
      );
    }
    const self = this.options.identity().nodeName;
    this.members = new Map(peers.map((peer) => [peer.node, peer]));
    const wanted = new Map<string, Omit<RelayLink, "listening" | "retryDelayMs" | "closed">>();
    for (const address of coordinatorRelays) {
      try {
        parseHostPort(address);
      } catch (error) {
        this.logger.warn({ relay: address }, `mesh: ${(error as Error).message}; skipped`);
        continue;
      }
      wanted.set(`coordinator ${address}`, {
        key: `coordinator ${address}`,
        via: `coordinator ${address}`,
        addresses: [address],
        expect: { kind: "coordinator" },
      });
    }
    for (const peer of peers) {
      if (!peer.relay || peer.node === self || peer.meshPort === 0) continue;
      const addresses = peer.addresses.map((host) => formatAddress(host, peer.meshPort));
      if (addresses.length === 0) continue;
      const key = `node ${peer.node} ${addresses.join(",")}`;
      wanted.set(key, {
        key,
        via: peer.node,
        addresses,
        expect: { kind: "node", name: peer.node },
      });
    }
    if (wanted.size > this.limits.maxRelayLinks) {
      this.logger.warn(
        { relays: wanted.size, limit: this.limits.maxRelayLinks },
        "mesh: more relays than the limit; listening on the first ones (coordinators first)",
      );
      for (const key of [...wanted.keys()].slice(this.limits.maxRelayLinks)) wanted.delete(key);
    }
    for (const [key, link] of this.links) {
      if (!wanted.has(key)) {
        this.closeLink(link);
        this.links.delete(key);
      }
    }
    for (const [key, spec] of wanted) {
      if (this.links.has(key)) continue;
      const link: RelayLink = {
        ...spec,
        listening: false,
        retryDelayMs: this.limits.relayRetryInitialMs,
        closed: false,
      };
      this.links.set(key, link);
      if (this.started) this.connectLink(link, 0);
    }
    // A peer that left (deleted) keeps no flow with us, either way, nor a relay stream.
    for (const [node, state] of this.paths) {
      if (this.members.has(node)) continue;
      for (const socket of state.flows) socket.destroy();
      this.paths.delete(node);
    }
    for (const [node, sockets] of this.inboundByPeer) {
      if (this.members.has(node)) continue;
      for (const socket of sockets) socket.destroy();
      this.inboundByPeer.delete(node);
    }
    this.hub?.evictNonMembers();
  }

  /** Opens a flow to `target` on `node`; resolves once the remote connected to it. */
  async dial(
    node: string,
    target: MeshTarget,
    options: { timeoutMs?: number; signal?: AbortSignal; traceparent?: string } = {},
  ): Promise<Duplex> {
    if (this.stopped || !this.started) {
      throw new MeshDialError("unreachable", "the mesh node is not running");
    }
    const timeoutMs = options.timeoutMs ?? this.limits.defaultDialTimeoutMs;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > this.limits.maxDialTimeoutMs) {
      throw new RangeError(
        `dial timeoutMs must be above 0 and at most ${this.limits.maxDialTimeoutMs} ms, got ${timeoutMs}`,
      );
    }
    const peer = this.members.get(node);
    if (!peer) throw new MeshDialError("refused", `node ${node} is not a member of the cluster`);
    const header: FlowHeader = {
      v: 1,
      op: "connect",
      namespace: target.namespace,
      service: target.service,
      port: target.port,
      replica: target.replicaId,
      ...(options.traceparent ? { traceparent: options.traceparent } : {}),
    };
    let headerLine: string;
    try {
      headerLine = encodeFlowHeader(header);
    } catch (error) {
      throw new MeshDialError("refused", (error as Error).message);
    }
    const state = this.stateFor(node);
    state.lastUsedMs = this.options.clock.nowMs();
    const flow = await this.openFlow(peer, state, headerLine, timeoutMs, options.signal);
    this.adoptFlow(state, flow.socket);
    return flow.socket;
  }

  /** The path table, one row per peer dialled (or probed), once it has an outcome. */
  peers(): PeerPath[] {
    return [...this.paths.values()]
      .filter((state) => state.path !== "")
      .map((state) => {
        let bytesSent = state.closedBytesSent;
        let bytesReceived = state.closedBytesReceived;
        for (const socket of state.flows) {
          bytesSent += socket.bytesWritten;
          bytesReceived += socket.bytesRead;
        }
        return create(PeerPathSchema, {
          node: state.node,
          path: state.path,
          via: state.via,
          address: state.address,
          rttMs: state.rttMs,
          bytesSent: BigInt(bytesSent),
          bytesReceived: BigInt(bytesReceived),
          changedAt: timestampFromMs(state.changedAtMs),
          activeFlows: state.flows.size,
        });
      });
  }

  /** Refusals by reason since start (for metrics and tests); reasons carry no secrets. */
  refusals(): ReadonlyMap<string, number> {
    return this.refusalCounts;
  }

  /** Flows this node accepted that are still open. */
  inboundFlowCount(): number {
    return this.inboundFlows;
  }

  /** The relay hub this node serves, when started with relay: true. */
  relayHub(): RelayHub | undefined {
    return this.hub;
  }

  /** Closes the listener, relay sessions and every flow. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.cancelProbe?.();
    for (const link of this.links.values()) this.closeLink(link);
    this.links.clear();
    this.hub?.close();
    for (const session of this.h2Sessions) session.destroy();
    for (const socket of this.sockets) socket.destroy();
    for (const state of this.paths.values()) {
      for (const socket of state.flows) socket.destroy();
    }
    const server = this.server;
    if (server?.listening) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    this.logger.info("mesh stopped");
  }

  // -------------------------------------------------------------------------------------
  // Accepting

  private track(socket: Duplex): void {
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
    if (this.stopped) socket.destroy();
  }

  private countRefusal(reason: string): void {
    this.refusalCounts.set(reason, (this.refusalCounts.get(reason) ?? 0) + 1);
    // Bounded: reasons name nodes, so a hostile stream of names could grow it.
    if (this.refusalCounts.size > 1_000) this.refusalCounts.clear();
    this.logger.debug({ reason }, "mesh peer refused");
  }

  private refreshServerContext(): void {
    const identity = this.options.identity();
    const key = identityKey(identity);
    if (key === this.serverContextKey || !this.server) return;
    this.server.setSecureContext({
      key: identity.keyPem,
      cert: identity.certPem,
      ca: identity.caPem,
      minVersion: "TLSv1.3",
    });
    this.serverContextKey = key;
  }

  private onSecureConnection(socket: tls.TLSSocket): void {
    this.track(socket);
    // A reset while the flow is being set up must not go unhandled; the close cleans up.
    socket.on("error", (error) => this.logger.debug({ err: error }, "mesh connection error"));
    const identity = this.options.identity();
    const verdict = checkSocketPeer(socket, identity.clusterName, this.members);
    if (!verdict.ok) {
      this.countRefusal(verdict.reason);
      socket.destroy();
      return;
    }
    if (socket.alpnProtocol === "h2") {
      if (!this.h2Server) {
        socket.destroy();
        return;
      }
      // The session event fires inside emit: it learns the caller from this field.
      this.nextSessionNode = verdict.node;
      try {
        this.h2Server.emit("connection", socket);
      } finally {
        this.nextSessionNode = undefined;
      }
      return;
    }
    if (socket.alpnProtocol !== MESH_ALPN) {
      this.countRefusal("no mesh ALPN protocol negotiated");
      socket.destroy();
      return;
    }
    this.serveFlow(socket, verdict.node).catch((error: unknown) => {
      this.logger.debug({ err: error, peer: verdict.node }, "mesh flow failed");
      socket.destroy();
    });
  }

  private async serveFlow(socket: tls.TLSSocket, peer: string): Promise<void> {
    socket.setKeepAlive?.(true, 30_000);
    let header: FlowHeader;
    try {
      const line = await readLine(socket, MAX_FLOW_HEADER_BYTES, this.limits.headerTimeoutMs);
      header = parseFlowHeader(line);
    } catch (error) {
      // Oversized, garbled or missing: close without an answer, as the protocol says.
      this.countRefusal(`bad flow header: ${(error as Error).message}`);
      socket.destroy();
      return;
    }
    if (header.op === "ping") {
      socket.end(encodeFlowReply({ ok: true }));
      return;
    }
    if (this.inboundFlows >= this.limits.maxConcurrentInboundFlows) {
      socket.end(
        encodeFlowReply({
          ok: false,
          error: `busy: ${this.inboundFlows} flows (the limit), try another replica`,
        }),
      );
      return;
    }
    const target: MeshTarget = {
      namespace: header.namespace,
      service: header.service,
      port: header.port,
      replicaId: header.replica,
    };
    const localPort = this.options.resolveLocal(target);
    if (localPort === undefined) {
      socket.end(
        encodeFlowReply({
          ok: false,
          error: `replica ${header.replica} of ${header.namespace}/${header.service} port ${header.port} does not run on this node`,
        }),
      );
      return;
    }
    // The accepting side of the proxy's `proxy.connection` span (its traceparent came in the
    // header), so a trace shows both nodes of a cross-node connection.
    const span = startSpan(
      "mesh.flow",
      {
        "cloudless.peer.node": peer,
        "cloudless.service": `${header.namespace}/${header.service}`,
        "cloudless.service.port": header.port,
        "cloudless.replica": header.replica,
      },
      { kind: spanKind.server, parent: extractContext(header.traceparent) },
    );
    this.inboundFlows += 1;
    const ofPeer = this.inboundByPeer.get(peer) ?? new Set<tls.TLSSocket>();
    ofPeer.add(socket);
    this.inboundByPeer.set(peer, ofPeer);
    let counted = true;
    const release = () => {
      if (counted) {
        counted = false;
        this.inboundFlows -= 1;
        ofPeer.delete(socket);
        if (ofPeer.size === 0 && this.inboundByPeer.get(peer) === ofPeer) {
          this.inboundByPeer.delete(peer);
        }
      }
    };
    socket.once("close", release);
    let local: net.Socket;
    try {
      local = await this.connectLocal(localPort);
    } catch (error) {
      release();
      endSpan(span, error);
      socket.end(
        encodeFlowReply({
          ok: false,
          error: `replica ${header.replica} did not accept a connection: ${(error as Error).message}`,
        }),
      );
      return;
    }
    if (socket.destroyed) {
      local.destroy();
      endSpan(span, new Error("the flow closed before the replica answered"));
      return;
    }
    this.track(local);
    socket.write(encodeFlowReply({ ok: true }));
    const state = this.paths.get(peer);
    socket.setTimeout(this.limits.flowIdleTimeoutMs, () => socket.destroy());
    const bytes: FlowCounters = { aToB: 0, bToA: 0 };
    let failure: unknown;
    socket.on("error", (error) => {
      failure ??= error;
    });
    pipeFlow(
      socket,
      local,
      (direction, count) => {
        bytes[direction] += count;
        if (!state) return;
        if (direction === "aToB") state.closedBytesReceived += count;
        else state.closedBytesSent += count;
      },
      () => {
        release();
        span.setAttribute("cloudless.bytes.to_replica", bytes.aToB);
        span.setAttribute("cloudless.bytes.from_replica", bytes.bToA);
        endSpan(span, failure);
      },
    );
  }

  private connectLocal(port: number): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const local = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true, noDelay: true });
      // A wire deadline on real time.
      const timer = setTimeout(() => {
        local.destroy();
        reject(new Error(`no connection within ${this.limits.localConnectTimeoutMs} ms`));
      }, this.limits.localConnectTimeoutMs);
      local.once("connect", () => {
        clearTimeout(timer);
        local.off("error", onError);
        resolve(local);
      });
      const onError = (error: Error) => {
        clearTimeout(timer);
        reject(error);
      };
      local.once("error", onError);
    });
  }

  // -------------------------------------------------------------------------------------
  // Dialling

  private currentIdentity(): CachedIdentity {
    const identity = this.options.identity();
    const key = identityKey(identity);
    if (this.cached?.key !== key) {
      this.cached = {
        identity,
        key,
        clientContext: tls.createSecureContext({
          key: identity.keyPem,
          cert: identity.certPem,
          ca: identity.caPem,
          minVersion: "TLSv1.3",
        }),
      };
    }
    return this.cached;
  }

  private stateFor(node: string): PeerState {
    let state = this.paths.get(node);
    if (!state) {
      if (this.paths.size >= this.limits.maxPathEntries) this.evictLeastRecentlyUsed();
      state = {
        node,
        path: "",
        via: "",
        address: "",
        rttMs: 0,
        closedBytesSent: 0,
        closedBytesReceived: 0,
        flows: new Set(),
        changedAtMs: this.options.clock.nowMs(),
        lastUsedMs: this.options.clock.nowMs(),
      };
      this.paths.set(node, state);
    }
    return state;
  }

  private evictLeastRecentlyUsed(): void {
    let oldest: PeerState | undefined;
    for (const state of this.paths.values()) {
      if (state.flows.size > 0) continue;
      if (!oldest || state.lastUsedMs < oldest.lastUsedMs) oldest = state;
    }
    if (oldest) this.paths.delete(oldest.node);
  }

  private setPath(state: PeerState, path: PathKind, via: string, address: string): void {
    if (state.path === path && state.via === via && state.address === address) return;
    const from = state.path;
    const fromVia = state.via;
    state.path = path;
    state.via = via;
    state.address = address;
    state.changedAtMs = this.options.clock.nowMs();
    // Another address on the same direct path is no event; another path or relay is.
    if (from !== path || fromVia !== via) {
      this.logger.info({ peer: state.node, from, to: path, via, address }, "mesh path changed");
      this.options.onPathChange?.(state.node, from, path, via);
    }
  }

  private directAttempts(peer: MeshPeer): Attempt[] {
    if (peer.meshPort === 0) return [];
    return peer.addresses.map((host) => ({
      kind: "direct" as const,
      address: formatAddress(host, peer.meshPort),
      host,
      port: peer.meshPort,
    }));
  }

  /**
   * Relays that can reach `node`, relay nodes before coordinators: a coordinator relays
   * only as a fallback, so that relayed flows neither load the control plane nor break
   * when every coordinator is down (NFR-A1).
   */
  private relayAttempts(node: string): Attempt[] {
    return [...this.links.values()]
      .filter((link) => link.session !== undefined && !link.session.destroyed && link.via !== node)
      .sort(
        (a, b) => Number(a.expect.kind === "coordinator") - Number(b.expect.kind === "coordinator"),
      )
      .map((link) => ({ kind: "relayed" as const, link }));
  }

  /**
   * Races the peer's paths for a TLS session, staggered (RFC 8305's happy eyeballs): direct
   * addresses first — relays first when the table says the peer is relayed (the background
   * round moves it back) — each next attempt starting after `attemptStaggerMs` or at once
   * when one fails, so a NATed peer's unroutable addresses cost a quarter second, not a
   * timeout each. The header goes only on the winner, so the remote connects to the
   * replica once. A peer that answers "not ok" ends the dial; a certificate that names
   * someone else rules out that path only.
   */
  private async openFlow(
    peer: MeshPeer,
    state: PeerState,
    headerLine: string,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<OpenedFlow> {
    const direct = this.directAttempts(peer);
    const relayed = this.relayAttempts(peer.node);
    let remaining = state.path === "relayed" ? [...relayed, ...direct] : [...direct, ...relayed];
    const attemptCount = remaining.length;
    const elapsed = startStopwatch();
    const failures: string[] = [];
    let refused: string | undefined;
    // An attempt that ran into its deadline makes the dial a timeout: its timer and the
    // dial's clock are two clocks, and the timer may fire a hair before the dial's own
    // elapsed time reaches the deadline (CI saw "unreachable" for a silent peer).
    let deadlinePassed = false;
    const where = (attempt: Attempt) =>
      attempt.kind === "direct" ? attempt.address : `via ${attempt.link.via}`;
    const fail = (attempt: Attempt, error: unknown) => {
      const message = error instanceof Error ? error.message : String(error);
      failures.push(`${where(attempt)}: ${message}`);
      if (error instanceof RefusedError) refused = `${where(attempt)}: ${message}`;
      if (error instanceof DeadlineError) deadlinePassed = true;
    };
    while (remaining.length > 0) {
      if (signal?.aborted) throw new MeshDialError("timeout", "the dial was aborted");
      const leftMs = timeoutMs - elapsed();
      if (leftMs <= 0) break;
      const won = await this.raceEstablish(peer.node, remaining, leftMs, signal, fail);
      if (!won) break;
      try {
        const rttMs = await this.exchangeHeader(
          won.socket,
          headerLine,
          Math.max(1, timeoutMs - elapsed()),
        );
        if (won.attempt.kind === "direct") {
          this.setPath(state, "direct", "", won.attempt.address);
        } else this.setPath(state, "relayed", won.attempt.link.via, "");
        state.rttMs = rttMs;
        return { socket: won.socket, attempt: won.attempt, rttMs };
      } catch (error) {
        won.socket.destroy();
        fail(won.attempt, error);
        // The peer itself said no: another path reaches the same peer and the same answer.
        if (error instanceof RefusedError) break;
        remaining = remaining.filter((attempt) => attempt !== won.attempt);
      }
    }
    if (refused !== undefined) {
      throw new MeshDialError("refused", `node ${peer.node} refused the flow (${refused})`);
    }
    if (signal?.aborted) throw new MeshDialError("timeout", "the dial was aborted");
    this.setPath(state, "unreachable", "", "");
    if (deadlinePassed || elapsed() >= timeoutMs) {
      throw new MeshDialError(
        "timeout",
        `node ${peer.node} was not reached within ${timeoutMs} ms (${failures.join("; ") || "no path"})`,
      );
    }
    throw new MeshDialError(
      "unreachable",
      attemptCount === 0
        ? `node ${peer.node} has no address and no relay reaches it`
        : `node ${peer.node} is unreachable (${failures.join("; ")})`,
    );
  }

  /** The first attempt to reach a TLS session with the peer, or undefined when all fail. */
  private raceEstablish(
    node: string,
    attempts: Attempt[],
    timeoutMs: number,
    signal: AbortSignal | undefined,
    onFailure: (attempt: Attempt, error: unknown) => void,
  ): Promise<{ socket: tls.TLSSocket; attempt: Attempt } | undefined> {
    return new Promise((resolve) => {
      const losers = new AbortController();
      const onOuterAbort = () => losers.abort();
      signal?.addEventListener("abort", onOuterAbort, { once: true });
      const elapsed = startStopwatch();
      let next = 0;
      let running = 0;
      let done = false;
      let staggerTimer: NodeJS.Timeout | undefined;
      const finish = (result: { socket: tls.TLSSocket; attempt: Attempt } | undefined) => {
        if (done) return;
        done = true;
        clearTimeout(staggerTimer);
        losers.abort();
        signal?.removeEventListener("abort", onOuterAbort);
        resolve(result);
      };
      const launch = () => {
        clearTimeout(staggerTimer);
        if (done) return;
        const leftMs = timeoutMs - elapsed();
        if (next >= attempts.length || leftMs <= 0) {
          if (running === 0) finish(undefined);
          return;
        }
        const attempt = attempts[next++]!;
        running += 1;
        this.establish(node, attempt, leftMs, losers.signal).then(
          (socket) => {
            running -= 1;
            if (done) socket.destroy();
            else finish({ socket, attempt });
          },
          (error: unknown) => {
            running -= 1;
            if (done) return;
            onFailure(attempt, error);
            launch();
          },
        );
        // A wire timer on real time: when the next path gets its chance.
        staggerTimer = setTimeout(launch, this.limits.attemptStaggerMs);
      };
      launch();
    });
  }

  /** One attempt, in sequence (probes): TLS to the peer, header, reply. */
  private async tryAttempt(
    node: string,
    attempt: Attempt,
    headerLine: string,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<OpenedFlow> {
    const elapsed = startStopwatch();
    const socket = await this.establish(node, attempt, timeoutMs, signal);
    try {
      const rttMs = await this.exchangeHeader(
        socket,
        headerLine,
        Math.max(1, timeoutMs - elapsed()),
      );
      return { socket, attempt, rttMs };
    } catch (error) {
      socket.destroy();
      throw error;
    }
  }

  /** A TLS session with the peer, direct or inside a relay's dial stream. */
  private async establish(
    node: string,
    attempt: Attempt,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<tls.TLSSocket> {
    const elapsed = startStopwatch();
    let carrier: Duplex | undefined;
    if (attempt.kind === "relayed") {
      const session = attempt.link.session;
      if (!session || session.destroyed) throw new Error("the relay session is down");
      carrier = await relayRequest(session, relayPaths.dial(node), timeoutMs, signal);
      this.track(carrier);
    }
    return this.connectTls(node, attempt, carrier, Math.max(1, timeoutMs - elapsed()), signal);
  }

  /** Sends the header line and reads the reply; resolves with the round trip (ms). */
  private async exchangeHeader(
    socket: tls.TLSSocket,
    headerLine: string,
    timeoutMs: number,
  ): Promise<number> {
    const sent = startStopwatch();
    socket.write(headerLine);
    const line = await readLine(socket, MAX_FLOW_HEADER_BYTES, timeoutMs);
    const rttMs = sent();
    const reply = parseFlowReply(line);
    if (!reply.ok) throw new RefusedError(`remote: ${reply.error}`);
    return rttMs;
  }

  private connectTls(
    node: string,
    attempt: Attempt,
    carrier: Duplex | undefined,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<tls.TLSSocket> {
    const { identity, clientContext } = this.currentIdentity();
    return new Promise((resolve, reject) => {
      let certificateRefusal: string | undefined;
      // allowHalfOpen is passed on to the TLSSocket by tls.connect, though not in its types:
      // a peer's end must not end our side (TCP half-close is part of the flow).
      const connectOptions: tls.ConnectionOptions & { allowHalfOpen: boolean } = {
        ...(carrier
          ? { socket: carrier }
          : attempt.kind === "direct"
            ? { host: attempt.host, port: attempt.port }
            : {}),
        secureContext: clientContext,
        ALPNProtocols: [MESH_ALPN],
        minVersion: "TLSv1.3",
        allowHalfOpen: true,
        checkServerIdentity: (_host, cert) => {
          const verdict = checkNodeCertificate(cert.raw, identity.clusterName, this.members, node);
          if (verdict.ok) return undefined;
          certificateRefusal = verdict.reason;
          return new Error(verdict.reason);
        },
      };
      const socket = tls.connect(connectOptions);
      // See the server's noDelay: the header goes out right after the handshake's Finished.
      socket.setNoDelay(true);
      this.track(socket);
      let settled = false;
      const finish = (error?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        socket.off("error", onError);
        if (error) {
          socket.destroy();
          carrier?.destroy();
          reject(error);
        } else resolve(socket);
      };
      const onAbort = () => finish(new Error("aborted"));
      const onError = (error: Error) =>
        finish(
          certificateRefusal !== undefined
            ? new RefusedError(`certificate: ${certificateRefusal}`)
            : error,
        );
      signal?.addEventListener("abort", onAbort, { once: true });
      // A wire deadline on real time.
      const timer = setTimeout(
        () => finish(new DeadlineError(`no TLS session within ${Math.round(timeoutMs)} ms`)),
        Math.max(1, timeoutMs),
      );
      socket.once("error", onError);
      socket.once("close", () => finish(new Error("the connection closed during the handshake")));
      socket.once("secureConnect", () => {
        if (socket.alpnProtocol !== MESH_ALPN) {
          finish(new RefusedError("certificate: the peer does not speak the mesh protocol"));
          return;
        }
        finish();
      });
    });
  }

  private adoptFlow(state: PeerState, socket: tls.TLSSocket): void {
    state.flows.add(socket);
    socket.setKeepAlive?.(true, 30_000);
    // Errors belong to the caller's stream handling; this listener keeps one from crashing us.
    socket.on("error", () => {});
    socket.once("close", () => {
      state.flows.delete(socket);
      state.closedBytesSent += socket.bytesWritten;
      state.closedBytesReceived += socket.bytesRead;
    });
  }

  // -------------------------------------------------------------------------------------
  // Background: re-probe direct paths, ping peers in use

  private scheduleProbe(): void {
    if (this.stopped) return;
    this.cancelProbe = this.options.clock.setTimeout(() => {
      this.probeRound()
        .catch((error: unknown) => this.logger.debug({ err: error }, "mesh probe round failed"))
        .finally(() => this.scheduleProbe());
    }, this.limits.probeIntervalMs);
  }

  /** One round (exposed for tests through probeNow). */
  private async probeRound(): Promise<void> {
    if (this.probing || this.stopped) return;
    this.probing = true;
    try {
      const nowMs = this.options.clock.nowMs();
      const due = [...this.paths.values()]
        .filter(
          (state) =>
            state.flows.size > 0 || nowMs - state.lastUsedMs <= this.limits.probeIdleAfterMs,
        )
        .sort((a, b) => b.lastUsedMs - a.lastUsedMs)
        .slice(0, this.limits.maxProbesPerRound);
      await Promise.all(due.map((state) => this.probePeer(state)));
    } finally {
      this.probing = false;
    }
  }

  /** Runs a probe round now (tests; the agent relies on the timer). */
  async probeNow(): Promise<void> {
    await this.probeRound();
  }

  private async probePeer(state: PeerState): Promise<void> {
    const peer = this.members.get(state.node);
    if (!peer || this.stopped) return;
    const ping = encodeFlowHeader({ v: 1, op: "ping" });
    // Direct first always: that is the point of re-probing a relayed peer.
    const attempts = [...this.directAttempts(peer), ...this.relayAttempts(peer.node)];
    for (const attempt of attempts) {
      try {
        const flow = await this.tryAttempt(
          peer.node,
          attempt,
          ping,
          this.limits.directAttemptTimeoutMs,
          undefined,
        );
        flow.socket.destroy();
        if (attempt.kind === "direct") this.setPath(state, "direct", "", attempt.address);
        else this.setPath(state, "relayed", attempt.link.via, "");
        state.rttMs = flow.rttMs;
        return;
      } catch {
        // The next path.
      }
    }
    this.setPath(state, "unreachable", "", "");
  }

  // -------------------------------------------------------------------------------------
  // Relay links: a listen stream to each relay, for flows to this node

  private connectLink(link: RelayLink, attemptIndex: number): void {
    if (link.closed || this.stopped) return;
    const address = link.addresses[attemptIndex % link.addresses.length]!;
    const { identity } = this.currentIdentity();
    const verify = (cert: tls.PeerCertificate) => {
      const verdict = checkRelayCertificate(
        cert.raw,
        identity.clusterName,
        this.members,
        link.expect,
      );
      return verdict.ok ? undefined : new Error(`relay certificate refused: ${verdict.reason}`);
    };
    const retry = (error: unknown) => {
      link.listening = false;
      link.cancelKeepalive?.();
      link.session?.destroy();
      link.session = undefined;
      if (link.closed || this.stopped) return;
      this.logger.debug({ relay: link.via, err: error }, "mesh relay link down, will retry");
      const delayMs = link.retryDelayMs;
      link.retryDelayMs = Math.min(link.retryDelayMs * 2, this.limits.relayRetryMaxMs);
      link.cancelRetry = this.options.clock.setTimeout(
        () => this.connectLink(link, attemptIndex + 1),
        delayMs,
      );
    };
    openRelaySession(address, identity, verify, this.limits.handshakeTimeoutMs)
      .then(async (session) => {
        if (link.closed || this.stopped) {
          session.destroy();
          return;
        }
        link.session = session;
        this.h2Sessions.add(session);
        let down = false;
        const onDown = (error: unknown) => {
          if (down) return;
          down = true;
          this.h2Sessions.delete(session);
          retry(error);
        };
        session.once("close", () => onDown(new Error("relay session closed")));
        const stream = await relayRequest(
          session,
          relayPaths.listen,
          this.limits.handshakeTimeoutMs,
        );
        stream.once("close", () => onDown(new Error("relay listen stream closed")));
        link.listening = true;
        link.retryDelayMs = this.limits.relayRetryInitialMs;
        this.keepLinkAlive(link, session);
        this.logger.debug({ relay: link.via, address }, "mesh relay link listening");
        readListenStream(stream, (accept) => this.acceptRelayed(link, session, accept));
      })
      .catch(retry);
  }

  private keepLinkAlive(link: RelayLink, session: http2.ClientHttp2Session): void {
    link.cancelKeepalive = this.options.clock.setTimeout(() => {
      if (link.closed || session.destroyed || this.stopped) return;
      // A wire deadline on real time: the relay must answer the PING.
      const deadline = setTimeout(() => session.destroy(), this.limits.handshakeTimeoutMs);
      deadline.unref();
      const sent = session.ping((error) => {
        clearTimeout(deadline);
        if (error) session.destroy();
        else this.keepLinkAlive(link, session);
      });
      if (!sent) {
        clearTimeout(deadline);
        session.destroy();
      }
    }, this.limits.relayKeepaliveMs);
  }

  /** A relayed flow for this node: open its accept stream and serve TLS inside it. */
  private acceptRelayed(
    link: RelayLink,
    session: http2.ClientHttp2Session,
    accept: RelayAccept,
  ): void {
    if (!this.members.has(accept.from) || accept.accept.length > MAX_RELAY_LINE_BYTES) return;
    relayRequest(session, relayPaths.accept(accept.accept), this.limits.handshakeTimeoutMs)
      .then((stream) => {
        if (this.stopped || !this.server) {
          stream.destroy();
          return;
        }
        // The same TLS server as direct connections: same certificate checks, same limits.
        this.server.emit("connection", stream);
      })
      .catch((error: unknown) => {
        this.logger.debug({ relay: link.via, err: error }, "mesh relayed accept failed");
      });
  }

  private closeLink(link: RelayLink): void {
    link.closed = true;
    link.cancelRetry?.();
    link.cancelKeepalive?.();
    link.session?.destroy();
    link.session = undefined;
    link.listening = false;
  }
}

function identityKey(identity: MeshIdentity): string {
  return `${identity.caPem}\u0000${identity.certPem}\u0000${identity.keyPem}`;
}

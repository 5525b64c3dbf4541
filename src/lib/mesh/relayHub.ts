/**
 * The relay hub (REQ-003, issue 14; model: Tailscale's DERP): joins a stream from a node
 * that wants to reach another to a stream of that node, for nodes that cannot be dialled
 * (behind NAT). Three requests on HTTP/2, each a full-duplex stream:
 *
 * - `POST /cloudless.mesh.v1/listen`: a node keeps it open; the hub writes one JSON line
 *   per incoming flow, `{"accept":"<id>","from":"<node>"}`.
 * - `POST /cloudless.mesh.v1/dial?node=X`: answered once X opened the flow's accept
 *   stream (200, then bytes), or with an error status and one `{"ok":false,…}` line.
 * - `POST /cloudless.mesh.v1/accept?id=…`: X's stream for one flow; the hub pipes it to
 *   the waiting dial.
 *
 * The hub never sees plaintext: the two ends run TLS inside the joined streams. It trusts
 * the caller's node name it is given (whoever mounts it authenticated the connection) and
 * asks `isMember` about both ends. Mount it with `handleRelayRequest` on any node:http2
 * server (compat API) for paths under RELAY_PATH_PREFIX.
 */
import { randomUUID } from "node:crypto";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { pipeFlow } from "./flowHeader.js";

export const RELAY_PATH_PREFIX = "/cloudless.mesh.v1/";
export const RELAY_LISTEN_PATH = `${RELAY_PATH_PREFIX}listen`;
export const RELAY_DIAL_PATH = `${RELAY_PATH_PREFIX}dial`;
export const RELAY_ACCEPT_PATH = `${RELAY_PATH_PREFIX}accept`;

export interface RelayHubLimits {
  /** Listen streams one node may hold here (it reconnects; a few overlap). */
  maxListenStreamsPerNode: number;
  /** Dials waiting for their accept, over all nodes: each holds two streams and a timer. */
  maxPendingDials: number;
  /** Of those, from one node: one member cannot take every slot from the others. */
  maxPendingDialsPerNode: number;
  /** Joined flows one node may take part in (as dialer or acceptor). */
  maxRelayedFlowsPerNode: number;
  /** How long a dial waits for the target's accept stream. */
  pendingDialTimeoutMs: number;
}

export const defaultRelayHubLimits: RelayHubLimits = {
  maxListenStreamsPerNode: 4,
  maxPendingDials: 1024,
  maxPendingDialsPerNode: 64,
  maxRelayedFlowsPerNode: 1024,
  pendingDialTimeoutMs: 5_000,
};

export interface RelayHubOptions {
  isMember: (node: string) => boolean;
  logger: Logger;
  limits?: Partial<RelayHubLimits>;
}

/** What the hub has moved and holds, for metrics and tests. */
export interface RelayHubStats {
  listeners: number;
  pendingDials: number;
  relayedFlows: number;
  /** Bytes piped per node it came from. */
  bytesFromNode: Map<string, number>;
  refusals: Map<string, number>;
}

interface PendingDial {
  id: string;
  from: string;
  to: string;
  stream: Duplex;
  response: Http2ServerResponse;
  cancelTimer: () => void;
}

interface ListenStream {
  response: Http2ServerResponse;
}

/** A relay stream error: an HTTP status and a line for the caller. */
class RelayRefusal extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export class RelayHub {
  private readonly limits: RelayHubLimits;
  private readonly listeners = new Map<string, ListenStream[]>();
  private readonly pending = new Map<string, PendingDial>();
  private readonly flowsPerNode = new Map<string, number>();
  private readonly flows = new Set<{ from: string; to: string; dial: Duplex; accept: Duplex }>();
  private readonly bytesFromNode = new Map<string, number>();
  private readonly refusals = new Map<string, number>();
  private closed = false;

  constructor(private readonly options: RelayHubOptions) {
    this.limits = { ...defaultRelayHubLimits, ...options.limits };
  }

  stats(): RelayHubStats {
    let listeners = 0;
    for (const streams of this.listeners.values()) listeners += streams.length;
    return {
      listeners,
      pendingDials: this.pending.size,
      relayedFlows: this.flows.size,
      bytesFromNode: new Map(this.bytesFromNode),
      refusals: new Map(this.refusals),
    };
  }

  /** Whether `node` has a listen stream here (a dial to it can succeed). */
  hasListener(node: string): boolean {
    return (this.listeners.get(node)?.length ?? 0) > 0;
  }

  /** Handles one relay request from `callerNode` (already authenticated). */
  handle(request: Http2ServerRequest, response: Http2ServerResponse, callerNode: string): void {
    try {
      if (this.closed) throw new RelayRefusal(503, "the relay is shutting down");
      if (request.method !== "POST") {
        throw new RelayRefusal(405, "relay requests are POST");
      }
      if (!this.options.isMember(callerNode)) {
        throw new RelayRefusal(403, `node ${callerNode} is not a member of this cluster`);
      }
      const url = new URL(request.url, "https://relay.invalid");
      switch (url.pathname) {
        case RELAY_LISTEN_PATH:
          this.listen(response, callerNode);
          return;
        case RELAY_DIAL_PATH:
          this.dial(request, response, callerNode, url.searchParams.get("node") ?? "");
          return;
        case RELAY_ACCEPT_PATH:
          this.accept(request, response, callerNode, url.searchParams.get("id") ?? "");
          return;
        default:
          throw new RelayRefusal(404, `no relay request ${url.pathname}`);
      }
    } catch (error) {
      const refusal =
        error instanceof RelayRefusal ? error : new RelayRefusal(500, "relay request failed");
      this.refuse(response, refusal, callerNode);
    }
  }

  /**
   * Ends the listen streams, pending dials and flows of nodes `isMember` no longer
   * accepts: call it when the member list changes (a deleted node keeps nothing here).
   */
  evictNonMembers(): void {
    for (const [node, streams] of this.listeners) {
      if (this.options.isMember(node)) continue;
      for (const listener of streams) listener.response.stream.close();
      this.listeners.delete(node);
    }
    for (const [id, dial] of this.pending) {
      if (this.options.isMember(dial.from) && this.options.isMember(dial.to)) continue;
      dial.cancelTimer();
      dial.stream.destroy();
      this.pending.delete(id);
    }
    for (const flow of this.flows) {
      if (this.options.isMember(flow.from) && this.options.isMember(flow.to)) continue;
      flow.dial.destroy();
      flow.accept.destroy();
    }
  }

  /** Ends every stream the hub holds; later requests are refused. Idempotent. */
  close(): void {
    this.closed = true;
    for (const streams of this.listeners.values()) {
      for (const listener of streams) listener.response.stream.close();
    }
    this.listeners.clear();
    for (const dial of this.pending.values()) {
      dial.cancelTimer();
      dial.stream.destroy();
    }
    this.pending.clear();
    for (const flow of this.flows) {
      flow.dial.destroy();
      flow.accept.destroy();
    }
    this.flows.clear();
  }

  private refuse(response: Http2ServerResponse, refusal: RelayRefusal, caller: string): void {
    this.refusals.set(refusal.message, (this.refusals.get(refusal.message) ?? 0) + 1);
    // Bounded: refusal reasons are a handful of messages per node name.
    if (this.refusals.size > 256) this.refusals.clear();
    this.options.logger.debug({ caller, status: refusal.status }, `relay: ${refusal.message}`);
    if (response.headersSent || response.stream.headersSent || response.stream.destroyed) {
      response.stream.destroy();
      return;
    }
    response.writeHead(refusal.status, { "content-type": "application/x-ndjson" });
    response.end(`${JSON.stringify({ ok: false, error: refusal.message })}\n`);
  }

  private listen(response: Http2ServerResponse, node: string): void {
    const streams = this.listeners.get(node) ?? [];
    if (streams.length >= this.limits.maxListenStreamsPerNode) {
      throw new RelayRefusal(
        429,
        `node ${node} already holds ${streams.length} listen streams here (the limit)`,
      );
    }
    const listener: ListenStream = { response };
    streams.push(listener);
    this.listeners.set(node, streams);
    const remove = () => {
      const current = this.listeners.get(node);
      if (!current) return;
      const left = current.filter((entry) => entry !== listener);
      if (left.length === 0) this.listeners.delete(node);
      else this.listeners.set(node, left);
    };
    response.stream.once("close", remove);
    // Whatever the node sends on its listen stream is ignored, but read so it cannot stall.
    // The raw stream, not the compat objects: it is a plain full-duplex Duplex.
    response.stream.resume();
    // Headers now: the listener learns its stream is registered.
    response.stream.respond({ ":status": 200, "content-type": "application/x-ndjson" });
  }

  private dial(
    request: Http2ServerRequest,
    response: Http2ServerResponse,
    from: string,
    to: string,
  ): void {
    if (to === "" || !this.options.isMember(to)) {
      throw new RelayRefusal(404, `node ${JSON.stringify(to)} is not a member of this cluster`);
    }
    const streams = this.listeners.get(to)?.filter((entry) => !entry.response.stream.destroyed);
    // The newest listen stream: an older one may belong to a connection going away.
    const listener = streams?.[streams.length - 1];
    if (!listener) throw new RelayRefusal(404, `node ${to} is not connected to this relay`);
    if (this.pending.size >= this.limits.maxPendingDials) {
      throw new RelayRefusal(503, `${this.pending.size} dials are waiting here (the limit)`);
    }
    let fromCaller = 0;
    for (const dial of this.pending.values()) if (dial.from === from) fromCaller += 1;
    if (fromCaller >= this.limits.maxPendingDialsPerNode) {
      throw new RelayRefusal(503, `node ${from} has ${fromCaller} dials waiting here (the limit)`);
    }
    this.checkFlowLimit(from);
    this.checkFlowLimit(to);
    // Random, so a member that is not the target cannot guess another flow's id.
    const id = randomUUID();
    const stream: Duplex = request.stream;
    const cancelTimer = this.timer(() => {
      if (this.pending.delete(id)) {
        this.refuse(
          response,
          new RelayRefusal(504, `node ${to} did not accept within the deadline`),
          from,
        );
      }
    }, this.limits.pendingDialTimeoutMs);
    this.pending.set(id, { id, from, to, stream, response, cancelTimer });
    response.stream.once("close", () => {
      const dial = this.pending.get(id);
      if (dial) {
        dial.cancelTimer();
        this.pending.delete(id);
      }
    });
    listener.response.stream.write(`${JSON.stringify({ accept: id, from })}\n`);
  }

  private accept(
    request: Http2ServerRequest,
    response: Http2ServerResponse,
    node: string,
    id: string,
  ): void {
    const dial = this.pending.get(id);
    // Only the dialled node may take the flow: a member that learnt an id cannot steal it.
    if (!dial || dial.to !== node) throw new RelayRefusal(404, "no pending flow with that id");
    this.pending.delete(id);
    dial.cancelTimer();
    const accepted: Duplex = request.stream;
    dial.response.stream.respond({ ":status": 200 });
    response.stream.respond({ ":status": 200 });
    this.flowsPerNode.set(dial.from, (this.flowsPerNode.get(dial.from) ?? 0) + 1);
    this.flowsPerNode.set(node, (this.flowsPerNode.get(node) ?? 0) + 1);
    const flow = { from: dial.from, to: node, dial: dial.stream, accept: accepted };
    this.flows.add(flow);
    pipeFlow(
      dial.stream,
      accepted,
      (direction, bytes) => {
        const source = direction === "aToB" ? dial.from : node;
        this.bytesFromNode.set(source, (this.bytesFromNode.get(source) ?? 0) + bytes);
      },
      () => {
        this.flows.delete(flow);
        this.decrementFlows(dial.from);
        this.decrementFlows(node);
      },
    );
  }

  private checkFlowLimit(node: string): void {
    const flows = this.flowsPerNode.get(node) ?? 0;
    if (flows >= this.limits.maxRelayedFlowsPerNode) {
      throw new RelayRefusal(503, `node ${node} has ${flows} relayed flows here (the limit)`);
    }
  }

  private decrementFlows(node: string): void {
    const flows = (this.flowsPerNode.get(node) ?? 1) - 1;
    if (flows <= 0) this.flowsPerNode.delete(node);
    else this.flowsPerNode.set(node, flows);
  }

  /** A wire deadline on real time (the hub is a data-plane element, not a decider). */
  private timer(fn: () => void, delayMs: number): () => void {
    const handle = setTimeout(fn, delayMs);
    handle.unref();
    return () => clearTimeout(handle);
  }
}

/**
 * Mounts the hub on an http2 compat handler: call it for requests whose path starts with
 * RELAY_PATH_PREFIX, with the node name the caller's certificate proved.
 */
export function handleRelayRequest(
  hub: RelayHub,
  request: Http2ServerRequest,
  response: Http2ServerResponse,
  callerNode: string,
): void {
  // A server with allowHTTP1 (the coordinator's) may route an HTTP/1.1 request here: a
  // relay stream must be full duplex, which only HTTP/2 gives.
  if (request.httpVersionMajor !== 2 || !request.stream) {
    response.writeHead(505, { "content-type": "text/plain" });
    response.end("relay requests need HTTP/2\n");
    return;
  }
  hub.handle(request, response, callerNode);
}

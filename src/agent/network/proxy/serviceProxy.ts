/**
 * The node's service proxy (REQ-042, ADR 0046): one TCP listener on 127.0.0.1 per port of
 * every service, which the VIP table (nftables DNAT) and the CLOUDLESS_SERVICE_* variables
 * point at. A connection goes to the endpoint the service port's EndpointPicker chooses:
 * a replica on this node is dialled at 127.0.0.1:<hostPort>, one elsewhere through the
 * mesh. A failed connect is reported to the picker (outlier ejection) and retried on
 * another endpoint within the client's connect, so a dead or refusing replica costs the
 * client a little latency, not an error. It runs only from the last service set given
 * (the module keeps it on disk), so it keeps balancing with every coordinator down
 * (NFR-A1).
 */
import * as net from "node:net";
import type { Duplex } from "node:stream";
import type { Service } from "../../../api/gen/cloudless/v1/service_pb.js";
import type { Clock } from "../../../lib/clock.js";
import { type FlowCounters, pipeFlow } from "../../../lib/mesh/flowHeader.js";
import type { Rng } from "../../../lib/rng.js";
import type { Logger } from "../../../observe/logger.js";
import { endSpan, injectTraceparent, spanKind, startSpan } from "../../../observe/tracing.js";
import { EndpointPicker, type PickerLocality, type ServiceEndpoint } from "../endpointPicker.js";
import type { EndpointLabels, NetworkMetrics } from "../networkMetrics.js";
import type { MeshDialer, MeshTarget, VipForward } from "../networkTypes.js";

/**
 * Endpoints tried per client connection: the first pick and two retries. A third failure
 * in a row is the picker's ejection threshold, so one connection can eject a dead
 * endpoint only if it is the only one tried three times, which `exclude` prevents.
 */
export const maxConnectAttempts = 3;
/**
 * The whole connect, every attempt included: a client's own connect timeout is usually
 * longer (Linux gives up after ~2 min), so the proxy answers well before it.
 */
export const connectDeadlineMs = 5_000;
/**
 * One attempt at most: a dropped SYN (a dead node) must leave time for the retries
 * within connectDeadlineMs.
 */
export const attemptTimeoutMs = 2_000;
/**
 * Open client connections per listener: each holds two sockets and their buffers (tens
 * of KiB); 4,096 bounds one service port's share of the agent's memory (~0.5 GiB worst
 * case) and its file descriptors, and is far above what a node's replicas ask for.
 */
export const maxConnectionsPerListener = 4_096;
/** Service ports the proxy listens for: one listener each (a service has ≤ 64 ports). */
export const maxServicePorts = 10_000;

export interface ServiceProxyOptions {
  locality: PickerLocality;
  rng: Rng;
  clock: Clock;
  logger: Logger;
  /** Reaches endpoints on other nodes; without one, only this node's endpoints are used. */
  mesh?: MeshDialer;
  metrics?: NetworkMetrics;
  /** Where the listeners bind; 127.0.0.1 (the VIP DNAT and process replicas reach it there). */
  host?: string;
  maxConnectAttempts?: number;
  connectDeadlineMs?: number;
  attemptTimeoutMs?: number;
  maxConnectionsPerListener?: number;
}

/** One endpoint of one service port, as the proxy dials it. */
interface RoutedEndpoint extends ServiceEndpoint {
  /** The replica's port on its node (127.0.0.1 there). */
  hostPort: number;
}

/** A listener of one service port and what it routes to. */
class PortListener {
  readonly picker: EndpointPicker;
  endpoints = new Map<string, RoutedEndpoint>();
  /** Client connections open now (the per-listener limit counts these). */
  readonly clients = new Set<Duplex>();
  /** Their connections to endpoints, closed with the listener. */
  readonly upstreams = new Set<Duplex>();
  /** Flows by endpoint id, so those of an endpoint that leaves the set can be cut. */
  readonly flowsByEndpoint = new Map<string, Set<Duplex>>();
  vip: string;
  constructor(
    readonly namespace: string,
    readonly service: string,
    readonly portName: string,
    readonly servicePort: number,
    readonly server: net.Server,
    readonly listenPort: number,
    vip: string,
    picker: EndpointPicker,
  ) {
    this.vip = vip;
    this.picker = picker;
  }
}

/** Why a connect to one endpoint failed. */
class ConnectFailure extends Error {}

export class ServiceProxy {
  private readonly listeners = new Map<string, PortListener>();
  private readonly host: string;
  private readonly maxAttempts: number;
  private readonly deadlineMs: number;
  private readonly attemptMs: number;
  private readonly maxFlows: number;
  private closed = false;
  /**
   * The proxy's own listener ports: an endpoint said to listen on one of them (a bad
   * snapshot) would send every connection back into the proxy, in a loop.
   */
  private readonly ownPorts = new Set<number>();
  /** setServices calls run one at a time, in order. */
  private updating: Promise<void> = Promise.resolve();

  constructor(private readonly options: ServiceProxyOptions) {
    this.host = options.host ?? "127.0.0.1";
    this.maxAttempts = options.maxConnectAttempts ?? maxConnectAttempts;
    this.deadlineMs = options.connectDeadlineMs ?? connectDeadlineMs;
    this.attemptMs = options.attemptTimeoutMs ?? attemptTimeoutMs;
    this.maxFlows = options.maxConnectionsPerListener ?? maxConnectionsPerListener;
  }

  /**
   * Replaces the service set: listeners of service ports that stay (same name and port
   * number) keep their port, their flows and their picker's outlier state; new ones open
   * on an ephemeral port; removed ones close, with their flows. Resolves when every
   * listener is open. A service port whose listener cannot open is skipped with a warning
   * (the rest still serve).
   */
  setServices(services: readonly Service[]): Promise<void> {
    const run = this.updating.then(() => this.applyServices(services));
    this.updating = run.catch(() => undefined);
    return run;
  }

  private async applyServices(services: readonly Service[]): Promise<void> {
    if (this.closed) return;
    const wanted = new Map<string, { service: Service; portName: string; port: number }>();
    for (const service of services) {
      for (const port of service.ports) {
        if (port.protocol !== "" && port.protocol !== "tcp") continue;
        // The snapshot is input: a port the VIP table could not hold gets no listener.
        if (!Number.isInteger(port.port) || port.port < 1 || port.port > 65_535) continue;
        if (wanted.size >= maxServicePorts) break;
        wanted.set(listenerKey(service.namespace, service.name, port.name, port.port), {
          service,
          portName: port.name,
          port: port.port,
        });
      }
    }
    if (wanted.size >= maxServicePorts) {
      this.options.logger.warn(
        { limit: maxServicePorts },
        `more than ${maxServicePorts} service ports (limit maxServicePorts); the rest get no listener`,
      );
    }
    for (const [key, listener] of this.listeners) {
      if (!wanted.has(key)) await this.closeListener(key, listener);
    }
    const keepLabels: EndpointLabels[] = [];
    const keepServices: { namespace: string; service: string; port: string }[] = [];
    for (const [key, { service, portName, port }] of wanted) {
      let listener = this.listeners.get(key);
      if (!listener) {
        try {
          listener = await this.openListener(service, portName, port);
        } catch (error) {
          this.options.logger.warn(
            {
              service: `${service.namespace}/${service.name}`,
              port: portName,
              err: error instanceof Error ? error.message : String(error),
            },
            "cannot open the proxy listener of a service port; it gets no traffic from this node",
          );
          continue;
        }
        if (this.closed) {
          listener.server.close();
          return;
        }
        this.listeners.set(key, listener);
      }
      listener.vip = service.vip;
      const endpoints = this.routedEndpoints(service, portName);
      try {
        listener.picker.setEndpoints(endpoints);
        listener.endpoints = new Map(endpoints.map((e) => [e.id, e]));
        // Flows to an endpoint that left the set (its replica was removed, its node
        // lost) are cut, so their clients fail now instead of hanging on a dead peer
        // (ADR 0046). A not-ready endpoint stays in the set: its flows drain.
        for (const [id, flows] of listener.flowsByEndpoint) {
          if (listener.endpoints.has(id)) continue;
          for (const flow of flows) flow.destroy();
          listener.flowsByEndpoint.delete(id);
        }
      } catch (error) {
        // A set the picker refuses (too large, duplicate ids) keeps the last good one.
        this.options.logger.warn(
          {
            service: `${service.namespace}/${service.name}`,
            err: error instanceof Error ? error.message : String(error),
          },
          "refused a service port's endpoint set; keeping the previous one",
        );
      }
      const labels = { namespace: service.namespace, service: service.name, port: portName };
      keepServices.push(labels);
      for (const id of listener.endpoints.keys()) keepLabels.push({ ...labels, endpoint: id });
    }
    this.options.metrics?.retainEndpoints(keepLabels, keepServices);
  }

  /**
   * The endpoints of one service port the proxy can dial: those with a host port for it,
   * on this node or (with a mesh) on another one.
   */
  private routedEndpoints(service: Service, portName: string): RoutedEndpoint[] {
    const here = this.options.locality.node;
    const routed: RoutedEndpoint[] = [];
    const seen = new Set<string>();
    for (const endpoint of service.endpoints) {
      const hostPort = endpoint.hostPorts[portName];
      if (!hostPort || hostPort > 65_535) continue;
      if (endpoint.node !== here && !this.options.mesh) continue;
      if (endpoint.replicaId === "" || seen.has(endpoint.replicaId)) continue;
      seen.add(endpoint.replicaId);
      routed.push({
        id: endpoint.replicaId,
        node: endpoint.node,
        zone: endpoint.zone,
        region: endpoint.region,
        ready: endpoint.ready,
        weight: endpoint.weight,
        hostPort,
      });
    }
    return routed;
  }

  private async openListener(
    service: Service,
    portName: string,
    port: number,
  ): Promise<PortListener> {
    // No Nagle on either side of the proxy: a response written in two pieces (headers, then
    // body) must not wait at each hop for a delayed ACK (~40 ms); see the mesh server's noDelay.
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: this.host, port: 0 }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    // After listening, errors of the server itself (rare: EMFILE on accept) are logged.
    server.on("error", (error) =>
      this.options.logger.warn({ err: error.message }, "proxy listener error"),
    );
    const address = server.address() as net.AddressInfo;
    this.ownPorts.add(address.port);
    const listener = new PortListener(
      service.namespace,
      service.name,
      portName,
      port,
      server,
      address.port,
      service.vip,
      new EndpointPicker({ locality: this.options.locality, rng: this.options.rng }),
    );
    this.options.metrics?.touchServicePort({
      namespace: service.namespace,
      service: service.name,
      port: portName,
    });
    server.on("connection", (socket: net.Socket) => this.onConnection(listener, socket));
    return listener;
  }

  private async closeListener(key: string, listener: PortListener): Promise<void> {
    this.listeners.delete(key);
    this.ownPorts.delete(listener.listenPort);
    const closed = new Promise<void>((resolve) => listener.server.close(() => resolve()));
    for (const flow of [...listener.clients, ...listener.upstreams]) flow.destroy();
    listener.clients.clear();
    listener.upstreams.clear();
    await closed;
  }

  /** A client connected to a service port: pick, connect (with retries), then pipe. */
  private onConnection(listener: PortListener, client: net.Socket): void {
    const serviceLabels = {
      namespace: listener.namespace,
      service: listener.service,
      port: listener.portName,
    };
    if (listener.clients.size >= this.maxFlows || this.closed) {
      this.options.metrics?.refused.inc({ ...serviceLabels, reason: "TooManyConnections" });
      client.resetAndDestroy();
      return;
    }
    listener.clients.add(client);
    client.on("error", () => undefined);
    client.once("close", () => listener.clients.delete(client));
    const span = startSpan(
      "proxy.connection",
      {
        "cloudless.service": `${listener.namespace}/${listener.service}`,
        "cloudless.service.port": listener.portName,
      },
      { kind: spanKind.client, root: true },
    );
    const abort = new AbortController();
    client.once("close", () => abort.abort());
    void this.connectUpstream(listener, abort.signal, injectTraceparent(span)).then((connected) => {
      if (!connected) {
        if (!client.destroyed) {
          this.options.metrics?.refused.inc({ ...serviceLabels, reason: "NoEndpoint" });
        }
        client.resetAndDestroy();
        endSpan(span, new Error("no endpoint accepted the connection"));
        return;
      }
      const { upstream, endpoint } = connected;
      span.setAttribute("cloudless.endpoint", endpoint.id);
      span.setAttribute("cloudless.endpoint.node", endpoint.node);
      if (client.destroyed) {
        upstream.destroy();
        endSpan(span);
        return;
      }
      listener.upstreams.add(upstream);
      this.pipe(listener, client, upstream, { ...serviceLabels, endpoint: endpoint.id }, span);
    });
  }

  /**
   * Tries endpoints until one accepts: at most `maxAttempts`, each within its own
   * deadline and all within the overall one; undefined when none did (or the client left).
   */
  private async connectUpstream(
    listener: PortListener,
    signal: AbortSignal,
    traceparent: string | undefined,
  ): Promise<{ upstream: Duplex; endpoint: RoutedEndpoint } | undefined> {
    const { clock, metrics } = this.options;
    const deadline = clock.nowMs() + this.deadlineMs;
    const tried = new Set<string>();
    // An endpoint whose mesh *path* failed (a relay that just went down, a peer whose
    // direct address changed) may be retried once when nothing else is left: the mesh
    // tries its other paths on the next dial, and a lone endpoint is otherwise lost.
    let pathRetry: string | undefined;
    let pathRetried = false;
    for (let attempt = 0; attempt < this.maxAttempts && !signal.aborted; attempt++) {
      const remainingMs = deadline - clock.nowMs();
      if (remainingMs <= 0) break;
      let pick = listener.picker.pick(clock.nowMs(), tried);
      if (!pick && pathRetry !== undefined && !pathRetried) {
        pathRetried = true;
        tried.delete(pathRetry);
        pick = listener.picker.pick(clock.nowMs(), tried);
      }
      if (!pick) break;
      const endpoint = listener.endpoints.get(pick.endpoint.id);
      if (!endpoint) break;
      tried.add(endpoint.id);
      const labels = {
        namespace: listener.namespace,
        service: listener.service,
        port: listener.portName,
        endpoint: endpoint.id,
      };
      metrics?.touchEndpoint(labels);
      try {
        const upstream = await this.connectTo(
          listener,
          endpoint,
          Math.min(this.attemptMs, remainingMs),
          signal,
          traceparent,
        );
        listener.picker.reportConnectSuccess(endpoint.id);
        metrics?.connections.inc(labels);
        return { upstream, endpoint };
      } catch (error) {
        if (signal.aborted) break;
        if (isMeshPathFailure(error)) pathRetry = endpoint.id;
        const nowMs = clock.nowMs();
        const wasEjected = listener.picker.ejectedUntilMs(endpoint.id, nowMs) !== undefined;
        listener.picker.reportConnectFailure(endpoint.id, nowMs);
        metrics?.connectFailures.inc(labels);
        if (!wasEjected && listener.picker.ejectedUntilMs(endpoint.id, nowMs) !== undefined) {
          metrics?.ejections.inc(labels);
          this.options.logger.warn(
            { service: `${listener.namespace}/${listener.service}`, endpoint: endpoint.id },
            "ejected an endpoint whose connects keep failing",
          );
        }
        this.options.logger.debug(
          { endpoint: endpoint.id, err: error instanceof Error ? error.message : String(error) },
          "connect to an endpoint failed; trying another",
        );
      }
    }
    return undefined;
  }

  /** One connect: direct to a replica on this node, through the mesh to one elsewhere. */
  private connectTo(
    listener: PortListener,
    endpoint: RoutedEndpoint,
    timeoutMs: number,
    signal: AbortSignal,
    traceparent: string | undefined,
  ): Promise<Duplex> {
    if (endpoint.node !== this.options.locality.node) {
      const target: MeshTarget = {
        namespace: listener.namespace,
        service: listener.service,
        port: listener.portName,
        replicaId: endpoint.id,
      };
      const mesh = this.options.mesh;
      if (!mesh) return Promise.reject(new ConnectFailure("no mesh to reach another node"));
      return mesh.dial(endpoint.node, target, {
        timeoutMs,
        signal,
        ...(traceparent ? { traceparent } : {}),
      });
    }
    if (this.ownPorts.has(endpoint.hostPort)) {
      return Promise.reject(new ConnectFailure("the endpoint's port is one of the proxy's own"));
    }
    return connectLocal(endpoint.hostPort, timeoutMs, signal);
  }

  /**
   * Carries bytes both ways until both sides are done (lib/mesh's pipeFlow: half-close is
   * passed on, an error or an abrupt close on either side cuts both), then counts the
   * bytes and ends the span.
   */
  private pipe(
    listener: PortListener,
    client: net.Socket,
    upstream: Duplex,
    labels: EndpointLabels,
    span: ReturnType<typeof startSpan>,
  ): void {
    let failure: unknown;
    const noteFailure = (error: unknown) => {
      failure ??= error;
    };
    client.on("error", noteFailure);
    upstream.on("error", noteFailure);
    let endpointFlows = listener.flowsByEndpoint.get(labels.endpoint);
    if (!endpointFlows) {
      endpointFlows = new Set();
      listener.flowsByEndpoint.set(labels.endpoint, endpointFlows);
    }
    endpointFlows.add(upstream);
    const bytes: FlowCounters = { aToB: 0, bToA: 0 };
    pipeFlow(
      client,
      upstream,
      (direction, count) => {
        bytes[direction] += count;
      },
      () => {
        listener.upstreams.delete(upstream);
        const flows = listener.flowsByEndpoint.get(labels.endpoint);
        flows?.delete(upstream);
        if (flows?.size === 0) listener.flowsByEndpoint.delete(labels.endpoint);
        const metrics = this.options.metrics;
        if (metrics) {
          metrics.bytes.inc({ ...labels, direction: "to_endpoint" }, bytes.aToB);
          metrics.bytes.inc({ ...labels, direction: "from_endpoint" }, bytes.bToA);
        }
        span.setAttribute("cloudless.bytes.to_endpoint", bytes.aToB);
        span.setAttribute("cloudless.bytes.from_endpoint", bytes.bToA);
        endSpan(span, failure);
      },
    );
  }

  /**
   * The VIP table's forwards: each service port's VIP:port to its listener. Service
   * ports without a VIP (none allocated yet) are left out.
   */
  forwards(): VipForward[] {
    const forwards: VipForward[] = [];
    for (const listener of this.listeners.values()) {
      // No VIP allocated yet, or not an IPv4 address the table can hold.
      if (!net.isIPv4(listener.vip)) continue;
      forwards.push({
        vip: listener.vip,
        port: listener.servicePort,
        protocol: "tcp",
        toPort: listener.listenPort,
      });
    }
    return forwards;
  }

  /** The listener port of one service port (process replicas without VIPs connect there). */
  listenerPort(namespace: string, service: string, portName: string): number | undefined {
    for (const listener of this.listeners.values()) {
      if (
        listener.namespace === namespace &&
        listener.service === service &&
        listener.portName === portName
      ) {
        return listener.listenPort;
      }
    }
    return undefined;
  }

  /**
   * For the mesh: the host port of `target.replicaId` when the service set lists it as an
   * endpoint of that service port on this node; undefined otherwise, so a peer can reach
   * only what this node serves for a service, never an arbitrary local port.
   */
  resolveLocal(target: MeshTarget): number | undefined {
    for (const listener of this.listeners.values()) {
      if (
        listener.namespace !== target.namespace ||
        listener.service !== target.service ||
        listener.portName !== target.port
      ) {
        continue;
      }
      const endpoint = listener.endpoints.get(target.replicaId);
      if (
        endpoint &&
        endpoint.node === this.options.locality.node &&
        !this.ownPorts.has(endpoint.hostPort)
      ) {
        return endpoint.hostPort;
      }
    }
    return undefined;
  }

  /**
   * Sockets open over every listener, client and endpoint sides (tests): 0 once every
   * flow has finished, its metrics counted and its span ended.
   */
  get openSockets(): number {
    let count = 0;
    for (const listener of this.listeners.values()) {
      count += listener.clients.size + listener.upstreams.size;
    }
    return count;
  }

  /** Closes every listener and every flow; the proxy serves nothing afterwards. */
  async close(): Promise<void> {
    this.closed = true;
    await this.updating;
    await Promise.all(
      [...this.listeners.entries()].map(([key, listener]) => this.closeListener(key, listener)),
    );
  }
}

function listenerKey(namespace: string, service: string, portName: string, port: number): string {
  return `${namespace}\u0000${service}\u0000${portName}\u0000${port}`;
}

/** A TCP connect to 127.0.0.1:port with a deadline, abortable by the client leaving. */
function connectLocal(port: number, timeoutMs: number, signal: AbortSignal): Promise<Duplex> {
  return new Promise<Duplex>((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(
      () => fail(new ConnectFailure(`connect timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
    const onAbort = () => fail(new ConnectFailure("the client left"));
    signal.addEventListener("abort", onAbort, { once: true });
    function cleanup() {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      socket.off("error", fail);
    }
    function fail(error: Error) {
      cleanup();
      socket.destroy();
      reject(error);
    }
    socket.once("error", fail);
    socket.once("connect", () => {
      cleanup();
      resolve(socket);
    });
  });
}

/** A mesh dial that failed on the way (no path, timed out), not one the remote refused. */
function isMeshPathFailure(error: unknown): boolean {
  if (typeof error !== "object" || error === null || !("code" in error)) return false;
  const { name, code } = error as { name?: unknown; code?: unknown };
  return name === "MeshDialError" && (code === "unreachable" || code === "timeout");
}

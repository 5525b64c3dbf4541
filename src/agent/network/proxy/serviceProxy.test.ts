import * as net from "node:net";
import type { Duplex } from "node:stream";
import { create } from "@bufbuild/protobuf";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { type Service, ServiceSchema } from "../../../api/gen/cloudless/v1/service_pb.js";
import { ManualClock, systemClock } from "../../../lib/clock.js";
import { seededRng } from "../../../lib/rng.js";
import { silentLogger } from "../../../observe/logger.js";
import { NetworkMetrics } from "../networkMetrics.js";
import type { MeshDialer, MeshDialOptions, MeshTarget } from "../networkTypes.js";
import { ServiceProxy, type ServiceProxyOptions } from "./serviceProxy.js";

const here = { node: "n1", zone: "a", region: "r" };

/** Everything a test opened, closed after it whatever happened. */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A real TCP backend that answers every connection with its name and closes. */
async function nameServer(name: string): Promise<{ port: number; accepted: () => number }> {
  let accepted = 0;
  const server = net.createServer((socket) => {
    accepted += 1;
    socket.on("error", () => undefined);
    socket.end(name);
  });
  const port = await listen(server);
  cleanups.push(() => closeServer(server));
  return { port, accepted: () => accepted };
}

/** Echoes what it read once the client half-closes, then closes. */
async function echoOnEndServer(): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    const chunks: Buffer[] = [];
    socket.on("error", () => undefined);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("end", () => socket.end(Buffer.concat(chunks)));
  });
  const port = await listen(server);
  cleanups.push(() => closeServer(server));
  return port;
}

/** Holds connections open until the test ends. */
async function holdingServer(): Promise<{ port: number; sockets: Set<net.Socket> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => undefined);
    socket.on("close", () => sockets.delete(socket));
  });
  const port = await listen(server);
  cleanups.push(() => {
    for (const socket of sockets) socket.destroy();
    return closeServer(server);
  });
  return { port, sockets };
}

/** A port nothing listens on (connects are refused). */
async function refusedPort(): Promise<number> {
  const server = net.createServer();
  const port = await listen(server);
  await closeServer(server);
  return port;
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port: 0 }, () =>
      resolve((server.address() as net.AddressInfo).port),
    );
  });
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** Connects, optionally sends, half-closes, and reads until the proxy closes. */
function request(
  port: number,
  send = "",
): Promise<{ ok: true; body: string } | { ok: false; error: string }> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let failed: string | undefined;
    socket.on("connect", () => socket.end(send));
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", (error: NodeJS.ErrnoException) => {
      failed = error.code ?? error.message;
    });
    socket.on("close", () =>
      resolve(
        failed !== undefined
          ? { ok: false, error: failed }
          : { ok: true, body: Buffer.concat(chunks).toString() },
      ),
    );
  });
}

interface EndpointSpec {
  id: string;
  port: number;
  node?: string;
  zone?: string;
  region?: string;
  ready?: boolean;
  weight?: number;
}

function service(
  name: string,
  endpoints: EndpointSpec[],
  ports = [{ name: "http", port: 80 }],
): Service {
  return create(ServiceSchema, {
    namespace: "default",
    name,
    dnsName: `${name}.default.svc.cluster.local`,
    vip: "10.96.0.20",
    ports: ports.map((p) => ({ ...p, protocol: "tcp" })),
    endpoints: endpoints.map((e) => ({
      replicaId: e.id,
      node: e.node ?? here.node,
      zone: e.zone ?? here.zone,
      region: e.region ?? here.region,
      ready: e.ready ?? true,
      weight: e.weight ?? 1,
      hostPorts: Object.fromEntries(ports.map((p) => [p.name, e.port])),
    })),
  });
}

function newProxy(options: Partial<ServiceProxyOptions> = {}): {
  proxy: ServiceProxy;
  metrics: NetworkMetrics;
} {
  const metrics = new NetworkMetrics(new Registry());
  const proxy = new ServiceProxy({
    locality: here,
    rng: seededRng(14),
    clock: systemClock,
    logger: silentLogger,
    metrics,
    ...options,
  });
  cleanups.push(() => proxy.close());
  return { proxy, metrics };
}

function port(proxy: ServiceProxy, name = "web", portName = "http"): number {
  const listening = proxy.listenerPort("default", name, portName);
  if (listening === undefined) throw new Error(`no listener for ${name}/${portName}`);
  return listening;
}

/** `count` requests, `parallel` at a time; the bodies (or failures) counted. */
async function load(
  listenPort: number,
  count: number,
  parallel = 25,
): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  let started = 0;
  const worker = async () => {
    while (started < count) {
      started += 1;
      const result = await request(listenPort);
      const key = result.ok ? result.body : `failed:${result.error}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return counts;
}

async function counterValue(
  counter: {
    get(): Promise<{ values: { labels: Record<string, string | number>; value: number }[] }>;
  },
  labels: Record<string, string>,
): Promise<number> {
  const { values } = await counter.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}

/** A mesh for tests: dials the "remote" replica's port on this host, and records what it was asked. */
class LoopbackMesh implements MeshDialer {
  readonly dials: { node: string; target: MeshTarget; options?: MeshDialOptions }[] = [];
  constructor(private readonly ports: Map<string, number>) {}
  dial(node: string, target: MeshTarget, options?: MeshDialOptions): Promise<Duplex> {
    this.dials.push({ node, target, ...(options ? { options } : {}) });
    const port = this.ports.get(target.replicaId);
    if (port === undefined) return Promise.reject(new Error(`no such replica ${target.replicaId}`));
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
      socket.once("connect", () => resolve(socket));
      socket.once("error", reject);
    });
  }
}

describe("ServiceProxy (REQ-042)", () => {
  it("REQ-042: a not-ready endpoint gets no new connection (readiness-gated)", async () => {
    const a = await nameServer("a");
    const b = await nameServer("b");
    const { proxy } = newProxy();
    await proxy.setServices([
      service("web", [
        { id: "a", port: a.port },
        { id: "b", port: b.port, ready: false },
      ]),
    ]);
    const counts = await load(port(proxy), 100);
    expect(counts).toEqual(new Map([["a", 100]]));
    expect(b.accepted()).toBe(0);
  });

  it("REQ-042: weights 1:1:2 over 1,000 real connections give shares within 5 points of 25/25/50 %", async () => {
    const backends = await Promise.all(["a", "b", "c"].map(nameServer));
    const { proxy } = newProxy({ rng: seededRng(Date.now() % 1_000_000) });
    await proxy.setServices([
      service("web", [
        { id: "a", port: backends[0]!.port, weight: 1 },
        { id: "b", port: backends[1]!.port, weight: 1 },
        { id: "c", port: backends[2]!.port, weight: 2 },
      ]),
    ]);
    const counts = await load(port(proxy), 1_000);
    const total = [...counts.values()].reduce((sum, n) => sum + n, 0);
    expect(total).toBe(1_000);
    expect([...counts.keys()].sort()).toEqual(["a", "b", "c"]);
    const share = (name: string) => ((counts.get(name) ?? 0) / total) * 100;
    expect(Math.abs(share("a") - 25)).toBeLessThanOrEqual(5);
    expect(Math.abs(share("b") - 25)).toBeLessThanOrEqual(5);
    expect(Math.abs(share("c") - 50)).toBeLessThanOrEqual(5);
  });

  it("REQ-042: a ready endpoint on this node takes every connection; remote ones are reached through the mesh only when it is not ready", async () => {
    const local = await nameServer("local");
    const zoneB = await nameServer("zone-b");
    const mesh = new LoopbackMesh(new Map([["remote", zoneB.port]]));
    const { proxy } = newProxy({ mesh });
    const endpoints = (localReady: boolean) => [
      { id: "local", port: local.port, ready: localReady },
      { id: "remote", port: 1, node: "n2", zone: "b", weight: 1_000 },
    ];
    await proxy.setServices([service("web", endpoints(true))]);
    expect(await load(port(proxy), 200)).toEqual(new Map([["local", 200]]));
    expect(mesh.dials).toHaveLength(0);

    await proxy.setServices([service("web", endpoints(false))]);
    expect(await load(port(proxy), 20)).toEqual(new Map([["zone-b", 20]]));
    expect(mesh.dials).toHaveLength(20);
    expect(mesh.dials[0]).toMatchObject({
      node: "n2",
      target: { namespace: "default", service: "web", port: "http", replicaId: "remote" },
    });
    expect(mesh.dials[0]?.options?.timeoutMs).toBeGreaterThan(0);
  });

  it("REQ-042 REQ-003: a lone remote endpoint whose mesh path fails once (a relay going down) is dialled again within the client's connect; a refusal by the remote is not", async () => {
    const remote = await nameServer("remote");
    const loopback = new LoopbackMesh(new Map([["remote", remote.port]]));
    let failNext = 0;
    let failure: "unreachable" | "refused" = "unreachable";
    const mesh: MeshDialer = {
      dial(node, target, options) {
        if (failNext > 0) {
          failNext -= 1;
          return Promise.reject(
            Object.assign(new Error(`path to ${node} broke`), {
              name: "MeshDialError",
              code: failure,
            }),
          );
        }
        return loopback.dial(node, target, options);
      },
    };
    const { proxy } = newProxy({ mesh });
    await proxy.setServices([service("web", [{ id: "remote", port: 1, node: "n2", zone: "b" }])]);
    for (let i = 0; i < 5; i++) {
      failNext = 1;
      expect(await request(port(proxy))).toMatchObject({ ok: true, body: "remote" });
    }
    failure = "refused";
    failNext = 1;
    expect((await request(port(proxy))).ok).toBe(false);
  });

  it("REQ-042: a refused endpoint is retried on another within the client's connect: no client connection fails", async () => {
    const good = await nameServer("good");
    const dead = await refusedPort();
    const { proxy, metrics } = newProxy();
    await proxy.setServices([
      service("web", [
        { id: "dead", port: dead, weight: 1 },
        { id: "good", port: good.port, weight: 1 },
      ]),
    ]);
    const counts = await load(port(proxy), 100, 1);
    expect(counts).toEqual(new Map([["good", 100]]));
    expect(await counterValue(metrics.connectFailures, { endpoint: "dead" })).toBeGreaterThan(0);
    expect(await counterValue(metrics.connections, { endpoint: "good" })).toBe(100);
  });

  it("REQ-042: an endpoint whose connects fail is ejected after 3 failures and tried again after its back-off", async () => {
    const good = await nameServer("good");
    const dead = await refusedPort();
    const clock = new ManualClock(1_000_000);
    const { proxy, metrics } = newProxy({ clock });
    await proxy.setServices([
      service("web", [
        // Heavily weighted: picked first nearly always while it is not ejected.
        { id: "dead", port: dead, weight: 1_000 },
        { id: "good", port: good.port, weight: 1 },
      ]),
    ]);
    expect(await load(port(proxy), 50, 1)).toEqual(new Map([["good", 50]]));
    expect(await counterValue(metrics.connectFailures, { endpoint: "dead" })).toBe(3);
    expect(await counterValue(metrics.ejections, { endpoint: "dead" })).toBe(1);

    clock.advance(1_001);
    expect(await load(port(proxy), 10, 1)).toEqual(new Map([["good", 10]]));
    // One more failure after the back-off, counted anew towards the next ejection.
    expect(
      await counterValue(metrics.connectFailures, { endpoint: "dead" }),
    ).toBeGreaterThanOrEqual(4);
  });

  it("REQ-042: the client's connection is reset when every attempt fails", async () => {
    const { proxy, metrics } = newProxy();
    const dead1 = await refusedPort();
    const dead2 = await refusedPort();
    await proxy.setServices([
      service("web", [
        { id: "d1", port: dead1 },
        { id: "d2", port: dead2 },
      ]),
    ]);
    const result = await request(port(proxy), "hello");
    expect(result).toEqual({ ok: false, error: "ECONNRESET" });
    expect(await counterValue(metrics.refused, { reason: "NoEndpoint" })).toBe(1);
  });

  it("REQ-042: a client's half-close reaches the endpoint and the answer still comes back", async () => {
    const echo = await echoOnEndServer();
    const { proxy, metrics } = newProxy();
    await proxy.setServices([service("web", [{ id: "echo", port: echo }])]);
    const payload = "x".repeat(200_000);
    const result = await request(port(proxy), payload);
    expect(result).toEqual({ ok: true, body: payload });
    expect(await counterValue(metrics.bytes, { endpoint: "echo", direction: "to_endpoint" })).toBe(
      200_000,
    );
    expect(
      await counterValue(metrics.bytes, { endpoint: "echo", direction: "from_endpoint" }),
    ).toBe(200_000);
  });

  it("REQ-042: connections above the per-listener limit are reset", async () => {
    const holding = await holdingServer();
    const { proxy, metrics } = newProxy({ maxConnectionsPerListener: 2 });
    await proxy.setServices([service("web", [{ id: "h", port: holding.port }])]);
    const held: net.Socket[] = [];
    cleanups.push(() => {
      for (const socket of held) socket.destroy();
    });
    // One after the other, each piped through before the next: both fit the limit of 2.
    for (const expected of [1, 2]) {
      const socket = net.connect(port(proxy), "127.0.0.1");
      socket.on("error", () => undefined);
      held.push(socket);
      await waitUntil(() => holding.sockets.size === expected);
    }
    expect(await request(port(proxy))).toEqual({ ok: false, error: "ECONNRESET" });
    expect(await counterValue(metrics.refused, { reason: "TooManyConnections" })).toBe(1);
  });

  it("REQ-042: set updates keep the listeners of ports that stay, open new ones and close removed ones with their flows", async () => {
    const a = await nameServer("a");
    const holding = await holdingServer();
    const { proxy, metrics } = newProxy();
    await proxy.setServices([
      service("web", [{ id: "a", port: a.port }]),
      service("db", [{ id: "h", port: holding.port }], [{ name: "sql", port: 5432 }]),
    ]);
    const webPort = port(proxy);
    const dbPort = port(proxy, "db", "sql");
    const flow = net.connect(dbPort, "127.0.0.1");
    const flowClosed = new Promise<void>((resolve) => flow.once("close", () => resolve()));
    flow.on("error", () => undefined);
    await waitUntil(() => holding.sockets.size === 1);
    expect(await load(webPort, 3)).toEqual(new Map([["a", 3]]));

    const b = await nameServer("b");
    await proxy.setServices([
      service(
        "web",
        [{ id: "b", port: b.port }],
        [
          { name: "http", port: 80 },
          { name: "admin", port: 9000 },
        ],
      ),
    ]);
    expect(port(proxy)).toBe(webPort);
    expect(await load(webPort, 3)).toEqual(new Map([["b", 3]]));
    expect(await load(port(proxy, "web", "admin"), 2)).toEqual(new Map([["b", 2]]));
    await flowClosed;
    expect(proxy.listenerPort("default", "db", "sql")).toBeUndefined();
    expect(await request(dbPort)).toEqual({ ok: false, error: "ECONNREFUSED" });
    // Series of the endpoints and services that left are dropped.
    expect(await counterValue(metrics.connections, { endpoint: "a" })).toBe(0);
    expect(await counterValue(metrics.connections, { service: "db" })).toBe(0);
    expect(metrics.endpointSeriesCount).toBeLessThanOrEqual(2);
  });

  it("REQ-042: flows to an endpoint that leaves the set are cut; flows to one that only turns not ready drain", async () => {
    const removed = await holdingServer();
    const draining = await holdingServer();
    const { proxy } = newProxy();
    const open = async (endpoints: EndpointSpec[], backend: { sockets: Set<net.Socket> }) => {
      await proxy.setServices([service("web", endpoints)]);
      const socket = net.connect(port(proxy), "127.0.0.1");
      socket.on("error", () => undefined);
      cleanups.push(() => {
        socket.destroy();
      });
      await waitUntil(() => backend.sockets.size === 1);
      return socket;
    };
    const toRemoved = await open([{ id: "gone", port: removed.port }], removed);
    const toDraining = await open(
      [
        { id: "gone", port: removed.port, ready: false },
        { id: "drain", port: draining.port },
      ],
      draining,
    );
    // "drain" turns not ready, "gone" leaves the set.
    await proxy.setServices([service("web", [{ id: "drain", port: draining.port, ready: false }])]);
    await waitUntil(() => toRemoved.destroyed && removed.sockets.size === 0);
    expect(toDraining.destroyed).toBe(false);
    expect(draining.sockets.size).toBe(1);
  });

  it("REQ-042: forwards() sends each VIP:port to its listener, and resolveLocal names only this node's endpoints of that port", async () => {
    const a = await nameServer("a");
    const mesh = new LoopbackMesh(new Map());
    const { proxy } = newProxy({ mesh });
    await proxy.setServices([
      service("web", [
        { id: "a", port: a.port },
        { id: "r", port: 4000, node: "n2" },
      ]),
    ]);
    expect(proxy.forwards()).toEqual([
      { vip: "10.96.0.20", port: 80, protocol: "tcp", toPort: port(proxy) },
    ]);
    // Hostile or unfinished input: no VIP yet, a VIP that is not IPv4, a port out of range.
    await proxy.setServices([
      { ...service("web", [{ id: "a", port: a.port }]), vip: "" },
      { ...service("db", [{ id: "a", port: a.port }]), vip: "10.96.0.999; flush ruleset" },
      service("bad", [{ id: "a", port: a.port }], [{ name: "big", port: 70_000 }]),
    ]);
    expect(proxy.forwards()).toEqual([]);
    expect(proxy.listenerPort("default", "bad", "big")).toBeUndefined();
    await proxy.setServices([
      service("web", [
        { id: "a", port: a.port },
        { id: "r", port: 4000, node: "n2" },
      ]),
    ]);
    const target = { namespace: "default", service: "web", port: "http" };
    expect(proxy.resolveLocal({ ...target, replicaId: "a" })).toBe(a.port);
    expect(proxy.resolveLocal({ ...target, replicaId: "r" })).toBeUndefined();
    expect(proxy.resolveLocal({ ...target, port: "other", replicaId: "a" })).toBeUndefined();
    expect(proxy.resolveLocal({ ...target, service: "db", replicaId: "a" })).toBeUndefined();
  });

  it("REQ-042: an endpoint said to listen on one of the proxy's own ports is never dialled (no loop back into the proxy)", async () => {
    const a = await nameServer("a");
    const { proxy, metrics } = newProxy();
    await proxy.setServices([service("web", [{ id: "a", port: a.port }])]);
    const own = port(proxy);
    await proxy.setServices([
      service("web", [
        { id: "a", port: a.port, weight: 1 },
        { id: "loop", port: own, weight: 1_000 },
      ]),
    ]);
    expect(await load(own, 20, 1)).toEqual(new Map([["a", 20]]));
    expect(proxy.openSockets).toBe(0);
    expect(await counterValue(metrics.connections, { endpoint: "loop" })).toBe(0);
    expect(
      proxy.resolveLocal({ namespace: "default", service: "web", port: "http", replicaId: "loop" }),
    ).toBeUndefined();
  });

  it("REQ-042: without a mesh, endpoints on other nodes are left out instead of failing connects", async () => {
    const a = await nameServer("a");
    const { proxy, metrics } = newProxy();
    await proxy.setServices([
      service("web", [
        { id: "a", port: a.port, ready: true, weight: 1 },
        { id: "r", port: 4000, node: "n2", weight: 1_000 },
      ]),
    ]);
    expect(await load(port(proxy), 20)).toEqual(new Map([["a", 20]]));
    expect(await counterValue(metrics.connectFailures, {})).toBe(0);
  });

  it("REQ-042: after close() no listener answers and open flows are cut", async () => {
    const holding = await holdingServer();
    const { proxy } = newProxy();
    await proxy.setServices([service("web", [{ id: "h", port: holding.port }])]);
    const listenPort = port(proxy);
    const flow = net.connect(listenPort, "127.0.0.1");
    flow.on("error", () => undefined);
    const flowClosed = new Promise<void>((resolve) => flow.once("close", () => resolve()));
    await waitUntil(() => holding.sockets.size === 1);
    await proxy.close();
    await flowClosed;
    expect(await request(listenPort)).toEqual({ ok: false, error: "ECONNREFUSED" });
    await waitUntil(() => holding.sockets.size === 0);
  });
});

async function waitUntil(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

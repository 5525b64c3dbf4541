import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import type { Duplex } from "node:stream";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import {
  type HeartbeatRequest,
  HeartbeatResponseSchema,
} from "../../api/gen/cloudless/v1/node_pb.js";
import {
  type MeshPeer,
  type MeshPeerSchema,
  type NetworkSnapshot,
  NetworkSnapshotSchema,
  type PeerPath,
  PeerPathSchema,
  type Service,
  type ServiceSchema,
} from "../../api/gen/cloudless/v1/service_pb.js";

type ServiceInit = MessageInitShape<typeof ServiceSchema>;
type PeerInit = MessageInitShape<typeof MeshPeerSchema>;

import { systemClock } from "../../lib/clock.js";
import { seededRng } from "../../lib/rng.js";
import { silentLogger } from "../../observe/logger.js";
import {
  dnsVipOf,
  envName,
  NetworkModule,
  type NetworkModuleOptions,
  snapshotFileName,
} from "./networkModule.js";
import type {
  MeshHooks,
  MeshRuntime,
  MeshTarget,
  ServiceDirectory,
  VipForward,
  VipProgrammer,
} from "./networkTypes.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "cloudless-netmod-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function backend(name: string): Promise<number> {
  const server = net.createServer((socket) => {
    socket.on("error", () => undefined);
    socket.end(name);
  });
  await new Promise<void>((resolve) => server.listen({ host: "127.0.0.1", port: 0 }, resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as net.AddressInfo).port;
}

function fetchBody(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", reject);
    socket.on("close", () => resolve(Buffer.concat(chunks).toString()));
  });
}

function connectError(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.on("connect", () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.on("error", (error: NodeJS.ErrnoException) => resolve(error.code));
  });
}

function snapshot(
  version: number,
  services: ServiceInit[],
  peers: PeerInit[] = [],
): NetworkSnapshot {
  return create(NetworkSnapshotSchema, {
    version: BigInt(version),
    clusterDomain: "cluster.local",
    serviceCidr: "10.96.0.0/16",
    services: services.map((s) => ({
      namespace: "default",
      dnsName: `${s.name}.default.svc.cluster.local`,
      ...s,
    })),
    peers,
    coordinatorRelays: ["10.0.0.1:7443"],
  });
}

function webService(name: string, port: number, vip = "10.96.0.20"): ServiceInit {
  return {
    name,
    vip,
    ports: [{ name: "http", port: 80, protocol: "tcp" }],
    endpoints: [
      {
        replicaId: `${name}-1`,
        node: "n1",
        zone: "a",
        region: "r",
        ready: true,
        weight: 1,
        hostPorts: { http: port },
      },
    ],
  };
}

class FakeVips implements VipProgrammer {
  applied: VipForward[][] = [];
  removed = 0;
  apply(forwards: VipForward[]): void {
    this.applied.push(forwards);
  }
  remove(): void {
    this.removed += 1;
  }
}

class FakeDns implements ServiceDirectory {
  services: { domain: string; names: string[] }[] = [];
  stopped = 0;
  setServices(domain: string, services: Service[]): void {
    this.services.push({ domain, names: services.map((s) => s.name) });
  }
  start(): { port: number } {
    return { port: 10_053 };
  }
  stop(): void {
    this.stopped += 1;
  }
  stats() {
    return { queries: 7, answers: 5 };
  }
}

class FakeMesh implements MeshRuntime {
  peerSets: MeshPeer[][] = [];
  stopped = 0;
  constructor(readonly hooks: MeshHooks) {}
  async start() {
    return { port: 7444 };
  }
  setPeers(peers: MeshPeer[]): void {
    this.peerSets.push(peers);
  }
  dial(_node: string, _target: MeshTarget): Promise<Duplex> {
    return Promise.reject(new Error("no peers in this test"));
  }
  peers(): PeerPath[] {
    return [create(PeerPathSchema, { node: "n2", path: "relayed", via: "n3", rttMs: 12.5 })];
  }
  async stop() {
    this.stopped += 1;
  }
}

function newModule(dataDir: string, extra: Partial<NetworkModuleOptions> = {}) {
  const vips = new FakeVips();
  const dns = new FakeDns();
  let mesh: FakeMesh | undefined;
  const sent: HeartbeatRequest[] = [];
  const module = new NetworkModule({
    nodeName: "n1",
    zone: "a",
    region: "r",
    dataDir,
    clock: systemClock,
    rng: seededRng(1),
    logger: silentLogger,
    registry: new Registry(),
    createMesh: (hooks) => {
      mesh = new FakeMesh(hooks);
      return mesh;
    },
    vips,
    dns,
    advertiseAddresses: ["192.0.2.7"],
    relay: true,
    ...extra,
  });
  let stopped = false;
  cleanups.push(async () => {
    if (!stopped) await module.stop({ leaving: false });
  });
  const context = { send: (message: HeartbeatRequest) => sent.push(message) };
  return {
    module,
    vips,
    dns,
    sent,
    context,
    mesh: () => mesh,
    stop: async (leaving = false) => {
      stopped = true;
      await module.stop({ leaving });
    },
  };
}

function message(network: NetworkSnapshot) {
  return create(HeartbeatResponseSchema, { network });
}

async function until(
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("NetworkModule", () => {
  it("NFR-A1 REQ-042: a snapshot saved by one agent is applied at the next start with no coordinator: a client reaches the local backend through the proxy", async () => {
    const dataDir = await tempDir();
    const port = await backend("hello from web-1");
    const first = newModule(dataDir);
    await first.module.start(first.context);
    first.module.receive(message(snapshot(3, [webService("web", port)])));
    const file = path.join(dataDir, snapshotFileName);
    await until(async () => (await stat(file).catch(() => undefined)) !== undefined);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    await first.stop();

    // A new agent on the same data dir: start() only, no receive (every coordinator down).
    const second = newModule(dataDir);
    await second.module.start(second.context);
    const listener = second.module.listenerPort("default", "web", "http");
    expect(listener).toBeDefined();
    expect(await fetchBody(listener!)).toBe("hello from web-1");
    expect(second.vips.applied.at(-1)).toEqual([
      { vip: "10.96.0.20", port: 80, protocol: "tcp", toPort: listener },
      { vip: "10.96.0.10", port: 53, protocol: "udp", toPort: 10_053 },
      { vip: "10.96.0.10", port: 53, protocol: "tcp", toPort: 10_053 },
    ]);
    expect(second.dns.services.at(-1)).toEqual({ domain: "cluster.local", names: ["web"] });
    expect(second.mesh()?.peerSets).toHaveLength(1);
  });

  it("REQ-042: a snapshot with the version held is not re-applied; any other replaces it, a lower one too (a new leader whose clock is behind)", async () => {
    const dataDir = await tempDir();
    const a = await backend("a");
    const b = await backend("b");
    const c = await backend("c");
    const t = newModule(dataDir);
    await t.module.start(t.context);
    t.module.receive(message(snapshot(5, [webService("web", a)])));
    await until(() => t.module.listenerPort("default", "web", "http") !== undefined);
    const listener = t.module.listenerPort("default", "web", "http")!;
    t.module.receive(message(snapshot(5, [webService("web", b)])));
    t.module.receive(create(HeartbeatResponseSchema, {}));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await fetchBody(listener)).toBe("a");
    t.module.receive(message(snapshot(3, [webService("web", c)])));
    await until(async () => (await fetchBody(listener)) === "c");
  });

  it("REQ-042: after stop no listener answers, the VIP table is removed, DNS and the mesh are stopped; leaving also deletes the snapshot", async () => {
    const dataDir = await tempDir();
    const port = await backend("x");
    const t = newModule(dataDir);
    await t.module.start(t.context);
    t.module.receive(message(snapshot(1, [webService("web", port)])));
    await until(() => t.module.listenerPort("default", "web", "http") !== undefined);
    const listener = t.module.listenerPort("default", "web", "http")!;
    const file = path.join(dataDir, snapshotFileName);
    await until(async () => (await stat(file).catch(() => undefined)) !== undefined);
    await t.stop(true);
    expect(await connectError(listener)).toBe("ECONNREFUSED");
    expect(t.vips.removed).toBe(1);
    expect(t.dns.stopped).toBe(1);
    expect(t.mesh()?.stopped).toBe(1);
    expect(await stat(file).catch(() => undefined)).toBeUndefined();
  });

  it("REQ-003 REQ-060: the NetworkReport carries the mesh port, advertised addresses, relay flag and the mesh's peer paths; path changes become PathChanged events", async () => {
    const t = newModule(await tempDir());
    await t.module.start(t.context);
    const [report] = t.module.statusMessages();
    expect(report?.kind.case).toBe("network");
    if (report?.kind.case !== "network") throw new Error("not a network report");
    expect(report.kind.value.meshPort).toBe(7444);
    expect(report.kind.value.advertiseAddresses).toEqual(["192.0.2.7"]);
    expect(report.kind.value.relay).toBe(true);
    expect(report.kind.value.peers.map((p) => [p.node, p.path, p.via])).toEqual([
      ["n2", "relayed", "n3"],
    ]);

    t.mesh()?.hooks.onPathChange("n2", "direct", "relayed", "coordinator 10.0.0.1:7443");
    const event = t.sent.at(-1);
    if (event?.kind.case !== "events") throw new Error("no event sent");
    expect(event.kind.value.events[0]).toMatchObject({
      type: "PathChanged",
      reason: "PathRelayed",
      attributes: { peer: "n2", from: "direct", to: "relayed", via: "coordinator 10.0.0.1:7443" },
    });
  });

  it("REQ-040: the mesh resolves only replicas this node serves for that service port", async () => {
    const port = await backend("x");
    const t = newModule(await tempDir());
    await t.module.start(t.context);
    t.module.receive(message(snapshot(1, [webService("web", port)])));
    await until(() => t.module.listenerPort("default", "web", "http") !== undefined);
    const hooks = t.mesh()!.hooks;
    expect(
      hooks.resolveLocal({
        namespace: "default",
        service: "web",
        port: "http",
        replicaId: "web-1",
      }),
    ).toBe(port);
    expect(
      hooks.resolveLocal({
        namespace: "default",
        service: "web",
        port: "http",
        replicaId: "other",
      }),
    ).toBeUndefined();
  });

  it("REQ-041: replicas get CLOUDLESS_SERVICE_* variables of their namespace (VIP when VIPs are on) and containers the name server", async () => {
    const port = await backend("x");
    const t = newModule(await tempDir());
    await t.module.start(t.context);
    t.module.receive(
      message(
        snapshot(1, [
          webService("web-api", port),
          { ...webService("other", port), namespace: "prod" },
        ]),
      ),
    );
    await until(() => t.module.listenerPort("default", "web-api", "http") !== undefined);
    const processEnv = t.module.replicaNetworking({ namespace: "default", driver: "process" });
    expect(processEnv).toEqual({
      env: {
        CLOUDLESS_SERVICE_WEB_API_HOST: "10.96.0.20",
        CLOUDLESS_SERVICE_WEB_API_PORT: "80",
        CLOUDLESS_SERVICE_WEB_API_PORT_HTTP: "80",
      },
    });
    expect(t.module.replicaNetworking({ namespace: "default", driver: "container" }).dns).toEqual({
      servers: ["10.96.0.10"],
      search: ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
      options: ["ndots:5"],
    });
  });

  it("REQ-041: without VIPs, process replicas get 127.0.0.1 and the proxy's listener; containers get nothing", async () => {
    const port = await backend("x");
    const t = newModule(await tempDir(), { vips: undefined });
    await t.module.start(t.context);
    t.module.receive(message(snapshot(1, [webService("web", port)])));
    await until(() => t.module.listenerPort("default", "web", "http") !== undefined);
    const listener = String(t.module.listenerPort("default", "web", "http"));
    expect(t.module.replicaNetworking({ namespace: "default", driver: "process" }).env).toEqual({
      CLOUDLESS_SERVICE_WEB_HOST: "127.0.0.1",
      CLOUDLESS_SERVICE_WEB_PORT: listener,
      CLOUDLESS_SERVICE_WEB_PORT_HTTP: listener,
    });
    expect(t.module.replicaNetworking({ namespace: "default", driver: "container" })).toEqual({
      env: {},
    });
  });

  it("NFR-A1: an unreadable snapshot file costs a warning and an empty start, not a failed agent", async () => {
    const dataDir = await tempDir();
    await mkdir(path.join(dataDir, "network"), { recursive: true });
    await writeFile(path.join(dataDir, snapshotFileName), Buffer.from([0xff, 0xff, 0xff, 0x01]));
    const t = newModule(dataDir);
    await t.module.start(t.context);
    expect(t.vips.applied).toHaveLength(0);
  });

  it("exports DNS counters and peer gauges from the mesh and the name server", async () => {
    const registry = new Registry();
    const t = newModule(await tempDir(), { registry });
    await t.module.start(t.context);
    const text = await registry.metrics();
    expect(text).toContain('cloudless_agent_mesh_peer_path{peer="n2",path="relayed"} 1');
    expect(text).toContain('cloudless_agent_mesh_peer_rtt_seconds{peer="n2"} 0.0125');
    expect(text).toContain("cloudless_agent_dns_queries_total 7");
    expect(text).toContain("cloudless_agent_dns_answers_total 5");
  });

  it("dnsVipOf takes .10 of the service range; envName upper-cases and replaces what is not [A-Z0-9]", () => {
    expect(dnsVipOf("10.96.0.0/16")).toBe("10.96.0.10");
    expect(dnsVipOf("10.96.5.7/24")).toBe("10.96.5.10");
    expect(dnsVipOf("10.96.0.0/30")).toBeUndefined();
    expect(dnsVipOf("fd00::/64")).toBeUndefined();
    expect(dnsVipOf("300.1.1.1/8")).toBeUndefined();
    expect(envName("web-api.v2")).toBe("WEB_API_V2");
  });

  it("REQ-061: egressView gives the egress module the services' VIPs and ports and the name server to exempt (VIP and loopback)", async () => {
    const withVips = newModule(await tempDir());
    await withVips.module.start(withVips.context);
    withVips.module.receive(message(snapshot(1, [webService("web", await backend("x"))])));
    await until(() => withVips.module.egressView().services.length === 1);
    expect(withVips.module.egressView()).toEqual({
      services: [
        {
          namespace: "default",
          name: "web",
          vip: "10.96.0.20",
          ports: [{ port: 80, protocol: "tcp" }],
        },
      ],
      exemptions: [
        { ip: "127.0.0.1", port: 10_053, protocol: "udp" },
        { ip: "10.96.0.10", port: 53, protocol: "udp" },
        { ip: "127.0.0.1", port: 10_053, protocol: "tcp" },
        { ip: "10.96.0.10", port: 53, protocol: "tcp" },
      ],
    });
    // Without VIPs a service is reached through 127.0.0.1 and the proxy: no VIP to name.
    const noVips = newModule(await tempDir(), { vips: undefined });
    await noVips.module.start(noVips.context);
    noVips.module.receive(message(snapshot(1, [webService("web", await backend("y"))])));
    await until(() => noVips.module.egressView().services.length === 1);
    expect(noVips.module.egressView().services[0]?.vip).toBe("");
    expect(noVips.module.egressView().exemptions.map((e) => e.ip)).toEqual([
      "127.0.0.1",
      "127.0.0.1",
    ]);
  });
});

/**
 * A Cloudless cluster with service networking on a network lab (issue 14): a coordinator
 * on one host, an agent on every host with `--service-vips on` and a mesh port, hosts
 * behind NAT where asked; workloads that form services; clients that resolve service
 * names through the agent's DNS and call the virtual IP from inside a host; and the
 * residue check after the agents stop. Used by test/chaos/serviceNetworking.test.ts and
 * bench/network.ts. Everything belongs to the lab and goes with lab.dispose().
 *
 * Written against the contract of issue 14 (proto/cloudless/v1/service.proto and the
 * CLI's `service list|get -o json`, `network peers -o json`); the names of flags and JSON
 * fields the product uses are all in this file, so a seam is fixed in one place.
 */
import { rmSync, writeFileSync } from "node:fs";
import { chmod, readFile } from "node:fs/promises";
import * as path from "node:path";
import { workloadDoc } from "./behaviour.js";
import { TestCluster } from "./cluster.js";
import {
  type HostDefinition,
  type LabHost,
  type LabProcess,
  NetLab,
  waitForOutput,
} from "./netlab.js";
import { waitFor } from "./processes.js";
import { writeSpec } from "./workloads.js";

export const coordinatorPort = 7443;
/** The agents' mesh listener (--mesh-port). */
export const meshPort = 7800;
/** Default service range 10.43.0.0/16: the DNS VIP is its base + 10, on port 53. */
export const dnsVip = "10.43.0.10";
export const clusterDomain = "cluster.local";

export interface ServiceLabHost extends HostDefinition {
  /** Node labels (`--label k=v`), for pinning replicas with placement.nodeSelector. */
  labels?: Record<string, string>;
  /** Started with `--relay`: relays for peers behind NAT. */
  relay?: boolean;
  /** Runs no agent (e.g. only the coordinator, or a bare client host). */
  noAgent?: boolean;
}

export interface LabCoordinatorProcess {
  host: LabHost;
  dataDir: string;
  args: string[];
  process: LabProcess;
}

export interface ServiceLab {
  lab: NetLab;
  cluster: TestCluster;
  coordinator: LabCoordinatorProcess;
  agents: Map<string, LabProcess>;
  agentDirs: Map<string, string>;
  agentArgs: Map<string, string[]>;
  specDir: string;
  /** A scratch dir the tests and replicas share (readiness switches). */
  scratchDir: string;
}

/**
 * An HTTP replica: answers `<NODE_NAME> <request body>`; `/ready` is its readiness
 * endpoint and fails (503) while the file $READY_FILE exists.
 */
export const httpReplicaScript = `
const http = require("node:http"); const fs = require("node:fs");
const node = process.env.NODE_NAME || "?"; const readyFile = process.env.READY_FILE || "";
http.createServer((q, s) => {
  if (q.url === "/ready") {
    const ok = !(readyFile && fs.existsSync(readyFile));
    s.statusCode = ok ? 200 : 503; return s.end(ok ? "ready" : "not ready");
  }
  let body = ""; q.on("data", (c) => { if (body.length < 65536) body += c; });
  q.on("end", () => s.end(node + " " + body));
}).listen(Number(process.env.PORT));
`;

/** A TCP echo replica (for latency and connection-rate measurements). */
export const echoReplicaScript = `
require("node:net").createServer((s) => { s.on("error", () => {}); s.pipe(s); })
  .listen(Number(process.env.PORT));
`;

export async function startCoordinator(c: LabCoordinatorProcess): Promise<void> {
  c.process = c.host.cloudless(c.args);
  await waitFor(
    "the coordinator to listen on its lab host",
    () => {
      if (!c.process.running) throw new Error(`coordinator exited: ${c.process.stderr}`);
      return c.process.stderr.includes("listening on") ? true : undefined;
    },
    30_000,
    50,
  );
}

function agentArgs(
  url: string,
  host: LabHost,
  definition: ServiceLabHost,
  dataDir: string,
): string[] {
  return [
    "agent",
    "--join",
    url,
    "--name",
    host.name,
    "--data-dir",
    dataDir,
    "--zone",
    host.zone,
    "--region",
    "eu",
    "--egress-mbps",
    "100",
    "--driver",
    "process",
    "--log-level",
    "info",
    "--service-vips",
    "on",
    "--mesh-port",
    String(meshPort),
    // A host behind NAT cannot be dialled at its private address: it advertises none and
    // the coordinator's observation (its router's address) decides.
    ...(host.nat ? [] : ["--advertise-address", host.ip]),
    ...(definition.relay ? ["--relay"] : []),
    ...Object.entries(definition.labels ?? {}).flatMap(([k, v]) => ["--label", `${k}=${v}`]),
  ];
}

/**
 * Creates the lab, starts the coordinator on `coordinatorHost` and an agent on every host
 * (but those with `noAgent`), and waits until every agent is Ready. A lab that fails
 * half-way is disposed before the error is thrown.
 */
export async function startServiceLab(
  hosts: ServiceLabHost[],
  coordinatorHost: string,
): Promise<ServiceLab> {
  const lab = await NetLab.create(hosts);
  try {
    const host = lab.host(coordinatorHost);
    const dataDir = await lab.resources.tempDir("cloudless-coord-");
    const coordinator: LabCoordinatorProcess = {
      host,
      dataDir,
      args: [
        "coordinator",
        "--data-dir",
        dataDir,
        "--host",
        host.ip,
        "--port",
        String(coordinatorPort),
        "--log-level",
        "info",
      ],
      process: undefined as unknown as LabProcess,
    };
    await startCoordinator(coordinator);
    const url = `https://${host.ip}:${coordinatorPort}`;
    const cluster = new TestCluster(lab.resources, dataDir);
    cluster.coordinator = coordinator.process;
    cluster.url = url;
    cluster.port = coordinatorPort;
    const sl: ServiceLab = {
      lab,
      cluster,
      coordinator,
      agents: new Map(),
      agentDirs: new Map(),
      agentArgs: new Map(),
      specDir: await lab.resources.tempDir("cloudless-specs-"),
      scratchDir: await sandboxVisibleDir(lab),
    };
    for (const definition of hosts.filter((h) => !h.noAgent)) {
      const agentHost = lab.host(definition.name);
      const agentDir = await lab.resources.tempDir(`cloudless-agent-${definition.name}-`);
      const args = agentArgs(url, agentHost, definition, agentDir);
      sl.agentDirs.set(definition.name, agentDir);
      sl.agentArgs.set(definition.name, args);
      const agent = agentHost.cloudless(args, { CLOUDLESS_TOKEN: await cluster.createToken() });
      sl.agents.set(definition.name, agent);
      cluster.agents.set(definition.name, agent);
    }
    for (const definition of hosts.filter((h) => !h.noAgent)) {
      const agent = sl.agents.get(definition.name) as LabProcess;
      // An agent that exits (e.g. a flag it does not know) fails the lab now, with its
      // words, instead of at the end of the wait.
      let ready = false;
      await Promise.race([
        cluster.waitForStatus(definition.name, "Ready", 90_000).then(() => {
          ready = true;
        }),
        // Never rejects once the agent was Ready: a later exit is the tests' business.
        agent.exited().then((code) => {
          if (ready) return;
          throw new Error(
            `agent ${definition.name} exited (${code}): ${agent.stderr.trim().slice(-1_000)}`,
          );
        }),
      ]);
    }
    return sl;
  } catch (error) {
    await lab.dispose().catch(() => undefined);
    throw error;
  }
}

/** Restarts an agent with the arguments (and data dir) it was first started with. */
export function restartAgent(sl: ServiceLab, name: string): LabProcess {
  const agent = sl.lab.host(name).cloudless(sl.agentArgs.get(name) as string[]);
  sl.agents.set(name, agent);
  sl.cluster.agents.set(name, agent);
  return agent;
}

// ---------------------------------------------------------------------------------------------
// Workloads that form services

export interface ServiceWorkload {
  namespace?: string;
  name: string;
  /** The service it joins (`service.name`); default: its own name. */
  service?: string;
  /** `service.weight`: its endpoints' share relative to other workloads of the service. */
  weight?: number;
  replicas?: number;
  /** Node labels its replicas must match (placement.nodeSelector). */
  nodeSelector?: Record<string, string>;
  command: string[];
  ports: { name: string; containerPort: number }[];
  env?: Record<string, string>;
  /**
   * "http" (GET `readinessPath` on the first port, the default), "tcp" (a connect), or
   * "none": ready once running (an iperf3 server, which would take a probe for a test).
   */
  readiness?: "http" | "tcp" | "none";
  readinessPath?: string;
  /**
   * CPU reserved, and with it the cgroup's CPU quota (default 100 millicores): a replica
   * measured for throughput needs more, or the quota is what gets measured.
   */
  cpuMillicores?: number;
}

export async function applyServiceWorkload(sl: ServiceLab, w: ServiceWorkload): Promise<void> {
  const namespace = w.namespace ?? "default";
  const firstPort = w.ports[0]?.name as string;
  const file = await writeSpec(
    sl.specDir,
    `${namespace}-${w.name}`,
    workloadDoc(w.name, namespace, {
      command: w.command,
      ports: w.ports,
      env: w.env ?? {},
      resources: { cpuMillicores: w.cpuMillicores ?? 100, memoryMiB: 96 },
      replicas: w.replicas ?? 1,
      placement: {
        ...(w.nodeSelector ? { nodeSelector: w.nodeSelector } : {}),
        // The tests pin replicas; the rebalancer (ADR 0035) must not move them.
        rebalance: false,
      },
      service: { name: w.service ?? w.name, weight: w.weight ?? 1 },
      ...(w.readiness === "none"
        ? {}
        : {
            readinessProbe: {
              ...(w.readiness === "tcp"
                ? { tcp: { port: firstPort } }
                : { http: { path: w.readinessPath ?? "/", port: firstPort } }),
              periodSeconds: 1,
            },
          }),
      terminationGracePeriodSeconds: 2,
    }),
  );
  const applied = await sl.cluster.cli(["workload", "apply", "-f", file]);
  if (applied.code !== 0) throw new Error(`workload apply ${w.name}: ${applied.stderr}`);
}

/** One HTTP replica pinned to `node` (label `host=<node>`), answering its node name. */
export function httpWorkload(
  sl: ServiceLab,
  name: string,
  node: string,
  options: { service?: string; weight?: number; port?: number } = {},
): ServiceWorkload {
  return {
    name,
    ...(options.service ? { service: options.service } : {}),
    ...(options.weight ? { weight: options.weight } : {}),
    nodeSelector: { host: node },
    command: [process.execPath, "-e", httpReplicaScript],
    // Above 1024: a sandboxed process replica has no capability to bind a privileged port.
    ports: [{ name: "http", containerPort: options.port ?? 8080 }],
    env: { NODE_NAME: node, READY_FILE: readinessSwitch(sl, name) },
    readinessPath: "/ready",
  };
}

/**
 * A scratch dir whose files sandboxed replicas can look up by name (ADR 0050): outside /tmp
 * (a replica has its own), mode 0711 (passable, not listable: a replica runs as its
 * workload's own unprivileged user).
 */
async function sandboxVisibleDir(lab: NetLab): Promise<string> {
  const dir = await lab.resources.tempDir("cloudless-scratch-", "/var/tmp");
  await chmod(dir, 0o711);
  return dir;
}

/** The file whose existence makes the workload's replicas fail readiness. */
export function readinessSwitch(sl: ServiceLab, workload: string): string {
  return path.join(sl.scratchDir, `not-ready-${workload}`);
}

/** Flips the workload's readiness switch (synchronously: the caller's timestamp is the flip's). */
export function setReady(sl: ServiceLab, workload: string, ready: boolean): void {
  const file = readinessSwitch(sl, workload);
  if (ready) rmSync(file, { force: true });
  else writeFileSync(file, "not ready\n");
}

// ---------------------------------------------------------------------------------------------
// The product's views

/**
 * The CLI prints services and peers as protobuf JSON (`toJson`): camelCase names, fields
 * at their default value left out (`ready: false`, `weight: 0`, an empty `via`), 64-bit
 * counters as strings. These types say so; read them through the helpers below.
 */
export interface EndpointJson {
  replicaId: string;
  node: string;
  zone?: string;
  ready?: boolean;
  weight?: number;
  hostPorts?: Record<string, number>;
}

export interface ServiceJson {
  namespace: string;
  name: string;
  dnsName: string;
  vip: string;
  ports: { name: string; port: number }[];
  endpoints?: EndpointJson[];
}

export interface PeerJson {
  node: string;
  path?: "direct" | "relayed" | "unreachable";
  via?: string;
  address?: string;
  rttMs?: number;
  bytesSent?: string | number;
  bytesReceived?: string | number;
}

export function endpointsOf(service: ServiceJson): Required<EndpointJson>[] {
  return (service.endpoints ?? []).map((e) => ({
    replicaId: e.replicaId,
    node: e.node,
    zone: e.zone ?? "",
    ready: e.ready === true,
    weight: e.weight ?? 0,
    hostPorts: e.hostPorts ?? {},
  }));
}

export function endpointOn(service: ServiceJson, node: string): Required<EndpointJson> | undefined {
  return endpointsOf(service).find((e) => e.node === node);
}

/** `cloudless service list -A -o json` (an array; an object with `services` is read too). */
export async function listServices(sl: ServiceLab): Promise<ServiceJson[]> {
  const got = await sl.cluster.cliJson<ServiceJson[] | { services: ServiceJson[] }>([
    "service",
    "list",
    "-A",
  ]);
  return Array.isArray(got) ? got : got.services;
}

export async function getService(
  sl: ServiceLab,
  name: string,
  namespace = "default",
): Promise<ServiceJson> {
  const got = await sl.cluster.cliJson<ServiceJson | { service: ServiceJson }>([
    "service",
    "get",
    name,
    "-n",
    namespace,
  ]);
  const service = "service" in got ? got.service : got;
  if (!service?.name) throw new Error(`service get ${namespace}/${name}: no service in the answer`);
  return service;
}

/** Waits until the service has `count` ready endpoints (on `nodes`, when given). */
export function waitForEndpoints(
  sl: ServiceLab,
  name: string,
  count: number,
  nodes?: string[],
  timeoutMs = 120_000,
): Promise<ServiceJson> {
  return waitFor(
    `service ${name} to have ${count} ready endpoints${nodes ? ` on ${nodes.join(",")}` : ""}`,
    async () => {
      const service = await getService(sl, name).catch(() => undefined);
      const ready = service ? endpointsOf(service).filter((e) => e.ready) : [];
      if (ready.length !== count) return undefined;
      if (nodes && !ready.every((e) => nodes.includes(e.node))) return undefined;
      return service;
    },
    timeoutMs,
    250,
  );
}

/** `cloudless network peers --node NODE -o json`: the node's view of each of its peers. */
export async function networkPeers(sl: ServiceLab, node: string): Promise<PeerJson[]> {
  type NodePeers = { node: string; peers?: PeerJson[] };
  const got = await sl.cluster.cliJson<NodePeers[] | { nodes: NodePeers[] }>([
    "network",
    "peers",
    "--node",
    node,
  ]);
  const nodes = Array.isArray(got) ? got : got.nodes;
  return nodes.find((n) => n.node === node)?.peers ?? [];
}

export function dnsName(service: string, namespace = "default"): string {
  return `${service}.${namespace}.svc.${clusterDomain}`;
}

/** `dig @<DNS VIP> NAME TYPE +short` inside the host: the answers, one per line. */
export async function dig(host: LabHost, name: string, type = "A"): Promise<string[]> {
  const result = await host.exec("dig", [
    `@${dnsVip}`,
    name,
    type,
    "+short",
    "+time=2",
    "+tries=2",
  ]);
  if (result.code !== 0) throw new Error(`dig ${name} ${type} on ${host.name}: ${result.stdout}`);
  return result.stdout
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
}

// ---------------------------------------------------------------------------------------------
// Clients inside a host

export interface ClientConfig {
  /** A service DNS name (resolved through the DNS VIP before every request) or an IP. */
  target: string;
  port: number;
  /** Request bodies (POST); none: GET. */
  body?: string;
  timeoutMs?: number;
}

/**
 * A client process in a host. "batch": `count` requests, `concurrency` at a time, then one
 * JSON summary line. "loop": `ratePerSec` requests a second until SIGTERM, one JSON line
 * per request. Every request opens a new connection (agent: false), so each one is a
 * load-balancing decision of the proxy, as an L4 balancer decides per connection.
 */
const clientScript = `
const http = require("node:http"); const net = require("node:net");
const { Resolver } = require("node:dns").promises;
const cfg = JSON.parse(process.argv[1]);
const resolver = new Resolver({ timeout: 2000, tries: 2 });
resolver.setServers([cfg.dns]);
async function target() {
  if (net.isIP(cfg.target)) return cfg.target;
  const addrs = await resolver.resolve4(cfg.target);
  if (!addrs.length) throw new Error("no address for " + cfg.target);
  return addrs[0];
}
function request(ip) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: ip, port: cfg.port, path: "/", agent: false,
      method: cfg.body ? "POST" : "GET", timeout: cfg.timeoutMs || 5000 }, (res) => {
      let body = ""; res.on("data", (c) => { body += c; });
      res.on("end", () => res.statusCode === 200 ? resolve(body) : reject(new Error("HTTP " + res.statusCode)));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end(cfg.body || undefined);
  });
}
async function one() {
  const s = Date.now();
  try { const body = await request(await target());
    return { s, e: Date.now(), ok: true, node: body.split(" ")[0] };
  } catch (err) { return { s, e: Date.now(), ok: false, err: err.code || err.message }; }
}
if (cfg.mode === "batch") {
  (async () => {
    const byNode = {}; const errors = {}; let ok = 0, failed = 0, next = 0;
    const worker = async () => { while (next < cfg.count) { next++; const r = await one();
      if (r.ok) { ok++; byNode[r.node] = (byNode[r.node] || 0) + 1; }
      else { failed++; errors[r.err] = (errors[r.err] || 0) + 1; } } };
    await Promise.all(Array.from({ length: cfg.concurrency || 1 }, worker));
    console.log(JSON.stringify({ ok, failed, byNode, errors }));
  })();
} else {
  let stopped = false; const inflight = new Set();
  process.on("SIGTERM", async () => { stopped = true; await Promise.all(inflight); process.exit(0); });
  console.log(JSON.stringify({ started: Date.now() }));
  const intervalMs = 1000 / cfg.ratePerSec; let due = Date.now();
  const tick = () => { if (stopped) return;
    const p = one().then((r) => { console.log(JSON.stringify(r)); inflight.delete(p); });
    inflight.add(p); due += intervalMs; setTimeout(tick, Math.max(0, due - Date.now())); };
  tick();
}
`;

export interface BatchResult {
  ok: number;
  failed: number;
  byNode: Record<string, number>;
  errors: Record<string, number>;
}

/** `count` requests from inside `host`, then their tally. */
export async function requestBatch(
  host: LabHost,
  config: ClientConfig & { count: number; concurrency?: number },
): Promise<BatchResult> {
  const timeoutMs = 30_000 + config.count * 200;
  const result = await host.exec(
    process.execPath,
    ["-e", clientScript, JSON.stringify({ ...config, dns: dnsVip, mode: "batch" })],
    timeoutMs,
  );
  const line = result.stdout.trim().split("\n").at(-1) ?? "";
  try {
    return JSON.parse(line) as BatchResult;
  } catch {
    throw new Error(`client on ${host.name} failed: ${result.stdout}${result.stderr}`);
  }
}

export interface RequestRecord {
  /** Start and end (wall clock, ms). */
  s: number;
  e: number;
  ok: boolean;
  node?: string;
  err?: string;
}

/** A client loop in a host at a fixed rate; read its records any time, stop it at the end. */
export class RequestLoop {
  constructor(readonly process: LabProcess) {}

  static async start(
    host: LabHost,
    config: ClientConfig & { ratePerSec: number },
  ): Promise<RequestLoop> {
    const child = host.spawn(
      process.execPath,
      ["-e", clientScript, JSON.stringify({ ...config, dns: dnsVip, mode: "loop" })],
      { label: `${host.name}-client-loop` },
    );
    await waitForOutput(child, "started", `the client loop on ${host.name}`);
    return new RequestLoop(child);
  }

  records(): RequestRecord[] {
    return this.process.stdout
      .split("\n")
      .filter((line) => line.startsWith('{"s"'))
      .map((line) => JSON.parse(line) as RequestRecord);
  }

  /** Waits until `count` more requests have finished than now. */
  async waitForMore(count: number, timeoutMs = 30_000): Promise<void> {
    const target = this.records().length + count;
    await waitFor(`${count} more requests`, () => this.records().length >= target, timeoutMs, 50);
  }

  /** Waits until `count` requests that started after `afterMs` have finished. */
  async waitForStartedAfter(afterMs: number, count: number, timeoutMs = 30_000): Promise<void> {
    await waitFor(
      `${count} requests started after ${new Date(afterMs).toISOString()}`,
      () => this.records().filter((r) => r.s > afterMs).length >= count,
      timeoutMs,
      50,
    );
  }

  /** Stops it (SIGTERM: requests in flight finish) and returns every record. */
  async stop(): Promise<RequestRecord[]> {
    await this.process.stop(10_000);
    return this.records();
  }
}

export function shares(records: { node?: string }[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of records) if (r.node) counts[r.node] = (counts[r.node] ?? 0) + 1;
  return counts;
}

// ---------------------------------------------------------------------------------------------
// What an agent leaves in its host

/**
 * After the host's agent has stopped: its nftables tables, addresses and links beyond the
 * lab's own (eth0, lo), and listening sockets of anything but a replica. Empty when the
 * agent cleaned up.
 */
export async function agentResidue(host: LabHost): Promise<string[]> {
  const residue: string[] = [];
  const tables = await host.exec("nft", ["list", "tables"]);
  for (const line of tables.stdout.split("\n").filter((l) => l.startsWith("table "))) {
    residue.push(`${host.name}: nftables ${line.trim()}`);
  }
  const links = JSON.parse((await host.exec("ip", ["-j", "addr", "show"])).stdout || "[]") as {
    ifname: string;
    addr_info?: { local: string; family: string }[];
  }[];
  for (const link of links) {
    if (link.ifname !== "lo" && link.ifname !== "eth0") {
      residue.push(`${host.name}: link ${link.ifname}`);
    }
    for (const info of link.addr_info ?? []) {
      if (info.family !== "inet") continue;
      const own = (link.ifname === "lo" && info.local === "127.0.0.1") || info.local === host.ip;
      if (!own) residue.push(`${host.name}: address ${info.local} on ${link.ifname}`);
    }
  }
  const sockets = await host.exec("ss", ["-H", "-l", "-n", "-t", "-u", "-p"]);
  for (const line of sockets.stdout.split("\n").filter(Boolean)) {
    const pid = /pid=(\d+)/.exec(line)?.[1];
    const cmdline = pid ? await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "") : "";
    // Replicas (process driver) outlive their agent by design; the lab kills them.
    if (cmdline.includes("process.env.PORT")) continue;
    residue.push(`${host.name}: listener ${line.replace(/\s+/g, " ").trim()}`);
  }
  return residue;
}

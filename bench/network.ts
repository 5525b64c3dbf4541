/**
 * The service-networking benchmark (issue 14), on the network-namespace lab
 * (test/helpers/netlab.ts): two hosts on one bridge link, two more behind their own NAT.
 *
 *   (a) plain TCP throughput, iperf3 from host a to host b;
 *   (b) wireguard-go (Debian's userspace WireGuard, the peer to beat) over the same link;
 *   (c) the mesh: an iperf3 server as a replica on b, the iperf3 client on a dialling the
 *       service's virtual IP through a's proxy and the agents' mTLS mesh;
 *   (d) relayed mesh: client on d (behind NAT) to a service on e (behind another NAT);
 *   latency at a fixed 1,000 req/s on the direct path: P50/P99 of a small TCP echo straight
 *       to the backend and through the local proxy + mesh (hdr-histogram-js), and the
 *       difference (what the proxy and the mesh add);
 *   new connections per second through the proxy (and straight to the backend);
 *   endpoint change: 100 hollow agents (the real agent with the fake runtime, in this
 *       process) on the coordinator; a real replica's readiness flips, and the time until
 *       every hollow node's heartbeat stream carried a network snapshot with the new
 *       readiness, from the moment the coordinator's API shows it.
 *
 * Targets (printed as met/missed): mesh ≥ 5× wireguard-go and ≥ 25 % of plain TCP;
 * added P99 ≤ 1 ms at 1,000 req/s; endpoint change P99 ≤ 1 s. Both ends of every link
 * share this machine's cores, so throughput is a ratio measured in the same run.
 *
 * Every part skips with a printed reason when its prerequisite is missing (root, tools,
 * the product's service networking); the lab removes everything it started.
 */
import { chmod, writeFile } from "node:fs/promises";
import * as path from "node:path";
import type { Transport } from "@connectrpc/connect";
import { createClient } from "@connectrpc/connect";
import * as hdr from "hdr-histogram-js";
import { type Agent, startAgent } from "../src/agent/agent.js";
import { FakeDriver } from "../src/agent/drivers/fakeDriver.js";
import type { HeartbeatResponse } from "../src/api/gen/cloudless/v1/node_pb.js";
import { ServiceService } from "../src/api/gen/cloudless/v1/service_pb.js";
import { loadClientConfig } from "../src/client/config.js";
import { createCoordinatorTransport } from "../src/client/transport.js";
import { systemClock } from "../src/lib/clock.js";
import { silentLogger } from "../src/observe/logger.js";
import { createTokens } from "../src/sim/hollowNodes.js";
import { type LabHost, NetLab, netlabUnavailableReason, run } from "../test/helpers/netlab.js";
import { binPath, waitFor } from "../test/helpers/processes.js";
import {
  applyServiceWorkload,
  echoReplicaScript,
  endpointOn,
  httpWorkload,
  networkPeers,
  type ServiceLab,
  type ServiceLabHost,
  setReady,
  startServiceLab,
  waitForEndpoints,
} from "../test/helpers/serviceLab.js";

// biome-ignore lint/suspicious/noExplicitAny: results are a loose JSON document
type Json = any;

export interface NetworkBenchOptions {
  quick: boolean;
  signal: AbortSignal;
  log: (line: string) => void;
}

const iperfPort = 5201;
const wireguardPort = 51820;
const echoPort = 7000;
const latencyRatePerSec = 1000;
const hollowCount = 100;

/** Targets of issue 14. */
export const networkTargets = {
  meshOverWireguard: 5,
  meshShareOfPlain: 0.25,
  addedP99Ms: 1,
  endpointChangeP99Ms: 1000,
};

function skipped(reason: string): { skipped: string } {
  return { skipped: reason };
}

const round = (n: number, digits = 2) => Math.round(n * 10 ** digits) / 10 ** digits;

/** What is missing for the lab itself (root, netns) and for parts (a) and (b). */
async function toolsMissing(tools: string[]): Promise<string | undefined> {
  for (const tool of tools) {
    const found = await run("sh", ["-c", `command -v ${tool}`]);
    if (found.code !== 0) return `${tool} is not installed (scripts/install-test-deps.sh)`;
  }
  return undefined;
}

/** Why the product cannot run the mesh parts: the built agent lacks the issue-14 flags. */
async function productMissing(): Promise<string | undefined> {
  const help = await run(process.execPath, [binPath, "agent", "--help"]);
  for (const flag of ["--service-vips", "--mesh-port", "--advertise-address", "--relay"]) {
    if (!help.stdout.includes(flag)) {
      return `the built agent has no ${flag} (service networking is not in dist/; npm run build after the merge)`;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Throughput

/**
 * iperf3 from `client` to `target:port`: received Gbit/s. With `serverHost`, a one-off
 * server (`-1`) bound to `target` runs there; without, the target is already served.
 */
async function iperf(
  client: LabHost,
  serverHost: LabHost | undefined,
  target: string,
  port: number,
  seconds: number,
): Promise<number> {
  // -1: the server exits after one test, so nothing is left listening.
  const server = serverHost?.spawn(
    "iperf3",
    ["-s", "-1", "--forceflush", "-B", target, "-p", String(port)],
    {
      label: `${serverHost.name}-iperf3-server`,
    },
  );
  try {
    if (server) {
      await waitFor(
        "the iperf3 server to listen",
        () => {
          if (!server.running) throw new Error(`iperf3 server exited: ${server.stderr}`);
          return server.stdout.includes("Server listening") || undefined;
        },
        10_000,
        50,
      );
    }
    const result = await client.exec(
      "iperf3",
      ["-c", target, "-p", String(port), "-t", String(seconds), "-J"],
      (seconds + 30) * 1000,
    );
    const json = JSON.parse(result.stdout || "{}") as Json;
    if (json.error) throw new Error(`iperf3 ${client.name} → ${target}:${port}: ${json.error}`);
    const bps = json.end?.sum_received?.bits_per_second;
    if (typeof bps !== "number") {
      throw new Error(`iperf3 ${client.name} → ${target}:${port}: no result (${result.stderr})`);
    }
    return bps / 1e9;
  } finally {
    await server?.stop(2_000);
  }
}

/**
 * (b) wireguard-go in both hosts (foreground, so the lab tracks it; interface `wg<lab id><host>`), keys and the peer set
 * with `wg`, tunnel addresses 10.250.0.1/2; iperf3 through the tunnel; everything removed.
 */
async function wireguardThroughput(
  lab: NetLab,
  a: LabHost,
  b: LabHost,
  seconds: number,
): Promise<Json> {
  const dir = await lab.resources.tempDir("cloudless-wg-");
  const ends = [
    { host: a, tunnelIp: "10.250.0.1", peer: b },
    { host: b, tunnelIp: "10.250.0.2", peer: a },
  ];
  const keys = new Map<string, { privateFile: string; publicKey: string }>();
  for (const { host } of ends) {
    const privateKey = (await run("wg", ["genkey"])).stdout.trim();
    const publicKey = (await run("wg", ["pubkey"], { input: `${privateKey}\n` })).stdout.trim();
    const privateFile = path.join(dir, `${host.name}.key`);
    await writeFile(privateFile, `${privateKey}\n`, { mode: 0o600 });
    await chmod(privateFile, 0o600);
    keys.set(host.name, { privateFile, publicKey });
  }
  // wireguard-go's control socket is /var/run/wireguard/<interface>.sock, on the file
  // system every namespace shares: each end needs its own interface name.
  const iface = (host: LabHost) => `wg${lab.id}${host.name}`.slice(0, 15);
  const daemons = ends.map(({ host }) =>
    host.spawn("wireguard-go", ["-f", iface(host)], { label: `${host.name}-wireguard-go` }),
  );
  try {
    for (const { host } of ends) {
      await waitFor(
        `${iface(host)} in ${host.name}`,
        async () => (await host.exec("ip", ["link", "show", iface(host)])).code === 0,
        10_000,
        50,
      );
    }
    for (const { host, tunnelIp, peer } of ends) {
      const own = keys.get(host.name) as { privateFile: string };
      const other = keys.get(peer.name) as { publicKey: string };
      const peerTunnelIp = ends.find((e) => e.host === peer)?.tunnelIp as string;
      const steps: string[][] = [
        [
          "wg",
          "set",
          iface(host),
          "private-key",
          own.privateFile,
          "listen-port",
          String(wireguardPort),
          "peer",
          other.publicKey,
          "endpoint",
          `${peer.ip}:${wireguardPort}`,
          "allowed-ips",
          `${peerTunnelIp}/32`,
        ],
        ["ip", "addr", "add", `${tunnelIp}/24`, "dev", iface(host)],
        ["ip", "link", "set", iface(host), "up"],
      ];
      for (const [command, ...args] of steps) {
        const result = await host.exec(command as string, args);
        if (result.code !== 0) {
          throw new Error(`${command} ${args.join(" ")} in ${host.name}: ${result.stderr}`);
        }
      }
    }
    const gbit = await iperf(a, b, "10.250.0.2", iperfPort, seconds);
    return { gbitPerSec: round(gbit, 3), mtu: 1420 };
  } finally {
    // wireguard-go removes its interface and socket when it exits.
    for (const daemon of daemons) await daemon.stop(3_000);
    for (const { host } of ends) {
      await waitFor(
        `${iface(host)} in ${host.name} to be removed`,
        async () => (await host.exec("ip", ["link", "show", iface(host)])).code !== 0,
        10_000,
        50,
      ).catch(() => host.exec("ip", ["link", "delete", iface(host)]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Latency and connection rate (clients inside a host)

/**
 * A fixed-rate TCP echo client: `rate` requests a second spread over `connections`
 * persistent connections, each one request at a time; a request's time runs from when it
 * was issued (the timer tick that found it due), not from when its connection was free to
 * send it, so a stall of the path is counted, not hidden; the timer's own lateness (≤ ~1 ms
 * on a busy machine) is not, as it is no part of the path. Prints the latencies in
 * microseconds after the warm-up as one JSON array.
 */
const latencyScript = `
const net = require("node:net");
const [host, port, rate, seconds, connections] = process.argv.slice(1).map((v, i) => i === 0 ? v : Number(v));
const payload = Buffer.alloc(32, 120); const warmupMs = 1000;
const socks = []; const out = []; let started;
function open(i) { return new Promise((resolve, reject) => {
  const s = net.connect({ host, port, noDelay: true }, () => resolve(s)); s.on("error", reject);
  s.queue = []; s.busy = null; s.got = 0;
  s.on("data", (d) => { s.got += d.length; if (s.busy && s.got >= payload.length) {
    s.got -= payload.length; const due = s.busy; s.busy = null;
    const now = performance.now(); if (due - started >= warmupMs) out.push(Math.round((now - due) * 1000));
    next(s); } });
}); }
function next(s) { const due = s.queue.shift(); if (due === undefined) return; s.busy = due; s.write(payload); }
(async () => {
  for (let i = 0; i < connections; i++) socks.push(await open(i));
  started = performance.now(); const total = rate * seconds; const interval = 1000 / rate; let i = 0;
  const tick = () => { const now = performance.now();
    while (i < total && started + i * interval <= now) { const s = socks[i % connections];
      s.queue.push(now); if (!s.busy) next(s); i++; }
    if (i < total) setTimeout(tick, 0);
    else { const wait = setInterval(() => { if (socks.every((s) => !s.busy && s.queue.length === 0)) {
      clearInterval(wait); console.log(JSON.stringify(out)); process.exit(0); } }, 10); } };
  tick();
})().catch((e) => { console.log(JSON.stringify({ error: e.code || e.message })); process.exit(0); });
`;

/** New connections per second: connect, one byte echoed, close; `concurrency` at a time. */
const connectRateScript = `
const net = require("node:net");
const [host, port, seconds, concurrency] = process.argv.slice(1).map((v, i) => i === 0 ? v : Number(v));
let done = 0, failed = 0; const end = Date.now() + seconds * 1000;
function once() { return new Promise((resolve) => {
  const s = net.connect({ host, port }, () => s.write("x"));
  s.once("data", () => { done++; s.destroy(); resolve(); });
  s.once("error", () => { failed++; s.destroy(); resolve(); });
  s.setTimeout(5000, () => { failed++; s.destroy(); resolve(); });
}); }
async function worker() { while (Date.now() < end) await once(); }
Promise.all(Array.from({ length: concurrency }, worker)).then(() =>
  console.log(JSON.stringify({ perSec: Math.round(done / seconds), failed })));
`;

function histogramOf(micros: number[]): { p50Ms: number; p99Ms: number; maxMs: number } {
  const h = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000 });
  for (const us of micros) h.recordValue(Math.max(1, us));
  const ms = (us: number) => round(us / 1000, 3);
  const result = {
    p50Ms: ms(h.getValueAtPercentile(50)),
    p99Ms: ms(h.getValueAtPercentile(99)),
    maxMs: ms(h.maxValue),
  };
  h.destroy();
  return result;
}

export async function latency(
  client: LabHost,
  ip: string,
  port: number,
  seconds: number,
): Promise<{ p50Ms: number; p99Ms: number; maxMs: number; samples: number }> {
  const result = await client.exec(
    process.execPath,
    ["-e", latencyScript, ip, String(port), String(latencyRatePerSec), String(seconds), "8"],
    (seconds + 30) * 1000,
  );
  const parsed = JSON.parse(result.stdout.trim() || "{}") as number[] | { error: string };
  if (!Array.isArray(parsed)) {
    throw new Error(`latency client to ${ip}:${port}: ${parsed.error ?? result.stderr}`);
  }
  return { ...histogramOf(parsed), samples: parsed.length };
}

export async function connectRate(
  client: LabHost,
  ip: string,
  port: number,
  seconds: number,
): Promise<{ perSec: number; failed: number }> {
  const result = await client.exec(
    process.execPath,
    ["-e", connectRateScript, ip, String(port), String(seconds), "16"],
    (seconds + 30) * 1000,
  );
  return JSON.parse(result.stdout.trim() || '{"perSec":0,"failed":-1}') as {
    perSec: number;
    failed: number;
  };
}

// ---------------------------------------------------------------------------------------------
// Endpoint change to hollow nodes

interface Sighting {
  ready: boolean;
  atMs: number;
}

/** Taps every Heartbeat response a hollow node receives; `onResponse` sees each one. */
function tapHeartbeats(inner: Transport, onResponse: (m: HeartbeatResponse) => void): Transport {
  return {
    unary: (...args: Parameters<Transport["unary"]>) => inner.unary(...args),
    async stream(...args: Parameters<Transport["stream"]>) {
      const response = await inner.stream(...args);
      if (args[0].name !== "Heartbeat") return response;
      const incoming = response.message;
      const tapped = (async function* () {
        for await (const message of incoming) {
          onResponse(message as unknown as HeartbeatResponse);
          yield message;
        }
      })();
      return { ...response, message: tapped };
    },
  } as Transport;
}

async function endpointChange(
  sl: ServiceLab,
  flips: number,
  options: NetworkBenchOptions,
): Promise<Json> {
  await applyServiceWorkload(sl, httpWorkload(sl, "flip", "b", { port: 8081 }));
  const service = await waitForEndpoints(sl, "flip", 1, ["b"]);
  const replicaId = endpointOn(service, "b")?.replicaId as string;

  // Per hollow node, every change of the flip endpoint's readiness it was told of.
  const sightings = new Map<string, Sighting[]>();
  const agents: Agent[] = [];
  const tokens = await createTokens(sl.cluster.configPath, hollowCount);
  const dataRoot = await sl.lab.resources.tempDir("cloudless-hollow-");
  try {
    for (let i = 0; i < hollowCount; i++) {
      const name = `hollow-${String(i).padStart(3, "0")}`;
      const seen: Sighting[] = [];
      sightings.set(name, seen);
      const onResponse = (m: HeartbeatResponse) => {
        const endpoint = m.network?.services
          .find((s) => s.name === "flip" && s.namespace === "default")
          ?.endpoints.find((e) => e.replicaId === replicaId);
        if (!endpoint) return;
        if (seen.at(-1)?.ready !== endpoint.ready) {
          seen.push({ ready: endpoint.ready, atMs: Date.now() });
        }
      };
      agents.push(
        await startAgent({
          dataDir: path.join(dataRoot, name),
          joinUrls: [sl.cluster.url],
          token: tokens[i] as string,
          name,
          zone: "b",
          region: "eu",
          labels: { "cloudless.dev/hollow": "true" },
          runtimeDrivers: [new FakeDriver("container", systemClock, { recordCalls: false })],
          capacity: {
            cpuMillicores: 4000,
            memoryMiB: 8192,
            storageGiB: 100,
            storageFreeGiB: 100,
            iopsClass: "ssd",
            measuredIops: 5000,
            egressMbps: 1000,
            egressSource: "configured",
            source: "configured",
          },
          usageSampler: { sample: () => ({ cpuMillicoresUsed: 0, memoryMiBUsed: 0 }) },
          wrapTransport: (transport) => tapHeartbeats(transport, onResponse),
          processMetrics: false,
          logger: silentLogger,
        }),
      );
    }
    options.log(`network: ${hollowCount} hollow nodes started`);
    const everyNodeSees = (ready: boolean, sinceMs: number) =>
      [...sightings.values()].every((seen) =>
        seen.some((s) => s.ready === ready && s.atMs >= sinceMs),
      );
    try {
      await waitFor("every hollow node to see the flip endpoint ready", () =>
        everyNodeSees(true, 0),
      );
    } catch {
      const withAny = [...sightings.values()].filter((s) => s.length > 0).length;
      return skipped(
        `${hollowCount - withAny} of ${hollowCount} hollow nodes received no network snapshot with the endpoint in 20 s (does the coordinator push HeartbeatResponse.network to agents without a mesh?)`,
      );
    }

    const config = await loadClientConfig(sl.cluster.configPath);
    const services = createClient(
      ServiceService,
      createCoordinatorTransport({
        baseUrl: config.servers[0] as string,
        clusterName: config.clusterName,
        caPem: config.caPem,
        certPem: config.certPem,
        keyPem: config.keyPem,
        timeoutMs: 5_000,
      }),
    );
    const delays: number[] = [];
    const fromFlip: number[] = [];
    let ready = true;
    for (let flip = 0; flip < flips && !options.signal.aborted; flip++) {
      ready = !ready;
      const flippedAtMs = Date.now();
      setReady(sl, "flip", ready);
      // The coordinator's API shows the change: the moment the change exists in the
      // control plane (the probe period before it is the agent's, not the fan-out's).
      const knownAtMs = await waitFor(
        "the coordinator to show the readiness change",
        async () => {
          const got = await services.getService({ namespace: "default", name: "flip" });
          const e = got.service?.endpoints.find((x) => x.replicaId === replicaId);
          return e?.ready === ready ? Date.now() : undefined;
        },
        30_000,
        20,
      );
      await waitFor(
        `every hollow node to see ready=${ready}`,
        () => everyNodeSees(ready, flippedAtMs),
        30_000,
        20,
      );
      for (const seen of sightings.values()) {
        const at = seen.find((s) => s.ready === ready && s.atMs >= flippedAtMs)?.atMs as number;
        // A node told before the 20 ms poll noticed counts as 0, not negative.
        const firstKnown = Math.min(knownAtMs, at);
        delays.push(at - firstKnown);
        fromFlip.push(at - flippedAtMs);
      }
    }
    const h = histogramOf(delays.map((ms) => ms * 1000));
    return {
      hollowNodes: hollowCount,
      flips,
      samples: delays.length,
      p50Ms: h.p50Ms,
      p99Ms: h.p99Ms,
      maxMs: h.maxMs,
      fromFlipP99Ms: histogramOf(fromFlip.map((ms) => ms * 1000)).p99Ms,
      note: "from the coordinator API showing the change (polled every 20 ms) to each hollow node's heartbeat stream carrying it; fromFlip adds the readiness probe period",
    };
  } finally {
    setReady(sl, "flip", true);
    await Promise.all(agents.map((agent) => agent.stop({ leave: false }).catch(() => undefined)));
  }
}

// ---------------------------------------------------------------------------------------------
// The benchmark

const labHosts: ServiceLabHost[] = [
  { name: "a", zone: "a", labels: { host: "a" } },
  { name: "b", zone: "b", labels: { host: "b" } },
  { name: "d", zone: "c", behindNat: true, labels: { host: "d" } },
  { name: "e", zone: "c", behindNat: true, labels: { host: "e" } },
];

export async function runNetworkBench(options: NetworkBenchOptions): Promise<Json> {
  const { log, quick } = options;
  const seconds = quick ? 3 : 10;
  const results: Json = { quick, durationS: seconds };
  const unavailable =
    (await netlabUnavailableReason()) ?? (await toolsMissing(["iperf3", "wg", "wireguard-go"]));
  if (unavailable) {
    log(`network: skipped: ${unavailable}`);
    return { ...results, skipped: unavailable };
  }
  const missing = await productMissing();
  let sl: ServiceLab | undefined;
  let lab: NetLab;
  if (missing) {
    log(`network: mesh parts skipped: ${missing}`);
    lab = await NetLab.create(labHosts.slice(0, 2));
  } else {
    sl = await startServiceLab(labHosts, "a");
    lab = sl.lab;
  }
  try {
    const a = lab.host("a");
    const b = lab.host("b");
    const part = async (name: string, work: () => Promise<Json>) => {
      if (options.signal.aborted) {
        results[name] = skipped("the benchmark's time limit was reached");
        return;
      }
      try {
        results[name] = await work();
      } catch (error) {
        results[name] = { error: error instanceof Error ? error.message : String(error) };
      }
      log(`network: ${name}: ${JSON.stringify(results[name])}`);
    };

    await part("plainTcp", async () => ({
      gbitPerSec: round(await iperf(a, b, b.ip, iperfPort, seconds), 3),
    }));
    await part("wireguardGo", () => wireguardThroughput(lab, a, b, seconds));

    if (!sl) {
      for (const name of ["mesh", "relayed", "latency", "connections", "endpointChange"]) {
        results[name] = skipped(missing as string);
      }
    } else {
      const s = sl;
      const deploy = async () => {
        const iperfCommand = ["sh", "-c", 'exec iperf3 -s -p "$PORT"'];
        await applyServiceWorkload(s, {
          name: "iperf-b",
          nodeSelector: { host: "b" },
          command: iperfCommand,
          ports: [{ name: "iperf", containerPort: iperfPort }],
          readiness: "none",
          // A whole core, as the plain-TCP iperf3 server has: else the quota is measured.
          cpuMillicores: 1000,
        });
        await applyServiceWorkload(s, {
          name: "iperf-e",
          nodeSelector: { host: "e" },
          command: iperfCommand,
          ports: [{ name: "iperf", containerPort: iperfPort }],
          readiness: "none",
          // A whole core, as the plain-TCP iperf3 server has: else the quota is measured.
          cpuMillicores: 1000,
        });
        await applyServiceWorkload(s, {
          name: "echo",
          nodeSelector: { host: "b" },
          command: [process.execPath, "-e", echoReplicaScript],
          ports: [{ name: "echo", containerPort: echoPort }],
          readiness: "tcp",
          // Half a core: a 100-millicore quota throttles it in bursts (the P99 measured it).
          cpuMillicores: 500,
        });
        return {
          iperfB: await waitForEndpoints(s, "iperf-b", 1, ["b"]),
          iperfE: await waitForEndpoints(s, "iperf-e", 1, ["e"]),
          echo: await waitForEndpoints(s, "echo", 1, ["b"]),
        };
      };
      let services: Awaited<ReturnType<typeof deploy>> | undefined;
      try {
        services = await deploy();
      } catch (error) {
        // The parts that need these services report why they did not run.
        const message = `setup: ${error instanceof Error ? error.message : String(error)}`;
        for (const name of ["mesh", "relayed", "latency", "connections"]) {
          results[name] = { error: message };
        }
        log(`network: ${message}`);
      }
      if (services) {
        const { iperfB, iperfE, echo } = services;

        await part("mesh", async () => ({
          gbitPerSec: round(await iperf(a, undefined, iperfB.vip, iperfPort, seconds), 3),
        }));
        await part("relayed", async () => {
          const gbit = await iperf(lab.host("d"), undefined, iperfE.vip, iperfPort, seconds);
          const peer = (await networkPeers(s, "d")).find((p) => p.node === "e");
          return { gbitPerSec: round(gbit, 3), path: peer?.path ?? "unknown", via: peer?.via };
        });
        const echoHostPort = endpointOn(echo, "b")?.hostPorts.echo as number;
        await part("latency", async () => {
          const direct = await latency(a, b.ip, echoHostPort, seconds);
          const proxied = await latency(a, echo.vip, echoPort, seconds);
          return {
            ratePerSec: latencyRatePerSec,
            direct,
            proxyAndMesh: proxied,
            addedP50Ms: round(proxied.p50Ms - direct.p50Ms, 3),
            addedP99Ms: round(proxied.p99Ms - direct.p99Ms, 3),
          };
        });
        await part("connections", async () => ({
          direct: await connectRate(a, b.ip, echoHostPort, seconds),
          proxy: await connectRate(a, echo.vip, echoPort, seconds),
        }));
      }
      await part("endpointChange", () => endpointChange(s, quick ? 2 : 6, options));
    }
  } finally {
    await lab.dispose();
  }
  results.targets = evaluateTargets(results);
  for (const [name, target] of Object.entries<Json>(results.targets)) {
    log(`network target ${name}: ${target.met} (${target.value} vs ${target.target})`);
  }
  return results;
}

/** Each target: the value, the target, and "met", "missed" or "n/a" (not measured). */
export function evaluateTargets(
  r: Json,
): Record<string, { value: Json; target: string; met: string }> {
  const mesh = r.mesh?.gbitPerSec;
  const wg = r.wireguardGo?.gbitPerSec;
  const plain = r.plainTcp?.gbitPerSec;
  const verdict = (value: unknown, ok: (v: number) => boolean) =>
    typeof value === "number" && Number.isFinite(value) ? (ok(value) ? "met" : "missed") : "n/a";
  const overWg =
    typeof mesh === "number" && typeof wg === "number" && wg > 0 ? round(mesh / wg) : undefined;
  const ofPlain =
    typeof mesh === "number" && typeof plain === "number" && plain > 0
      ? round(mesh / plain, 3)
      : undefined;
  return {
    meshOverWireguard: {
      value: overWg ?? null,
      target: `≥ ${networkTargets.meshOverWireguard}×`,
      met: verdict(overWg, (v) => v >= networkTargets.meshOverWireguard),
    },
    meshShareOfPlain: {
      value: ofPlain ?? null,
      target: `≥ ${networkTargets.meshShareOfPlain * 100} %`,
      met: verdict(ofPlain, (v) => v >= networkTargets.meshShareOfPlain),
    },
    addedP99: {
      value: r.latency?.addedP99Ms ?? null,
      target: `≤ ${networkTargets.addedP99Ms} ms at ${latencyRatePerSec}/s`,
      met: verdict(r.latency?.addedP99Ms, (v) => v <= networkTargets.addedP99Ms),
    },
    endpointChangeP99: {
      value: r.endpointChange?.p99Ms ?? null,
      target: `≤ ${networkTargets.endpointChangeP99Ms} ms`,
      met: verdict(r.endpointChange?.p99Ms, (v) => v <= networkTargets.endpointChangeP99Ms),
    },
  };
}

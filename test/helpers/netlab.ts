/**
 * A multi-host network lab for chaos tests (issue 4): test hosts are Linux network
 * namespaces on one bridge, and faults are injected between them.
 *
 * Layout of one lab (id = 4 hex characters, so names stay within IFNAMSIZ):
 * - bridge `cltb<id>` in the root namespace, holding `<subnet>.1/24`, so a test running in
 *   the root namespace reaches every host;
 * - per host a namespace `cltest-<id>-<host>` with loopback up and `eth0` = `<subnet>.N/24`,
 *   the other end of the veth pair, `cltv<id>-<N>`, enslaved to the bridge;
 * - no default route in the hosts: they reach the lab subnet and nothing else;
 * - an owner marker `/run/cloudless-netlab/<id>` holding the pid of the test process, so
 *   the startup sweep removes only what a dead run left behind.
 *
 * Faults are rules of an nftables table of the bridge family (`bridge cltest_<id>`), so
 * they act in the middle of the wire: IPv4/IPv6 frames are dropped silently while ARP is
 * still answered. A TCP connection across a cut therefore hangs (SYNs and segments are
 * retransmitted into the void) instead of being reset or failing fast with "no route to
 * host", which is what taking a link down or a netem loss on every frame would do once
 * the neighbour entry expires. Processes inside a host notice nothing locally either (a
 * drop in their own OUTPUT chain would fail their sends with EPERM).
 *
 * A host may sit behind NAT (`behindNat: true`, issue 14), like a laptop behind a home
 * router: it gets its own private link `192.168.<N>.0/24` to a router namespace
 * `cltest-<id>-<host>_nat`, whose `eth0` holds the lab address `<subnet>.N` on the bridge.
 * The router masquerades what leaves the private subnet and forwards nothing from the
 * bridge into it except replies (conntrack established,related), so the host dials out
 * but nobody dials in — not even with a route to its private address. The router's
 * nftables table lives in the router's namespace and goes with it; the router namespace
 * carries the lab prefix, so the leak check and the startup sweep cover it.
 *
 * Packet captures (`lab.startCapture()`) run tcpdump on the bridge (promiscuous, so it
 * sees frames forwarded between hosts, not only those for the root namespace) and on
 * every NAT router's private leg, and search the raw pcap bytes for a marker.
 *
 * Processes run in a host through `nsenter --net=/run/netns/<ns>`, not `ip netns exec`:
 * the latter also remounts /sys, which hides /sys/fs/cgroup from the process, and the
 * process driver needs the cgroup hierarchy.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import * as net from "node:net";
import * as path from "node:path";
import { removeProcessReplicas } from "./behaviour.js";
import { type EtcdCluster, startEtcd } from "./etcd.js";
import { binPath, ManagedProcess, type RunResult, TestResources, waitFor } from "./processes.js";

const NETNS_PREFIX = "cltest-";
/** Suffix of a NAT router's namespace; `_` is not allowed in host names, so no host clashes. */
const ROUTER_SUFFIX = "_nat";
/** The NAT router's nftables table, inside the router's own namespace. */
const ROUTER_TABLE = "cltest_nat";
const BRIDGE_PREFIX = "cltb";
const VETH_PREFIX = "cltv";
const TABLE_PREFIX = "cltest_";
const MARKER_DIR = "/run/cloudless-netlab";
const COMMAND_TIMEOUT_MS = 15_000;
const KILL_DEADLINE_MS = 10_000;
/** Every network namespace inode any lab of this process created, for the process leak check. */
const createdNamespaceInodes = new Map<string, string>();

/** Runs a command to completion; never throws for a non-zero exit, only for a hang. */
export function run(
  command: string,
  args: string[],
  options: { timeoutMs?: number; input?: string } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timeoutMs = options.timeoutMs ?? COMMAND_TIMEOUT_MS;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${command} ${args.join(" ")} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      resolve({ code: 127, stdout, stderr: `${stderr}${err.message}` });
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    if (options.input !== undefined && child.stdin) {
      // A command that exits before reading its input must not fail the test run with EPIPE.
      child.stdin.on("error", () => undefined);
      child.stdin.end(options.input);
    }
  });
}

/** Runs a command that must succeed. */
async function must(command: string, args: string[], input?: string): Promise<string> {
  const result = await run(command, args, input === undefined ? {} : { input });
  if (result.code !== 0) {
    throw new Error(
      `${command} ${args.join(" ")} failed (${result.code}): ${result.stderr.trim()}`,
    );
  }
  return result.stdout;
}

/** Why the lab cannot run here (not root, no netns, no nftables), or undefined. */
export async function netlabUnavailableReason(): Promise<string | undefined> {
  if (process.platform !== "linux") return "the network lab needs Linux network namespaces";
  if (process.getuid?.() !== 0) return "the network lab needs root (network namespaces, bridges)";
  for (const [tool, args] of [
    ["ip", ["-V"]],
    ["nft", ["--version"]],
    ["nsenter", ["--version"]],
  ] as const) {
    const result = await run(tool, [...args]);
    if (result.code !== 0) {
      return `${tool} is not usable (${result.stderr.trim().slice(0, 200)}); run scripts/install-test-deps.sh`;
    }
  }
  const probe = `${NETNS_PREFIX}probe-${process.pid}`;
  const added = await run("ip", ["netns", "add", probe]);
  await run("ip", ["netns", "delete", probe]);
  if (added.code !== 0) {
    return `cannot create a network namespace (${added.stderr.trim().slice(0, 200)})`;
  }
  return undefined;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function killPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

async function netnsNames(): Promise<string[]> {
  const out = await run("ip", ["netns", "list"]);
  // Lines look like "name" or "name (id: 3)".
  return out.stdout
    .split("\n")
    .map((line) => line.trim().split(/\s+/)[0] ?? "")
    .filter((name) => name.length > 0);
}

async function linkNames(): Promise<string[]> {
  const out = await run("ip", ["-j", "link", "show"]);
  if (out.code !== 0) return [];
  return (JSON.parse(out.stdout || "[]") as { ifname: string }[]).map((link) => link.ifname);
}

async function bridgeTables(): Promise<string[]> {
  const out = await run("nft", ["list", "tables", "bridge"]);
  return out.stdout
    .split("\n")
    .map((line) => /^table bridge (\S+)/.exec(line.trim())?.[1])
    .filter((name): name is string => name !== undefined);
}

async function netnsPids(ns: string): Promise<number[]> {
  const out = await run("ip", ["netns", "pids", ns]);
  return out.stdout
    .split("\n")
    .map((line) => Number(line.trim()))
    .filter((pid) => Number.isInteger(pid) && pid > 0);
}

/** Kills every process in the namespace (SIGKILL), repeating until it is empty or the deadline passes. */
async function emptyNamespace(ns: string): Promise<void> {
  await waitFor(
    `namespace ${ns} to have no processes`,
    async () => {
      const pids = await netnsPids(ns);
      for (const pid of pids) killPid(pid, "SIGKILL");
      return pids.length === 0;
    },
    KILL_DEADLINE_MS,
    50,
  );
}

/** Processes whose network namespace is one of these inodes (`net:[INODE]`). */
async function processesInNamespaces(inodes: Map<string, string>): Promise<string[]> {
  if (inodes.size === 0) return [];
  const found: string[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let link: string;
    try {
      link = readlinkSync(`/proc/${entry}/ns/net`);
    } catch {
      continue;
    }
    const ns = inodes.get(link);
    if (!ns) continue;
    const argv = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    found.push(`process ${entry} in ${ns}: ${argv.split("\0").join(" ").trim()}`);
  }
  return found;
}

/**
 * What is left of labs: namespaces, links and nftables tables with the lab prefixes (of
 * one lab when `labId` is given), and processes still inside any namespace a lab of this
 * process created, even one whose name is gone.
 */
export async function findLabLeaks(labId?: string): Promise<string[]> {
  const nsPrefix = labId ? `${NETNS_PREFIX}${labId}-` : NETNS_PREFIX;
  const linkPrefixes = labId
    ? [`${BRIDGE_PREFIX}${labId}`, `${VETH_PREFIX}${labId}-`]
    : [BRIDGE_PREFIX, VETH_PREFIX];
  const tablePrefix = labId ? `${TABLE_PREFIX}${labId}` : TABLE_PREFIX;
  const leaks: string[] = [];
  for (const ns of await netnsNames()) {
    if (!ns.startsWith(nsPrefix)) continue;
    leaks.push(`network namespace ${ns}`);
    for (const pid of await netnsPids(ns)) leaks.push(`process ${pid} in ${ns}`);
  }
  for (const link of await linkNames()) {
    if (linkPrefixes.some((prefix) => link.startsWith(prefix))) leaks.push(`link ${link}`);
  }
  for (const table of await bridgeTables()) {
    if (table.startsWith(tablePrefix)) leaks.push(`nftables table bridge ${table}`);
  }
  for (const ns of await netnsNames()) {
    if (!ns.startsWith(nsPrefix)) continue;
    // Tables inside a lab namespace (a NAT router's, an agent's) go with the namespace;
    // listed here so a leftover namespace shows what it still holds.
    const tables = await run("nsenter", [`--net=/run/netns/${ns}`, "--", "nft", "list", "tables"]);
    for (const line of tables.stdout.split("\n").filter((l) => l.startsWith("table "))) {
      leaks.push(`nftables ${line.trim()} in ${ns}`);
    }
  }
  const inodes = new Map([...createdNamespaceInodes].filter(([, ns]) => ns.startsWith(nsPrefix)));
  leaks.push(...(await processesInNamespaces(inodes)));
  return leaks;
}

/**
 * Fails with the list of leftovers when a lab left something. Without an id it looks at
 * every lab on the machine, live ones of other test runs included.
 */
export async function assertNoLeaks(labId?: string): Promise<void> {
  const leaks = await findLabLeaks(labId);
  if (leaks.length > 0) {
    throw new Error(`the network lab left ${leaks.length} things behind:\n${leaks.join("\n")}`);
  }
}

/** Lab ids whose owner process is dead (or unknown): what a crashed earlier run left. */
async function staleLabIds(): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const ns of await netnsNames()) {
    const id = new RegExp(`^${NETNS_PREFIX}([0-9a-f]{4})-`).exec(ns)?.[1];
    if (id) ids.add(id);
  }
  for (const link of await linkNames()) {
    const id = new RegExp(`^(?:${BRIDGE_PREFIX}|${VETH_PREFIX})([0-9a-f]{4})`).exec(link)?.[1];
    if (id) ids.add(id);
  }
  for (const table of await bridgeTables()) {
    const id = new RegExp(`^${TABLE_PREFIX}([0-9a-f]{4})$`).exec(table)?.[1];
    if (id) ids.add(id);
  }
  for (const file of existsSync(MARKER_DIR) ? await readdir(MARKER_DIR) : []) ids.add(file);
  const stale = new Set<string>();
  for (const id of ids) {
    const owner = Number(await readFile(path.join(MARKER_DIR, id), "utf8").catch(() => "0"));
    if (!(owner > 0 && pidAlive(owner))) stale.add(id);
  }
  return stale;
}

/** Removes everything of one lab id: processes, namespaces, links, its nftables table, its marker. */
async function removeLabRemains(id: string): Promise<void> {
  for (const ns of await netnsNames()) {
    if (!ns.startsWith(`${NETNS_PREFIX}${id}-`)) continue;
    await emptyNamespace(ns).catch(() => undefined);
    await run("ip", ["netns", "delete", ns]);
  }
  for (const link of await linkNames()) {
    if (link.startsWith(`${VETH_PREFIX}${id}-`)) await run("ip", ["link", "delete", link]);
  }
  await run("ip", ["link", "delete", `${BRIDGE_PREFIX}${id}`]);
  await run("nft", ["delete", "table", "bridge", `${TABLE_PREFIX}${id}`]);
  rmSync(path.join(MARKER_DIR, id), { force: true });
}

/** Removes what labs of dead test runs left behind; labs of live runs are not touched. */
export async function sweepStaleLabs(): Promise<string[]> {
  const stale = [...(await staleLabIds())];
  for (const id of stale) await removeLabRemains(id);
  return stale;
}

// ---------------------------------------------------------------------------------------------
// Subnet choice

function ipv4ToNumber(ip: string): number {
  return ip.split(".").reduce((sum, part) => sum * 256 + Number(part), 0);
}

function overlaps(a: [number, number], b: [number, number]): boolean {
  return a[0] <= b[1] && b[0] <= a[1];
}

function cidrRange(cidr: string): [number, number] | undefined {
  const [ip, bitsText] = cidr.split("/");
  if (!ip || !/^\d+\.\d+\.\d+\.\d+$/.test(ip)) return undefined;
  const bits = bitsText === undefined ? 32 : Number(bitsText);
  const size = 2 ** (32 - bits);
  const start = Math.floor(ipv4ToNumber(ip) / size) * size;
  return [start, start + size - 1];
}

/** A random private /24 (10.x or 172.16–31.x) that overlaps no route or address of the machine. */
async function pickSubnet(): Promise<string> {
  const taken: [number, number][] = [];
  const routes = await run("ip", ["-4", "-j", "route", "show", "table", "all"]);
  for (const route of JSON.parse(routes.stdout || "[]") as { dst?: string }[]) {
    const range = route.dst && route.dst !== "default" ? cidrRange(route.dst) : undefined;
    if (range) taken.push(range);
  }
  const addresses = await run("ip", ["-4", "-j", "addr", "show"]);
  for (const link of JSON.parse(addresses.stdout || "[]") as {
    addr_info?: { local: string; prefixlen: number }[];
  }[]) {
    for (const info of link.addr_info ?? []) {
      const range = cidrRange(`${info.local}/${info.prefixlen}`);
      if (range) taken.push(range);
    }
  }
  for (let attempt = 0; attempt < 200; attempt++) {
    const [a, b, c] = [...randomBytes(3)] as [number, number, number];
    const prefix = a % 2 === 0 ? `10.${100 + (b % 150)}.${c}` : `172.${16 + (b % 16)}.${c}`;
    const range = cidrRange(`${prefix}.0/24`) as [number, number];
    if (!taken.some((other) => overlaps(range, other))) return prefix;
  }
  throw new Error("found no free private /24 for the network lab");
}

// ---------------------------------------------------------------------------------------------
// The lab

export interface HostDefinition {
  /** Lower-case letters, digits and dashes. */
  name: string;
  zone?: string;
  /**
   * Puts the host behind its own NAT router (masquerade, no inbound): its address is a
   * private one only its router reaches; the lab sees it as the router's lab address.
   */
  behindNat?: boolean;
}

/** The router in front of a host behind NAT. */
export interface NatRouter {
  /** The router's namespace, `cltest-<lab id>-<host>_nat`. */
  netns: string;
  /** The router's address on the lab bridge: what the other hosts see as the source. */
  publicIp: string;
  /** The router's address on the private link: the host's default gateway. */
  gatewayIp: string;
  /** The private subnet, `192.168.<N>.0/24`. */
  privateSubnet: string;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** Names the captured log file. */
  label?: string;
}

/** The outcome of a TCP connection attempt: a silent cut shows as "timeout", never "ECONNREFUSED". */
export type TcpOutcome = "connected" | "timeout" | string;

const probeScript = `
const net = require("node:net");
const [host, port, timeoutMs, expect] = process.argv.slice(1);
const done = (result) => { console.log(result); process.exit(0); };
const socket = net.connect({ host, port: Number(port) });
setTimeout(() => done(expect ? "no-answer" : "timeout"), Number(timeoutMs));
socket.on("connect", () => { if (!expect) done("connected"); });
socket.on("data", (data) => { if (expect && data.toString().includes(expect)) done(expect); });
socket.on("error", (err) => done(err.code || err.message));
`;

const tcpServerScript = `
const net = require("node:net");
const [host, port, reply] = process.argv.slice(1);
net.createServer((socket) => { socket.end(reply + "\\n"); socket.on("error", () => {}); })
  .listen(Number(port), host, () => console.log("listening on " + host + ":" + port));
`;

const udpServerScript = `
const dgram = require("node:dgram");
const [host, port] = process.argv.slice(1);
const socket = dgram.createSocket("udp4");
socket.on("message", (msg) => console.log("received " + msg.toString()));
socket.bind(Number(port), host, () => console.log("listening on " + host + ":" + port));
`;

const udpSendScript = `
const dgram = require("node:dgram");
const [host, port, message] = process.argv.slice(1);
const socket = dgram.createSocket("udp4");
socket.send(message, Number(port), host, (err) => { console.log(err ? err.code : "sent"); socket.close(); });
`;

/** A process in the lab: started by a host, tracked by the lab. */
export type LabProcess = ManagedProcess;

export class LabHost {
  constructor(
    readonly lab: NetLab,
    readonly name: string,
    readonly zone: string,
    readonly ip: string,
    /** Network namespace name, `cltest-<lab id>-<host>`. */
    readonly netns: string,
    /**
     * The bridge-side end of the host's veth pair, in the root namespace (for a host
     * behind NAT, its router's), so a fault on it cuts the host off.
     */
    readonly vethRoot: string,
    /** Set when the host sits behind its own NAT router; `ip` is then its private address. */
    readonly nat?: NatRouter,
  ) {}

  /** The address other lab hosts see this host's connections come from. */
  get publicIp(): string {
    return this.nat?.publicIp ?? this.ip;
  }

  /** `nsenter` into this host's network namespace, followed by the command. */
  launcher(command: string): string[] {
    return ["nsenter", `--net=/run/netns/${this.netns}`, "--", command];
  }

  /** Starts a long-running process in this host; the lab kills it on dispose. */
  spawn(command: string, args: string[], options: SpawnOptions = {}): LabProcess {
    const child = new ManagedProcess(args, options.env ?? {}, {
      launcher: this.launcher(command),
      label: options.label ?? `${this.name}-${path.basename(command)}`,
    });
    this.lab.track(child);
    return child;
  }

  /**
   * The host dies: SIGKILL to every process in its namespace (agent, replicas, clients),
   * repeated until none is left. Its address and links stay, as a crashed machine's
   * would until it is unplugged; use lab.cutHost() for silence on the wire.
   */
  async killAll(): Promise<void> {
    await emptyNamespace(this.netns);
  }

  /** Starts `cloudless ARGS…` (bin/cloudless, i.e. dist/) in this host. */
  cloudless(args: string[], env: NodeJS.ProcessEnv = {}): LabProcess {
    return this.spawn(process.execPath, [binPath, ...args], {
      env,
      label: `${this.name}-${args[0] ?? "cloudless"}`,
    });
  }

  /** Runs a command in this host to completion. */
  exec(command: string, args: string[], timeoutMs = COMMAND_TIMEOUT_MS): Promise<RunResult> {
    const [program, ...leading] = this.launcher(command);
    return run(program as string, [...leading, ...args], { timeoutMs });
  }

  /** Tries a TCP connection from this host; "connected", "timeout" or the error code. */
  async probeTcp(ip: string, port: number, timeoutMs = 1_500): Promise<TcpOutcome> {
    const result = await this.exec(
      process.execPath,
      ["-e", probeScript, ip, String(port), String(timeoutMs)],
      timeoutMs + 10_000,
    );
    return result.stdout.trim() || `probe failed: ${result.stderr.trim()}`;
  }

  /** Connects and waits for the server's `reply`; "no-answer" when none came within the deadline. */
  async request(ip: string, port: number, reply: string, timeoutMs = 1_500): Promise<string> {
    const result = await this.exec(
      process.execPath,
      ["-e", probeScript, ip, String(port), String(timeoutMs), reply],
      timeoutMs + 10_000,
    );
    return result.stdout.trim() || `probe failed: ${result.stderr.trim()}`;
  }

  /** A TCP server on this host's address that answers each connection with `reply`. */
  async serveTcp(port: number, reply = "pong"): Promise<LabProcess> {
    const server = this.spawn(
      process.execPath,
      ["-e", tcpServerScript, this.ip, String(port), reply],
      {
        label: `${this.name}-tcp-${port}`,
      },
    );
    await waitForOutput(server, "listening on", `TCP server on ${this.name}`);
    return server;
  }

  /** A UDP listener on this host's address that prints every datagram it receives. */
  async listenUdp(port: number): Promise<LabProcess> {
    const listener = this.spawn(process.execPath, ["-e", udpServerScript, this.ip, String(port)], {
      label: `${this.name}-udp-${port}`,
    });
    await waitForOutput(listener, "listening on", `UDP listener on ${this.name}`);
    return listener;
  }

  /** Sends one UDP datagram from this host. */
  async sendUdp(ip: string, port: number, message: string): Promise<void> {
    const result = await this.exec(process.execPath, [
      "-e",
      udpSendScript,
      ip,
      String(port),
      message,
    ]);
    if (result.stdout.trim() !== "sent") {
      throw new Error(`UDP send from ${this.name} failed: ${result.stdout}${result.stderr}`);
    }
  }
}

/** Waits until a process printed `text` on stdout or stderr; fails early if it exits. */
export function waitForOutput(
  child: ManagedProcess,
  text: string,
  description: string,
  timeoutMs = 20_000,
): Promise<true> {
  return waitFor(
    `${description} to print "${text}"`,
    () => {
      if (child.stdout.includes(text) || child.stderr.includes(text)) return true;
      if (!child.running) {
        throw new Error(`${description} exited: ${child.stderr.trim().slice(-1_000)}`);
      }
      return false;
    },
    timeoutMs,
    50,
  );
}

/** Temp dirs that also remember themselves, so the lab can find process-driver replicas in them. */
class LabResources extends TestResources {
  readonly createdDirs: string[] = [];

  override async tempDir(prefix = "cloudless-test-", base?: string): Promise<string> {
    const dir = await super.tempDir(prefix, base);
    this.createdDirs.push(dir);
    return dir;
  }
}

/** The pseudo-host standing for the root namespace (the test runner) in fault rules. */
const ROOT = "<root>";

export class NetLab {
  readonly hosts: LabHost[] = [];
  /**
   * Temp dirs and any other process a test wants removed with the lab. Agent data dirs
   * belong here: the process-driver replicas' cgroups recorded in them are removed too.
   */
  readonly resources = new LabResources();
  private readonly processes: ManagedProcess[] = [];
  private readonly disposers: (() => Promise<void>)[] = [];
  private readonly cutHosts = new Set<string>();
  private readonly cutZones = new Set<string>();
  /** Directed drops, "from>to", between host names or ROOT. */
  private readonly blocked = new Set<string>();
  private disposing: Promise<void> | undefined;

  private constructor(
    readonly id: string,
    /** First three octets of the lab's /24. */
    readonly subnet: string,
  ) {}

  get bridge(): string {
    return `${BRIDGE_PREFIX}${this.id}`;
  }

  /** The root namespace's address on the bridge. */
  get rootIp(): string {
    return `${this.subnet}.1`;
  }

  private get table(): string {
    return `${TABLE_PREFIX}${this.id}`;
  }

  /**
   * Creates a lab with these hosts, after sweeping what dead runs left behind. A lab that
   * fails half-way is disposed before the error is thrown.
   */
  static async create(hosts: HostDefinition[]): Promise<NetLab> {
    await sweepStaleLabs();
    const lab = new NetLab(randomBytes(2).toString("hex"), await pickSubnet());
    // The owner marker comes first, so a crash at any later point leaves a sweepable lab.
    mkdirSync(MARKER_DIR, { recursive: true });
    writeFileSync(path.join(MARKER_DIR, lab.id), String(process.pid));
    try {
      await must("ip", ["link", "add", lab.bridge, "type", "bridge"]);
      await must("ip", ["addr", "add", `${lab.rootIp}/24`, "dev", lab.bridge]);
      await must("ip", ["link", "set", lab.bridge, "up"]);
      for (const definition of hosts) await lab.addHost(definition);
    } catch (err) {
      await lab.dispose().catch(() => undefined);
      throw err;
    }
    return lab;
  }

  private async addHost(definition: HostDefinition): Promise<LabHost> {
    if (!/^[a-z0-9-]{1,20}$/.test(definition.name)) {
      throw new Error(
        `host name ${definition.name}: use 1–20 lower-case letters, digits or dashes`,
      );
    }
    if (this.hosts.some((host) => host.name === definition.name)) {
      throw new Error(`host ${definition.name} already exists in lab ${this.id}`);
    }
    const index = this.hosts.length + 2;
    if (index > 254) throw new Error("a lab holds at most 253 hosts");
    const netns = `${NETNS_PREFIX}${this.id}-${definition.name}`;
    const vethRoot = `${VETH_PREFIX}${this.id}-${index}`;
    const labIp = `${this.subnet}.${index}`;
    const nat: NatRouter | undefined = definition.behindNat
      ? {
          netns: `${netns}${ROUTER_SUFFIX}`,
          publicIp: labIp,
          gatewayIp: `192.168.${index}.1`,
          privateSubnet: `192.168.${index}.0/24`,
        }
      : undefined;
    const host = new LabHost(
      this,
      definition.name,
      definition.zone ?? "a",
      nat ? `192.168.${index}.2` : labIp,
      netns,
      vethRoot,
      nat,
    );
    this.hosts.push(host);
    await this.addNamespace(host.netns);
    // The namespace on the bridge: the host itself, or its router.
    const onBridge = nat?.netns ?? host.netns;
    if (nat) await this.addNamespace(nat.netns);
    await must("ip", [
      "link",
      "add",
      host.vethRoot,
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      onBridge,
    ]);
    await must("ip", ["link", "set", host.vethRoot, "master", this.bridge]);
    await must("ip", ["link", "set", host.vethRoot, "up"]);
    await must("ip", ["-n", onBridge, "addr", "add", `${labIp}/24`, "dev", "eth0"]);
    await must("ip", ["-n", onBridge, "link", "set", "eth0", "up"]);
    await must("ip", ["-n", onBridge, "link", "set", "lo", "up"]);
    if (nat) await this.addNatRouter(host, nat);
    return host;
  }

  private async addNamespace(netns: string): Promise<void> {
    await must("ip", ["netns", "add", netns]);
    createdNamespaceInodes.set(`net:[${statSync(`/run/netns/${netns}`).ino}]`, netns);
  }

  /**
   * The private link (router `lan0` ↔ host `eth0`, both ends created inside the
   * namespaces, so no name can clash in the root namespace), the host's default route
   * through the router, forwarding on the router and its masquerade/no-inbound table.
   */
  private async addNatRouter(host: LabHost, nat: NatRouter): Promise<void> {
    await must("ip", [
      "-n",
      nat.netns,
      "link",
      "add",
      "lan0",
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      host.netns,
    ]);
    await must("ip", ["-n", nat.netns, "addr", "add", `${nat.gatewayIp}/24`, "dev", "lan0"]);
    await must("ip", ["-n", nat.netns, "link", "set", "lan0", "up"]);
    await must("ip", ["-n", host.netns, "addr", "add", `${host.ip}/24`, "dev", "eth0"]);
    await must("ip", ["-n", host.netns, "link", "set", "eth0", "up"]);
    await must("ip", ["-n", host.netns, "link", "set", "lo", "up"]);
    await must("ip", ["-n", host.netns, "route", "add", "default", "via", nat.gatewayIp]);
    // /proc/sys/net is per network namespace: the write reaches the router's copy.
    const launcher = ["nsenter", `--net=/run/netns/${nat.netns}`, "--"];
    await must(launcher[0] as string, [
      ...launcher.slice(1),
      "sh",
      "-c",
      "echo 1 > /proc/sys/net/ipv4/ip_forward",
    ]);
    // A home router: everything out, only replies in. The forward policy drops whatever
    // else comes from the bridge, even to a host that routes the private subnet here.
    const table = `table ip ${ROUTER_TABLE} {
  chain forward {
    type filter hook forward priority 0; policy drop;
    iifname "lan0" oifname "eth0" accept
    iifname "eth0" oifname "lan0" ct state established,related accept
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "eth0" ip saddr ${nat.privateSubnet} masquerade
  }
}
`;
    await must(launcher[0] as string, [...launcher.slice(1), "nft", "-f", "-"], table);
  }

  /** Hosts behind NAT, each with its router. */
  get natHosts(): LabHost[] {
    return this.hosts.filter((host) => host.nat !== undefined);
  }

  host(name: string): LabHost {
    const host = this.hosts.find((candidate) => candidate.name === name);
    if (!host) throw new Error(`no host ${name} in lab ${this.id}`);
    return host;
  }

  zone(zone: string): LabHost[] {
    return this.hosts.filter((host) => host.zone === zone);
  }

  /** Tracks a process so that dispose() kills it. */
  track(child: ManagedProcess): ManagedProcess {
    this.processes.push(child);
    return child;
  }

  /** Runs `fn` on dispose, before processes and namespaces go (e.g. an etcd cluster's stop). */
  onDispose(fn: () => Promise<void>): void {
    this.disposers.push(fn);
  }

  /** Tries a TCP connection from the root namespace; "connected", "timeout" or the error code. */
  probeTcpFromRoot(ip: string, port: number, timeoutMs = 1_500): Promise<TcpOutcome> {
    return new Promise((resolve) => {
      const socket = net.connect({ host: ip, port });
      const finish = (outcome: TcpOutcome) => {
        clearTimeout(timer);
        socket.destroy();
        resolve(outcome);
      };
      const timer = setTimeout(() => finish("timeout"), timeoutMs);
      socket.once("connect", () => finish("connected"));
      socket.once("error", (err: NodeJS.ErrnoException) => finish(err.code ?? err.message));
    });
  }

  // -------------------------------------------------------------------------------------------
  // Faults. All of them are silent drops of IP frames on the bridge (see the file comment).

  /** The host loses all IP traffic, with every other host and with the root namespace. */
  async cutHost(host: LabHost): Promise<void> {
    this.cutHosts.add(host.name);
    await this.applyFaults();
  }

  async healHost(host: LabHost): Promise<void> {
    this.cutHosts.delete(host.name);
    await this.applyFaults();
  }

  /**
   * Hosts of `a` and hosts of `b` cannot reach each other, in either direction. Both sides
   * still reach each other within their group and the root namespace (the test runner),
   * as when a link between two sites fails but each side keeps its own uplink.
   */
  async partition(a: LabHost[], b: LabHost[]): Promise<void> {
    for (const x of a) {
      for (const y of b) {
        this.blocked.add(`${x.name}>${y.name}`);
        this.blocked.add(`${y.name}>${x.name}`);
      }
    }
    await this.applyFaults();
  }

  /**
   * The zone's hosts keep reaching each other, but lose all traffic with every host outside
   * the zone and with the root namespace.
   */
  async cutZone(zone: string): Promise<void> {
    if (this.zone(zone).length === 0) throw new Error(`lab ${this.id} has no host in zone ${zone}`);
    this.cutZones.add(zone);
    await this.applyFaults();
  }

  async healZone(zone: string): Promise<void> {
    this.cutZones.delete(zone);
    await this.applyFaults();
  }

  /**
   * Frames from `from` to `to` are dropped, frames from `to` to `from` are delivered. TCP
   * needs both directions, so TCP between the two hangs either way; datagrams from `to`
   * still arrive at `from`. `null` stands for the root namespace.
   */
  async cutOneWay(from: LabHost | null, to: LabHost | null): Promise<void> {
    this.blocked.add(`${from?.name ?? ROOT}>${to?.name ?? ROOT}`);
    await this.applyFaults();
  }

  /** Removes every fault: cut hosts and zones, partitions and one-way cuts. */
  async heal(): Promise<void> {
    this.cutHosts.clear();
    this.cutZones.clear();
    this.blocked.clear();
    await this.applyFaults();
  }

  /** Stops a process (and only it) with SIGSTOP; its sockets stay open and its peers see silence. */
  pause(child: ManagedProcess): void {
    process.kill(child.pid, "SIGSTOP");
  }

  resume(child: ManagedProcess): void {
    process.kill(child.pid, "SIGCONT");
  }

  /** SIGKILLs a process and waits until it has exited. */
  async kill9(child: ManagedProcess): Promise<void> {
    if (child.running) child.kill("SIGKILL");
    await waitFor("the killed process to exit", () => !child.running, KILL_DEADLINE_MS, 20);
  }

  /** Compiles the fault state into the lab's nftables table, replacing it atomically. */
  private async applyFaults(): Promise<void> {
    const forward: string[] = [];
    const input: string[] = [];
    const output: string[] = [];
    const drop = "meta protocol { ip, ip6 } drop";
    const veth = (name: string) => this.host(name).vethRoot;
    const block = (from: string, to: string) => {
      if (from === ROOT && to === ROOT) return;
      if (from === ROOT) output.push(`oifname "${veth(to)}" ${drop}`);
      else if (to === ROOT) input.push(`iifname "${veth(from)}" ${drop}`);
      else forward.push(`iifname "${veth(from)}" oifname "${veth(to)}" ${drop}`);
    };
    for (const name of this.cutHosts) {
      forward.push(`iifname "${veth(name)}" ${drop}`, `oifname "${veth(name)}" ${drop}`);
      block(name, ROOT);
      block(ROOT, name);
    }
    for (const zone of this.cutZones) {
      const inside = this.zone(zone).map((host) => host.name);
      const outside = [ROOT, ...this.hosts.map((h) => h.name).filter((n) => !inside.includes(n))];
      for (const x of inside) {
        for (const y of outside) {
          block(x, y);
          block(y, x);
        }
      }
    }
    for (const pair of this.blocked) {
      const [from, to] = pair.split(">") as [string, string];
      block(from, to);
    }
    const chain = (name: string, rules: string[]) =>
      `  chain ${name} {\n    type filter hook ${name} priority 0; policy accept;\n${rules
        .map((rule) => `    ${rule}\n`)
        .join("")}  }\n`;
    let script = `table bridge ${this.table} {}\ndelete table bridge ${this.table}\n`;
    if (forward.length + input.length + output.length > 0) {
      script += `table bridge ${this.table} {\n${chain("forward", forward)}${chain("input", input)}${chain("output", output)}}\n`;
    }
    await must("nft", ["-f", "-"], script);
  }

  // -------------------------------------------------------------------------------------------
  // Packet capture

  /**
   * Starts tcpdump on the lab bridge and on every NAT router's private leg, writing raw
   * pcap files into a lab temp dir; resolves once every capture listens. Stop it with
   * `capture.stop()` (the lab kills it on dispose anyway).
   */
  async startCapture(label = "capture"): Promise<PacketCapture> {
    const dir = await this.resources.tempDir(`cloudless-${label}-`);
    const points: CapturePoint[] = [
      { where: `bridge ${this.bridge}`, launcher: ["tcpdump"], iface: this.bridge },
      ...this.natHosts.map((host) => ({
        where: `${host.name}'s private link`,
        launcher: ["nsenter", `--net=/run/netns/${host.nat?.netns}`, "--", "tcpdump"],
        iface: "lan0",
      })),
    ];
    const capture = new PacketCapture();
    for (const [index, point] of points.entries()) {
      const file = path.join(dir, `${index}.pcap`);
      // -U: write each packet as it comes (a stop loses nothing); -s 0: whole frames;
      // -Z root: write the file as root instead of dropping to the tcpdump user;
      // -B: a 16 MiB kernel buffer, so a burst is not dropped (drops are reported);
      // --immediate-mode: without it, packets of the last second sit in a kernel block
      // that a stop (SIGINT) never reads: "received by filter" but not "captured".
      const child = new ManagedProcess(
        [
          "-i",
          point.iface,
          "-w",
          file,
          "-U",
          "--immediate-mode",
          "-n",
          "-s",
          "0",
          "-Z",
          "root",
          "-B",
          "16384",
        ],
        {},
        { launcher: point.launcher, label: `${label}-${index}` },
      );
      this.track(child);
      capture.points.push({ where: point.where, file, process: child });
      await waitForOutput(child, "listening on", `tcpdump on ${point.where}`);
    }
    return capture;
  }

  // -------------------------------------------------------------------------------------------
  // Cleanup

  /**
   * Removes everything the lab created: its disposers' resources, every process in its
   * namespaces (whole trees, including what left its parent's process group), the
   * namespaces, veths, bridge and fault table, and its temp dirs. Idempotent; tolerates a
   * half-created lab. Fails (after cleaning what it could) if something remains.
   */
  dispose(): Promise<void> {
    this.disposing ??= this.disposeOnce();
    return this.disposing;
  }

  private async disposeOnce(): Promise<void> {
    const errors: string[] = [];
    for (const fn of [...this.disposers].reverse()) {
      await fn().catch((err: unknown) => errors.push(`disposer: ${String(err)}`));
    }
    for (const child of this.processes) child.kill("SIGKILL");
    const namespaces = this.hosts.flatMap((host) =>
      host.nat ? [host.netns, host.nat.netns] : [host.netns],
    );
    for (const netns of namespaces) {
      // A paused process must die too: SIGKILL works on stopped processes.
      await emptyNamespace(netns).catch((err: unknown) => errors.push(String(err)));
    }
    await waitFor(
      "the lab's processes to exit",
      () => this.processes.every((child) => !child.running),
      KILL_DEADLINE_MS,
      20,
    ).catch((err: unknown) => errors.push(String(err)));
    // Process-driver replicas died with their namespace; their cgroups stay unless removed.
    await removeProcessReplicas(this.resources.createdDirs).catch((err: unknown) =>
      errors.push(`replica cgroups: ${String(err)}`),
    );
    await removeLabRemains(this.id).catch((err: unknown) => errors.push(String(err)));
    await this.resources.cleanup().catch((err: unknown) => errors.push(String(err)));
    const leaks = await findLabLeaks(this.id);
    if (leaks.length > 0 || errors.length > 0) {
      throw new Error(
        `lab ${this.id} was not removed cleanly:\n${[...errors, ...leaks].join("\n")}`,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Packet capture

interface CapturePoint {
  where: string;
  launcher: string[];
  iface: string;
}

export interface CaptureStats {
  where: string;
  captured: number;
  /** Dropped by the kernel, or received but never written (counted by tcpdump). */
  lost: number;
}

/** tcpdump processes writing pcap files; see NetLab.startCapture(). */
export class PacketCapture {
  readonly points: { where: string; file: string; process: ManagedProcess }[] = [];
  private stats: CaptureStats[] | undefined;

  /**
   * Stops every tcpdump (SIGINT: it flushes and prints its counts) and returns how many
   * packets each captured and how many the kernel dropped: a marker "not found" only
   * means something when nothing was dropped.
   */
  async stop(): Promise<CaptureStats[]> {
    if (this.stats) return this.stats;
    const stats: CaptureStats[] = [];
    for (const point of this.points) {
      point.process.kill("SIGINT");
      const timer = setTimeout(() => point.process.kill("SIGKILL"), KILL_DEADLINE_MS);
      await point.process.exited();
      clearTimeout(timer);
      // The counts tcpdump prints on exit; "received by filter" minus "captured" was lost.
      const count = (what: string) =>
        Number(new RegExp(`(\\d+) packets? ${what}`).exec(point.process.stderr)?.[1] ?? Number.NaN);
      const captured = count("captured");
      stats.push({
        where: point.where,
        captured,
        lost: count("dropped by kernel") + (count("received by filter") - captured),
      });
    }
    this.stats = stats;
    return stats;
  }

  /**
   * Where (which capture point) the marker's bytes appear verbatim in the raw capture.
   * Plaintext carrying it shows up as is; a marker split across two segments would not,
   * so callers keep markers short and inside one small request.
   */
  async findMarker(marker: string): Promise<string[]> {
    await this.stop();
    const needle = Buffer.from(marker);
    const found: string[] = [];
    for (const point of this.points) {
      const bytes = await readFile(point.file).catch(() => Buffer.alloc(0));
      if (bytes.includes(needle)) found.push(point.where);
    }
    return found;
  }
}

// ---------------------------------------------------------------------------------------------
// etcd on lab hosts

export interface LabEtcdCluster extends EtcdCluster {
  /** `http://<host ip>:2379`, one per member, in the order of the hosts. */
  readonly urls: string[];
}

/**
 * A real etcd cluster with one member per lab host (2379 client, 2380 peer on the host's
 * own address), healthy when this resolves: every member answered /health (a quorum read)
 * and a put followed by a get went through the etcd3 client. Its data dirs are removed
 * when the lab is disposed, or by the cluster's own stop().
 */
export async function startEtcdCluster(lab: NetLab, hosts: LabHost[]): Promise<LabEtcdCluster> {
  if (hosts.length !== 1 && hosts.length !== 3) {
    throw new Error(`an etcd cluster here has 1 or 3 members, not ${hosts.length}`);
  }
  const cluster = await startEtcd({
    members: hosts.length as 1 | 3,
    placement: hosts.map((host) => ({ host: host.ip, launcher: host.launcher("etcd") })),
  });
  lab.onDispose(() => cluster.stop());
  const urls = hosts.map((host) => `http://${host.ip}:2379`);
  const { Etcd3 } = await import("etcd3");
  const client = new Etcd3({ hosts: urls, dialTimeout: 2_000 });
  try {
    const key = `cloudless-netlab-${lab.id}`;
    await waitFor(
      "a put and a get through the etcd3 client",
      async () => {
        await client.put(key).value("ok");
        return (await client.get(key).string()) === "ok";
      },
      30_000,
      200,
    );
  } finally {
    client.close();
  }
  return { ...cluster, urls };
}

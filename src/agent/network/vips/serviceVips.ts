/**
 * Service virtual IPs (REQ-042, ADR 0046, ADR 0047): the agent sends traffic for a
 * service's VIP:port to a listener of its own on 127.0.0.1, where the proxy picks the
 * endpoint. Built the way kube-proxy's nftables mode is: one table owned by Cloudless,
 * regenerated whole from the forward set as JSON and applied with `nft -j -f -` in one
 * atomic transaction; one map keyed on `ip daddr . meta l4proto . th dport` serves every
 * service with one rule.
 *
 * What the table does (family ip):
 * - `nat_output` (hook output, priority -100: nft 1.0.6 rejects `dstnat` on output) and
 *   `nat_prerouting` (hook prerouting, -100) DNAT a VIP:port found in the map to
 *   127.0.0.1:toPort, for the host's own processes and for containers or other network
 *   namespaces whose packets arrive on the host.
 * - `filter_output` and `filter_prerouting` (priority -90, after the DNAT) refuse what is
 *   still addressed to the service range, so a VIP:port without a forward fails at once
 *   (tcp reset, icmp port-unreachable) instead of timing out.
 * - `filter_input` drops packets for 127.0.0.0/8 that arrive on another interface and were
 *   not DNATed by us: route_localnet=1 (needed for the DNAT from other namespaces) would
 *   otherwise let anyone on a link reach the host's loopback services.
 *
 * Outside the table, and undone by `remove()`:
 * - `net.ipv4.conf.all.route_localnet=1` (the kernel ORs `all` with the interface's
 *   value, and containers' interfaces come and go). The value found before is kept in a
 *   rule comment of the table (chain `saved_state`), so an agent restarted after kill -9
 *   still restores the original.
 * - a route for the service range on `lo`, added only when no route covers the range: a
 *   local connect() is routed before the output hook runs, and without a route it fails
 *   with ENETUNREACH before the DNAT could apply. The route carries its own protocol
 *   number (`proto 241`) and source 127.0.0.1, so it is ours to find and delete and no other route is touched.
 *   (A dummy link would do the same, but the dummy module is not in every kernel — it is
 *   missing on the machine this was built on — and `lo` is everywhere; every packet the
 *   route catches is DNATed or refused by the table anyway.)
 *
 * nft reads JSON from a named file only (`-f -` opens /dev/stdin, which fails on the
 * socket Node gives a child as stdin), so each transaction goes through a 0600 file in a
 * private temporary directory, removed right after.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { CloudlessError } from "../../../api/errors.js";
import type { Logger } from "../../../observe/logger.js";

/** DNAT vip:port → 127.0.0.1:toPort. */
export interface VipForward {
  vip: string;
  port: number;
  protocol: "tcp" | "udp";
  toPort: number;
}

export interface ServiceVipsOptions {
  /** The nftables table (family ip) Cloudless owns, e.g. "cloudless". */
  table: string;
  /** The service range, e.g. "10.96.0.0/16". */
  serviceCidr: string;
  logger: Logger;
  /** Runs in the caller's network namespace; tests start the caller inside theirs. */
  netns?: never;
}

/**
 * Forwards one apply may carry: a /16 service range holds 65,534 VIPs, most services
 * have one to three ports, and the whole set is one nft transaction of about 100 bytes
 * per map element (10 MB at this limit, parsed by nft in a few seconds).
 */
export const maxVipForwards = 100_000;
/** Deadline of one nft/ip/conntrack command: a hung netlink call must not hang the agent. */
export const commandTimeoutMs = 15_000;
/** The loopback address every forward lands on (one listener per service port). */
export const forwardTarget = "127.0.0.1";
/** The sysctl that lets packets from other interfaces be DNATed to 127.0.0.1. */
const routeLocalnetPath = "/proc/sys/net/ipv4/conf/all/route_localnet";
/** nft identifiers: lowercase letters, digits, underscore. */
const tableNamePattern = /^[a-z][a-z0-9_]{0,31}$/;
/**
 * The routing protocol number that marks the service-range route as Cloudless's
 * (rtnetlink leaves 0-4 and the well-known daemons' numbers alone; 241 is unassigned).
 */
export const routeProtocol = "241";
/** Conntrack deletions per apply: each is a process; more are left to expire (UDP: 30 s). */
const maxConntrackDeletionsPerApply = 256;

interface Cidr {
  readonly network: number;
  readonly prefixLength: number;
  readonly text: string;
}

/** Kept in the table (chain saved_state): what remove() must restore, even after a restart. */
interface SavedState {
  readonly routeLocalnetBefore: string;
}

function parseIpv4(text: string): number | undefined {
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!match) return undefined;
  let value = 0;
  for (const part of match.slice(1)) {
    const octet = Number(part);
    if (octet > 255 || (part.length > 1 && part.startsWith("0"))) return undefined;
    value = value * 256 + octet;
  }
  return value;
}

function formatIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join(".");
}

function parseCidr(text: string): Cidr {
  const [address, prefix, ...rest] = text.split("/");
  const network = parseIpv4(address ?? "");
  const prefixLength = Number(prefix);
  if (
    network === undefined ||
    rest.length > 0 ||
    prefix === undefined ||
    !/^\d{1,2}$/.test(prefix) ||
    prefixLength < 8 ||
    prefixLength > 30
  ) {
    throw CloudlessError.invalid(
      `service CIDR "${text}" is not an IPv4 range a.b.c.d/8 to /30; set e.g. 10.96.0.0/16`,
    );
  }
  const size = 2 ** (32 - prefixLength);
  if (network % size !== 0) {
    throw CloudlessError.invalid(
      `service CIDR "${text}" has host bits set; use ${formatIpv4(network - (network % size))}/${prefixLength}`,
    );
  }
  return { network, prefixLength, text };
}

function inCidr(cidr: Cidr, address: number): boolean {
  return (
    Math.floor(address / 2 ** (32 - cidr.prefixLength)) ===
    Math.floor(cidr.network / 2 ** (32 - cidr.prefixLength))
  );
}

function checkPort(value: unknown, what: string): void {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > 65_535) {
    throw CloudlessError.invalid(`${what} ${String(value)} is not a port 1-65535`);
  }
}

/** Checks the whole set before anything is applied; throws one-line InvalidArgument errors. */
export function validateForwards(
  table: string,
  serviceCidr: string,
  forwards: readonly VipForward[],
): Cidr {
  if (!tableNamePattern.test(table)) {
    throw CloudlessError.invalid(
      `nftables table name "${table}" must be 1-32 lowercase letters, digits or _ starting with a letter`,
    );
  }
  const cidr = parseCidr(serviceCidr);
  if (forwards.length > maxVipForwards) {
    throw CloudlessError.invalid(
      `${forwards.length} VIP forwards exceed the limit of ${maxVipForwards}; split the service range or remove services`,
    );
  }
  const seen = new Set<string>();
  for (const forward of forwards) {
    const address = parseIpv4(forward.vip);
    if (address === undefined) {
      throw CloudlessError.invalid(`VIP "${forward.vip}" is not an IPv4 address`);
    }
    if (!inCidr(cidr, address)) {
      throw CloudlessError.invalid(`VIP ${forward.vip} is outside the service range ${cidr.text}`);
    }
    if (forward.protocol !== "tcp" && forward.protocol !== "udp") {
      throw CloudlessError.invalid(
        `VIP ${forward.vip} protocol "${String(forward.protocol)}" is not tcp or udp`,
      );
    }
    checkPort(forward.port, `VIP ${forward.vip} port`);
    checkPort(forward.toPort, `VIP ${forward.vip}:${forward.port} target port`);
    const key = `${forward.vip}/${forward.protocol}/${forward.port}`;
    if (seen.has(key)) {
      throw CloudlessError.invalid(
        `VIP ${forward.vip}:${forward.port}/${forward.protocol} is forwarded twice; keep one`,
      );
    }
    seen.add(key);
  }
  return cidr;
}

type NftCommand = Record<string, unknown>;

function daddrInRange(cidr: Cidr): NftCommand {
  return {
    match: {
      op: "==",
      left: { payload: { protocol: "ip", field: "daddr" } },
      right: { prefix: { addr: formatIpv4(cidr.network), len: cidr.prefixLength } },
    },
  };
}

function buildCommands(
  table: string,
  cidr: Cidr,
  forwards: readonly VipForward[],
  saved: SavedState,
): NftCommand[] {
  const family = "ip";
  const chain = (name: string, type: string, hook: string, prio: number): NftCommand => ({
    add: { chain: { family, table, name, type, hook, prio, policy: "accept" } },
  });
  const rule = (chainName: string, expr: NftCommand[], comment?: string): NftCommand => ({
    add: { rule: { family, table, chain: chainName, expr, ...(comment ? { comment } : {}) } },
  });
  // Sorted, so the same set always yields the same text (apply skips an unchanged one).
  const elements = [...forwards]
    .sort(
      (a, b) =>
        (parseIpv4(a.vip) ?? 0) - (parseIpv4(b.vip) ?? 0) ||
        a.protocol.localeCompare(b.protocol) ||
        a.port - b.port,
    )
    .map((f) => [{ concat: [f.vip, f.protocol, f.port] }, f.toPort]);
  const dnat: NftCommand[] = [
    daddrInRange(cidr),
    {
      match: { op: "==", left: { meta: { key: "l4proto" } }, right: { set: ["tcp", "udp"] } },
    },
    {
      // The target address is always 127.0.0.1, so the map yields only the port: nft
      // 1.0.6's JSON parser cannot read a concatenated map value (address . port).
      dnat: {
        family,
        addr: forwardTarget,
        port: {
          map: {
            key: {
              concat: [
                { payload: { protocol: "ip", field: "daddr" } },
                { meta: { key: "l4proto" } },
                { payload: { protocol: "th", field: "dport" } },
              ],
            },
            data: "@forwards",
          },
        },
      },
    },
  ];
  const refuseTcp: NftCommand[] = [
    daddrInRange(cidr),
    { match: { op: "==", left: { meta: { key: "l4proto" } }, right: "tcp" } },
    { reject: { type: "tcp reset" } },
  ];
  const refuseOther: NftCommand[] = [
    daddrInRange(cidr),
    { reject: { type: "icmp", expr: "port-unreachable" } },
  ];
  const fromOtherInterface: NftCommand = {
    match: { op: "!=", left: { meta: { key: "iif" } }, right: "lo" },
  };
  const toLoopback: NftCommand = {
    match: {
      op: "==",
      left: { payload: { protocol: "ip", field: "daddr" } },
      right: { prefix: { addr: "127.0.0.0", len: 8 } },
    },
  };
  const map: Record<string, unknown> = {
    family,
    table,
    name: "forwards",
    type: ["ipv4_addr", "inet_proto", "inet_service"],
    map: "inet_service",
  };
  if (elements.length > 0) map.elem = elements;
  return [
    // Adding first makes the delete succeed when the table is absent: the replace stays
    // one transaction that never fails on the state it starts from (kube-proxy does this).
    { add: { table: { family, name: table } } },
    { delete: { table: { family, name: table } } },
    { add: { table: { family, name: table } } },
    { add: { map } },
    chain("nat_output", "nat", "output", -100),
    chain("nat_prerouting", "nat", "prerouting", -100),
    chain("filter_output", "filter", "output", -90),
    chain("filter_prerouting", "filter", "prerouting", -90),
    chain("filter_input", "filter", "input", 0),
    rule("nat_output", dnat),
    rule("nat_prerouting", dnat),
    rule("filter_output", refuseTcp),
    rule("filter_output", refuseOther),
    rule("filter_prerouting", refuseTcp),
    rule("filter_prerouting", refuseOther),
    rule("filter_input", [
      fromOtherInterface,
      toLoopback,
      { match: { op: "in", left: { ct: { key: "status" } }, right: "dnat" } },
      { accept: null },
    ]),
    rule("filter_input", [fromOtherInterface, toLoopback, { drop: null }]),
    // What remove() must restore, kept in the kernel with the table so an agent restarted
    // after kill -9 still knows it: a rule comment in a chain nothing jumps to (nft 1.0.6's
    // JSON parser drops table comments but keeps rule comments).
    { add: { chain: { family, table, name: "saved_state" } } },
    rule("saved_state", [{ accept: null }], JSON.stringify(saved)),
  ];
}

/**
 * The nft JSON transaction that replaces the table with one forwarding `forwards`.
 * Pure; throws InvalidArgument (one line) for a bad set.
 */
export function buildRuleset(
  table: string,
  serviceCidr: string,
  forwards: readonly VipForward[],
  saved: SavedState = { routeLocalnetBefore: "0" },
): unknown {
  const cidr = validateForwards(table, serviceCidr, forwards);
  return { nftables: buildCommands(table, cidr, forwards, saved) };
}

interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

function runCommand(command: string, args: string[]): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      stderr += `${command} did not finish within ${commandTimeoutMs} ms`;
    }, commandTimeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      resolve({ code: 127, stdout, stderr: `${stderr}${err.message}` });
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
  });
}

function firstLine(text: string): string {
  return (
    text
      .split("\n")
      .map((line) => line.trim())
      .find((line) => line.length > 0) ?? "no output"
  ).slice(0, 300);
}

async function mustRun(command: string, args: string[]): Promise<string> {
  const result = await runCommand(command, args);
  if (result.code !== 0) {
    throw new CloudlessError(
      "Internal",
      `${command} ${args.slice(0, 3).join(" ")} failed: ${firstLine(result.stderr)}`,
    );
  }
  return result.stdout;
}

/** Runs one nft JSON transaction (or only checks it with `check`). */
async function runNftJson(text: string, check = false): Promise<CommandResult> {
  const dir = await mkdtemp(path.join(tmpdir(), "cloudless-nft-"));
  try {
    const file = path.join(dir, "ruleset.json");
    await writeFile(file, text, { mode: 0o600 });
    return await runCommand("nft", [...(check ? ["-c"] : []), "-j", "-f", file]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function mustRunNftJson(text: string): Promise<void> {
  const result = await runNftJson(text);
  if (result.code !== 0) {
    throw new CloudlessError(
      "Internal",
      `nft refused the service VIP table: ${firstLine(result.stderr)}`,
    );
  }
}

function forwardKey(forward: VipForward): string {
  return `${forward.vip}/${forward.protocol}/${forward.port}`;
}

export class ServiceVips {
  private readonly table: string;
  private readonly serviceCidr: string;
  private readonly logger: Logger;
  /** The JSON text last applied; an identical apply is skipped. */
  private appliedText: string | undefined;
  private appliedForwards = new Map<string, VipForward>();
  private saved: SavedState | undefined;
  /** Serializes apply and remove: each is a read-modify-write of kernel state. */
  private queue: Promise<unknown> = Promise.resolve();

  /** Why VIPs cannot be programmed here, or undefined: not Linux, not root, no nft, no nat. */
  static async unavailableReason(): Promise<string | undefined> {
    if (process.platform !== "linux") return "service VIPs need Linux nftables";
    if (process.getuid?.() !== 0) return "service VIPs need root (nftables, sysctl, routes)";
    const version = await runCommand("nft", ["--version"]);
    if (version.code !== 0) {
      return `nft is not usable (${firstLine(version.stderr)}); install nftables`;
    }
    // --check sends the transaction to the kernel and aborts it: it proves nat support.
    const probe = JSON.stringify(
      buildRuleset("cloudless_chk", "10.255.255.0/30", [
        { vip: "10.255.255.1", port: 1, protocol: "tcp", toPort: 1 },
      ]),
    );
    const checked = await runNftJson(probe, true);
    if (checked.code !== 0) {
      return `the kernel refused an nftables nat table (${firstLine(checked.stderr)})`;
    }
    return undefined;
  }

  constructor(options: ServiceVipsOptions) {
    // Checked here so a bad configuration fails at start, not at the first update.
    validateForwards(options.table, options.serviceCidr, []);
    this.table = options.table;
    this.serviceCidr = options.serviceCidr;
    this.logger = options.logger;
  }

  /** Replaces the whole forward set in one atomic transaction; skips an unchanged set. */
  async apply(forwards: readonly VipForward[]): Promise<void> {
    // Validated before queueing (a rejected promise, never a synchronous throw): a bad set
    // is refused whole and nothing is applied.
    validateForwards(this.table, this.serviceCidr, forwards);
    const copy = forwards.map((f) => ({ ...f }));
    await this.serialize(() => this.applyNow(copy));
  }

  /** Deletes the table and its route, and restores route_localnet; idempotent. */
  remove(): Promise<void> {
    return this.serialize(() => this.removeNow());
  }

  private serialize(work: () => Promise<void>): Promise<void> {
    const next = this.queue.then(work, work);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async applyNow(forwards: VipForward[]): Promise<void> {
    const saved = this.saved ?? (await this.discoverSavedState());
    const cidr = parseCidr(this.serviceCidr);
    const text = JSON.stringify({ nftables: buildCommands(this.table, cidr, forwards, saved) });
    if (text === this.appliedText) return;
    await this.ensureRoute(cidr);
    // The table (with its guard for 127.0.0.0/8) before route_localnet, and on remove the
    // other way round, so route_localnet is never 1 without the guard.
    await mustRunNftJson(text);
    await this.setRouteLocalnet("1");
    this.saved = saved;
    this.appliedText = text;
    const previous = this.appliedForwards;
    this.appliedForwards = new Map(forwards.map((f) => [forwardKey(f), f]));
    await this.forgetStaleUdpFlows(previous);
    this.logger.debug({ forwards: forwards.length, table: this.table }, "service VIPs applied");
  }

  /**
   * UDP has no end of flow: a client that keeps its source port (a resolver) would keep
   * reaching the old target through the conntrack entry for 30 s or more. kube-proxy clears
   * these too; TCP flows are left to finish on the listener they started with.
   */
  private async forgetStaleUdpFlows(previous: Map<string, VipForward>): Promise<void> {
    let deletions = 0;
    for (const [key, old] of previous) {
      if (old.protocol !== "udp") continue;
      if (this.appliedForwards.get(key)?.toPort === old.toPort) continue;
      if (deletions++ >= maxConntrackDeletionsPerApply) break;
      // Exit code 1 means "no entry matched", which is the common case.
      await runCommand("conntrack", [
        "-D",
        "-p",
        "udp",
        "--orig-dst",
        old.vip,
        "--orig-port-dst",
        String(old.port),
      ]);
    }
  }

  /** After a restart (even kill -9) the table's saved_state chain still says what to restore. */
  private async discoverSavedState(): Promise<SavedState> {
    const listed = await runCommand("nft", ["-j", "list", "table", "ip", this.table]);
    if (listed.code === 0) {
      try {
        const parsed = JSON.parse(listed.stdout) as {
          nftables?: { rule?: { chain?: string; comment?: string } }[];
        };
        const comment = parsed.nftables?.find((entry) => entry.rule?.chain === "saved_state")?.rule
          ?.comment;
        const state = comment ? (JSON.parse(comment) as Partial<SavedState>) : {};
        if (state.routeLocalnetBefore === "0" || state.routeLocalnetBefore === "1") {
          return { routeLocalnetBefore: state.routeLocalnetBefore };
        }
      } catch {
        // A table without our saved state: fall through and read the current value.
      }
    }
    return { routeLocalnetBefore: (await readFile(routeLocalnetPath, "utf8")).trim() };
  }

  private async setRouteLocalnet(value: string): Promise<void> {
    const current = (await readFile(routeLocalnetPath, "utf8")).trim();
    if (current !== value) await writeFile(routeLocalnetPath, `${value}\n`);
  }

  private async ownRouteExists(): Promise<boolean> {
    const listed = await runCommand("ip", [
      "-j",
      "route",
      "show",
      this.serviceCidr,
      "proto",
      routeProtocol,
    ]);
    return listed.code === 0 && (JSON.parse(listed.stdout || "[]") as unknown[]).length > 0;
  }

  /** A local connect() needs a route to the VIP before the output hook can DNAT it. */
  private async ensureRoute(cidr: Cidr): Promise<void> {
    if (await this.ownRouteExists()) return;
    const probe = formatIpv4(cidr.network + 1);
    const routed = await runCommand("ip", ["-j", "route", "get", probe]);
    if (routed.code === 0) return;
    // `src 127.0.0.1`: lo's only address has host scope, so without it the kernel picks
    // 0.0.0.0 as the source and the DNATed connection's replies go nowhere.
    await mustRun("ip", [
      ...["route", "replace", cidr.text, "dev", "lo"],
      ...["proto", routeProtocol, "src", forwardTarget],
    ]);
    this.logger.info(
      { serviceCidr: cidr.text },
      "no route covered the service range; added one on lo for the VIPs",
    );
  }

  private async removeNow(): Promise<void> {
    const saved = this.saved ?? (await this.discoverSavedState());
    // route_localnet first: the table's guard for 127.0.0.0/8 must outlive it.
    await this.setRouteLocalnet(saved.routeLocalnetBefore);
    await mustRunNftJson(
      JSON.stringify({
        nftables: [
          { add: { table: { family: "ip", name: this.table } } },
          { delete: { table: { family: "ip", name: this.table } } },
        ],
      }),
    );
    if (await this.ownRouteExists()) {
      await mustRun("ip", [
        "route",
        "delete",
        this.serviceCidr,
        "dev",
        "lo",
        "proto",
        routeProtocol,
      ]);
    }
    this.saved = undefined;
    this.appliedText = undefined;
    this.appliedForwards = new Map();
    this.logger.debug({ table: this.table }, "service VIPs removed");
  }
}

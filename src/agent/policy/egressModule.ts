/**
 * Egress policy enforced on the node (REQ-061, ADR 0057), as an agent module: it owns the
 * nftables table `ip cloudless_egress` (apart from the service VIP table) and replaces it
 * whole, in one `nft -j -f FILE` transaction, whenever what it is compiled from changes —
 * the policies, the workloads with process replicas on this node (and their uids), the
 * services the node knows. The process driver asks it (`admit`) before it launches a
 * replica, so a replica never runs a moment before its workload's rules are in the kernel.
 *
 * Lifecycle: the table is applied at start (it replaces what a killed agent left), kept on
 * a plain stop or restart (the replicas keep running and stay confined), and removed when
 * the node leaves (its replicas are stopped). When nothing is to be enforced there is no
 * table at all.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { Counter, type Registry } from "prom-client";
import type { HeartbeatRequest, HeartbeatResponse } from "../../api/gen/cloudless/v1/node_pb.js";
import type { PolicySet } from "../../api/policy/evaluate.js";
import { ipv4ToNumber } from "../../api/policy/policy.js";
import type { Logger } from "../../observe/logger.js";
import type { AgentModule, AgentModuleStopOptions } from "../agentModule.js";
import {
  buildEgressRuleset,
  type CompiledEgress,
  compileEgress,
  type EgressContainerWorkload,
  type EgressExemption,
  type EgressService,
  type EgressWorkload,
  egressTableFor,
  removeEgressRuleset,
} from "./egressRules.js";

/** Deadline of one nft command: a hung netlink call must not hang the agent. */
export const nftTimeoutMs = 15_000;
/**
 * The process driver's uid table (dynamicUsers.ts) read back at most this large: one entry
 * per workload of a few hundred bytes; far larger is not a file the agent wrote.
 */
const maxUidTableBytes = 16 * 1024 * 1024;
/** Labels kept per workload (the spec's own limit is lower; this bounds a hostile message). */
const maxLabelsPerWorkload = 256;
/**
 * Container replicas this agent keeps an address for: a node runs hundreds of replicas, not
 * tens of thousands; beyond this a container start is refused rather than left unjudged.
 */
export const maxEgressContainers = 10_000;
/** The container address table (one short entry per container) read back at most this large. */
const maxContainerTableBytes = 4 * 1024 * 1024;
/** Where the container driver's addresses are kept across agent restarts (ADR 0057). */
export const containerTableFile = "egress-containers.json";

/** A container replica's workload and its address on the engine's bridge. */
interface ContainerEntry {
  workload: string;
  address: string;
}

/** What the module needs of the node's service networking. */
export interface EgressNetworkView {
  services: EgressService[];
  /** Always reachable: the node's name server (its VIP on port 53, its 127.0.0.1 listener). */
  exemptions: EgressExemption[];
}

/** Runs one nft JSON transaction; the real one spawns nft, tests in process may record. */
export type NftRunner = (rulesetJson: string) => Promise<void>;
/** `nft -j list table ip TABLE`'s output (the deny rules' counters are read from it). */
export type NftLister = (table: string) => Promise<string>;

/** Denied connections of one workload by one rule, since the agent started. */
export interface EgressDenials {
  workload: string;
  policy: string;
  rule: string;
  packets: number;
}

export interface EgressModuleOptions {
  /** This node's name: the table is named after it (egressTableFor). */
  nodeName: string;
  /** The agent's data dir: the process driver's uid table is there. */
  dataDir: string;
  logger: Logger;
  /** The current policy set; undefined while none is known. */
  policies: () => PolicySet | undefined;
  /** The services this node knows now; undefined without service networking. */
  network?: () => EgressNetworkView;
  /** Applies a transaction; default: `nft -j -f` through a private 0600 file. */
  runNft?: NftRunner;
  /** Lists the table; default: `nft -j list table ip TABLE`. */
  listTable?: NftLister;
  /** The agent's metrics registry: `cloudless_agent_egress_denied_total` registers there. */
  registry?: Registry;
  /** Why nftables cannot be programmed here (not Linux, not root, no nft), or undefined. */
  unavailableReason?: string;
}

export class EgressModule implements AgentModule {
  readonly name = "egress";
  /** Workload key (namespace/name) → its labels, from the coordinator's assignments. */
  private readonly labels = new Map<string, Record<string, string>>();
  /**
   * Container replica id → its workload and bridge address, from the container driver;
   * kept in the data dir so a restarted agent confines the containers that kept running.
   */
  private containers: Map<string, ContainerEntry> | undefined;
  private appliedText: string | undefined;
  private lastCompiled: CompiledEgress | undefined;
  private queue: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly runNft: NftRunner;
  private readonly listTable: NftLister;
  /**
   * Denied packets counted by tables this agent replaced, by "workload|policy/rule": a
   * replaced table starts its counters at 0, and the metric must not go down.
   */
  private carried = new Map<string, number>();
  /** The nftables table (family ip) this agent owns. */
  readonly table: string;

  constructor(private readonly options: EgressModuleOptions) {
    this.runNft = options.runNft ?? runNftJson;
    this.table = egressTableFor(options.nodeName);
    this.listTable =
      options.listTable ?? ((table) => execNft(["-j", "list", "table", "ip", table]));
    if (options.registry) {
      const self = this;
      new Counter({
        name: "cloudless_agent_egress_denied_total",
        help: "New connections of a workload's process replicas that an egress policy rule refused on this node (ADR 0057).",
        labelNames: ["workload", "policy", "rule"],
        registers: [options.registry],
        async collect() {
          const rows = await self.denials();
          this.reset();
          for (const row of rows) {
            this.inc({ workload: row.workload, policy: row.policy, rule: row.rule }, row.packets);
          }
        },
      });
    }
  }

  /**
   * Denied connections (first packets: only new connections reach the rules) by workload
   * and rule since this agent started: the live table's counters plus those of the tables
   * it replaced.
   */
  async denials(): Promise<EgressDenials[]> {
    const totals = new Map(this.carried);
    for (const [key, packets] of await this.liveCounters()) {
      totals.set(key, (totals.get(key) ?? 0) + packets);
    }
    return [...totals].map(([key, packets]) => {
      const [workload = "", source = ""] = key.split("|");
      const [policy = "", rule = ""] = source.split("/");
      return { workload, policy, rule, packets };
    });
  }

  /** The deny rules' counters of the table applied now, by "workload|policy/rule". */
  private async liveCounters(): Promise<Map<string, number>> {
    const counters = new Map<string, number>();
    const compiled = this.lastCompiled;
    if (!this.appliedText || !compiled || isEmpty(compiled)) return counters;
    const workloadOf = new Map(
      [...compiled.chains, ...compiled.containerChains].map((chain) => [
        chain.chain,
        chain.workload,
      ]),
    );
    let listed: string;
    try {
      listed = await this.listTable(this.table);
    } catch {
      return counters; // Gone (removed by hand): nothing to count.
    }
    try {
      const entries = (JSON.parse(listed) as { nftables?: { rule?: NftListedRule }[] }).nftables;
      for (const entry of entries ?? []) {
        const rule = entry.rule;
        const workload = rule ? workloadOf.get(rule.chain) : undefined;
        if (!rule || !workload || !rule.comment) continue;
        const counter = rule.expr?.find((e) => e.counter !== undefined)?.counter;
        if (!counter || typeof counter.packets !== "number") continue;
        const key = `${workload}|${rule.comment}`;
        counters.set(key, (counters.get(key) ?? 0) + counter.packets);
      }
    } catch (error) {
      this.options.logger.debug({ err: describe(error) }, "cannot read the egress counters");
    }
    return counters;
  }

  async start(): Promise<void> {
    if (this.options.unavailableReason) {
      this.options.logger.warn(
        { reason: this.options.unavailableReason },
        "egress policies cannot be enforced on this node; replicas of workloads with egress rules are not started",
      );
      return;
    }
    // Replaces (or removes) what a killed agent left, before any replica is started.
    await this.reapply().catch((error: unknown) =>
      this.options.logger.warn({ err: describe(error) }, "cannot apply the egress table"),
    );
  }

  /** Policies, assignments or services changed: the table is compiled again. */
  receive(message: HeartbeatResponse): void {
    if (this.stopped) return;
    if (message.assignments) {
      this.labels.clear();
      for (const assignment of message.assignments.replicas) {
        const key = `${assignment.namespace}/${assignment.workload}`;
        this.labels.set(key, labelsOf(assignment.specJson));
      }
    }
    if (message.assignments || message.policies || message.network) {
      void this.reapply().catch((error: unknown) =>
        this.options.logger.warn({ err: describe(error) }, "cannot apply the egress table"),
      );
    }
  }

  /**
   * Called by the process driver after it allocated `uid` for the workload and before it
   * launches the replica: resolves once the workload's rules are in the kernel. Rejects
   * (the replica is not started) when the workload has egress rules that cannot be
   * enforced here.
   */
  async admit(workloadKey: string, uid: number): Promise<void> {
    if (this.options.unavailableReason) {
      if (this.rulesConcern(workloadKey, uid)) {
        throw new Error(
          `egress policy applies to workload ${workloadKey} but cannot be enforced on this node (${this.options.unavailableReason})`,
        );
      }
      return;
    }
    await this.reapply();
  }

  /**
   * Called by the container driver once the replica's container has its address on the
   * bridge and before its process starts (ADR 0057, "Containers"): resolves once the rules
   * that judge that address are in the kernel. Rejects (the container is not started)
   * when the workload has egress rules that cannot be enforced: nftables unusable here,
   * or no IPv4 address to match.
   */
  async admitContainer(
    replicaId: string,
    workloadKey: string,
    address: string | undefined,
  ): Promise<void> {
    const concerned = this.rulesConcern(workloadKey, 0);
    if (this.options.unavailableReason) {
      if (concerned) {
        throw new Error(
          `egress policy applies to workload ${workloadKey} but cannot be enforced on this node (${this.options.unavailableReason})`,
        );
      }
      return;
    }
    const containers = await this.containerTable();
    if (address === undefined || ipv4ToNumber(address) === undefined) {
      containers.delete(replicaId);
      await this.saveContainers(containers);
      if (concerned) {
        throw new Error(
          `egress policy applies to workload ${workloadKey} but its container has no IPv4 address on a bridge to match (host network?)`,
        );
      }
      return;
    }
    if (!containers.has(replicaId) && containers.size >= maxEgressContainers) {
      throw new Error(
        `more than maxEgressContainers (${maxEgressContainers}) container replicas on this node; egress rules cannot judge another`,
      );
    }
    // An engine reuses a freed address: whichever replica had it before has stopped.
    for (const [id, entry] of containers) {
      if (entry.address === address && id !== replicaId) containers.delete(id);
    }
    containers.set(replicaId, { workload: workloadKey, address });
    await this.saveContainers(containers);
    await this.reapply();
  }

  /** The container of `replicaId` stopped or went: its address is no longer its workload's. */
  async releaseContainer(replicaId: string): Promise<void> {
    if (this.options.unavailableReason) return;
    const containers = await this.containerTable();
    if (!containers.delete(replicaId)) return;
    await this.saveContainers(containers);
    if (!this.stopped) await this.reapply();
  }

  private async containerTable(): Promise<Map<string, ContainerEntry>> {
    this.containers ??= await readContainerTable(this.options.dataDir, this.options.logger);
    return this.containers;
  }

  /** Written whole to a temporary name and renamed (0600: it maps addresses to workloads). */
  private async saveContainers(containers: Map<string, ContainerEntry>): Promise<void> {
    const file = path.join(this.options.dataDir, containerTableFile);
    const temporary = `${file}.${process.pid}.tmp`;
    const replicas = Object.fromEntries([...containers].sort(([a], [b]) => a.localeCompare(b)));
    await writeFile(temporary, `${JSON.stringify({ version: 1, replicas })}\n`, { mode: 0o600 });
    await rename(temporary, file);
  }

  /** The last table compiled (status, tests). */
  get compiled(): CompiledEgress | undefined {
    return this.lastCompiled;
  }

  statusMessages(): HeartbeatRequest[] {
    return [];
  }

  async stop(options: AgentModuleStopOptions): Promise<void> {
    this.stopped = true;
    await this.queue;
    if (!options.leaving || this.options.unavailableReason) return;
    try {
      await this.runNft(JSON.stringify(removeEgressRuleset(this.table)));
      this.appliedText = undefined;
    } catch (error) {
      this.options.logger.warn({ err: describe(error) }, "cannot remove the egress table");
    }
  }

  private rulesConcern(workloadKey: string, uid: number): boolean {
    const set = this.options.policies();
    if (!set) return false;
    const [namespace = "", name = ""] = workloadKey.split("/");
    const workload = { namespace, name, labels: this.labels.get(workloadKey) ?? {}, uid };
    return set.egressRulesFor(workload).rules.length > 0;
  }

  /** Compiles and applies after whatever apply is running; skips an unchanged table. */
  private reapply(): Promise<void> {
    const run = this.queue.then(() => this.applyNow());
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async applyNow(): Promise<void> {
    if (this.options.unavailableReason) return;
    const workloads = await this.workloads();
    const containers = this.containerWorkloads(await this.containerTable());
    const network = this.options.network?.() ?? { services: [], exemptions: [] };
    const set = this.options.policies();
    const compiled: CompiledEgress = set
      ? compileEgress({
          policies: set,
          workloads,
          containers,
          services: network.services,
          exemptions: network.exemptions,
        })
      : { chains: [], containerChains: [], exemptions: [], failedClosed: [] };
    // Nothing to enforce: no table at all (an operator's `nft list ruleset` stays short).
    const text = JSON.stringify(
      isEmpty(compiled)
        ? removeEgressRuleset(this.table)
        : buildEgressRuleset(compiled, this.table),
    );
    if (text === this.appliedText) {
      this.lastCompiled = compiled;
      return;
    }
    // The counters of the table about to be replaced, kept for the workloads and rules
    // still in the new one (those of removed ones go, so the series stay bounded).
    const live = await this.liveCounters();
    const keep = new Set(
      [...compiled.chains, ...compiled.containerChains].flatMap((chain) =>
        chain.rules.map((r) => `${chain.workload}|${r.source}`),
      ),
    );
    const carried = new Map<string, number>();
    for (const [key, packets] of [...this.carried, ...live]) {
      if (keep.has(key)) carried.set(key, (carried.get(key) ?? 0) + packets);
    }
    await this.runNft(text);
    // Read by liveCounters: which workload each chain of the kernel's table is.
    this.lastCompiled = compiled;
    this.carried = carried;
    this.appliedText = text;
    if (compiled.failedClosed.length > 0) {
      this.options.logger.warn(
        { rules: compiled.failedClosed },
        "egress rules whose condition reads the destination are enforced fail-closed on the node (deny as if true, allow never)",
      );
    }
    this.options.logger.info(
      {
        table: this.table,
        workloads: compiled.chains.length,
        containerWorkloads: compiled.containerChains.length,
        rules: [...compiled.chains, ...compiled.containerChains].reduce(
          (sum, chain) => sum + chain.rules.length,
          0,
        ),
      },
      "egress table applied",
    );
  }

  /** Workloads with container replicas here, with their containers' addresses. */
  private containerWorkloads(containers: Map<string, ContainerEntry>): EgressContainerWorkload[] {
    const addresses = new Map<string, string[]>();
    for (const entry of containers.values()) {
      const list = addresses.get(entry.workload) ?? [];
      list.push(entry.address);
      addresses.set(entry.workload, list);
    }
    return [...addresses].flatMap(([key, list]) => {
      const slash = key.indexOf("/");
      if (slash <= 0) return [];
      return [
        {
          namespace: key.slice(0, slash),
          name: key.slice(slash + 1),
          labels: this.labels.get(key) ?? {},
          addresses: list,
        },
      ];
    });
  }

  /**
   * Workloads with process replicas here, from the process driver's uid table: it is
   * written (synchronously) when a uid is allocated, before the driver calls admit().
   */
  private async workloads(): Promise<EgressWorkload[]> {
    const uids = await readUidTable(this.options.dataDir, this.options.logger);
    const workloads: EgressWorkload[] = [];
    for (const [key, uid] of uids) {
      const slash = key.indexOf("/");
      if (slash <= 0) continue;
      // Labels unknown (restarted, no coordinator yet): a condition about them fails closed.
      workloads.push({
        namespace: key.slice(0, slash),
        name: key.slice(slash + 1),
        labels: this.labels.get(key) ?? {},
        uid,
      });
    }
    return workloads;
  }
}

function isEmpty(compiled: CompiledEgress): boolean {
  return compiled.chains.length === 0 && compiled.containerChains.length === 0;
}

interface NftListedRule {
  chain: string;
  comment?: string;
  expr?: { counter?: { packets?: number } }[];
}

/** The metadata labels of an assignment's spec; {} when they cannot be read. */
function labelsOf(specJson: string): Record<string, string> {
  try {
    const labels = (JSON.parse(specJson) as { metadata?: { labels?: unknown } }).metadata?.labels;
    if (typeof labels !== "object" || labels === null) return {};
    const entries = Object.entries(labels as Record<string, unknown>)
      .filter((entry): entry is [string, string] => typeof entry[1] === "string")
      .slice(0, maxLabelsPerWorkload);
    return Object.fromEntries(entries);
  } catch {
    return {};
  }
}

/** workload key → uid from <dataDir>/replica-uids.json (dynamicUsers.ts); empty when absent. */
async function readUidTable(dataDir: string, logger: Logger): Promise<[string, number][]> {
  const file = path.join(dataDir, "replica-uids.json");
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return [];
  }
  if (text.length > maxUidTableBytes) {
    logger.warn({ file }, "the replica uid table is larger than expected; egress rules skip it");
    return [];
  }
  try {
    const workloads = (JSON.parse(text) as { workloads?: Record<string, { uid?: unknown }> })
      .workloads;
    if (typeof workloads !== "object" || workloads === null) return [];
    return Object.entries(workloads).flatMap(([key, value]) =>
      typeof value?.uid === "number" ? [[key, value.uid] as [string, number]] : [],
    );
  } catch {
    return [];
  }
}

/** replica id → workload and address from <dataDir>/egress-containers.json; empty when absent. */
async function readContainerTable(
  dataDir: string,
  logger: Logger,
): Promise<Map<string, ContainerEntry>> {
  const table = new Map<string, ContainerEntry>();
  const file = path.join(dataDir, containerTableFile);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return table;
  }
  if (text.length > maxContainerTableBytes) {
    logger.warn({ file }, "the egress container table is larger than expected; it is ignored");
    return table;
  }
  try {
    const replicas = (JSON.parse(text) as { replicas?: Record<string, Partial<ContainerEntry>> })
      .replicas;
    for (const [id, entry] of Object.entries(replicas ?? {}).slice(0, maxEgressContainers)) {
      if (typeof entry?.workload === "string" && typeof entry.address === "string") {
        table.set(id, { workload: entry.workload, address: entry.address });
      }
    }
  } catch {
    logger.warn({ file }, "the egress container table cannot be read; it is ignored");
  }
  return table;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Why this host cannot run the egress table, or undefined. */
export async function egressUnavailableReason(): Promise<string | undefined> {
  if (process.platform !== "linux") return "egress enforcement needs Linux nftables";
  if (process.getuid?.() !== 0) return "egress enforcement needs root (nftables)";
  try {
    await execNft(["--version"]);
  } catch (error) {
    return `nft is not usable (${describe(error)}); install nftables`;
  }
  return undefined;
}

function execNft(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      "nft",
      args,
      { timeout: nftTimeoutMs, killSignal: "SIGKILL" },
      (error, stdout, stderr) => {
        if (error) {
          const line =
            String(stderr)
              .split("\n")
              .find((l) => l.trim() !== "") ?? error.message;
          reject(
            new Error(`nft ${args.slice(0, 3).join(" ")} failed: ${line.trim().slice(0, 300)}`),
          );
          return;
        }
        resolve(String(stdout));
      },
    );
  });
}

/**
 * nft reads JSON only from a named file (`-f -` opens /dev/stdin, which fails on the socket
 * Node gives a child, ADR 0047): a 0600 file in a private directory, removed after.
 */
export async function runNftJson(rulesetJson: string): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), "cloudless-egress-"));
  try {
    const file = path.join(dir, "ruleset.json");
    await writeFile(file, rulesetJson, { mode: 0o600 });
    await execNft(["-j", "-f", file]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

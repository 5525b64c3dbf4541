/**
 * Egress policy compiled into nftables (REQ-061, ADR 0057): pure, no I/O. From the policy
 * set, the workloads whose process replicas run on this node (each with the dynamic uid
 * its replicas run as, ADR 0050) and the services the node knows (name → VIP and ports),
 * it builds one table that judges every new connection a replica opens the way
 * `PolicySet.evaluateEgress` does: per workload, its egress rules in the decider's order,
 * the first that matches decides, no match is allowed.
 *
 * The table (family ip) has one base chain, `output` (hook output, priority -150: after
 * conntrack at -200, so `ct state` is known, and before the service VIP table's DNAT at
 * -100, so a connection to a service is still addressed to its VIP:port, not to the
 * node's proxy on 127.0.0.1). It accepts what is not a new connection (replies of a
 * replica that serves, connections already judged), then the node's name server, then
 * jumps by `meta skuid` to the workload's chain. A workload chain's rules accept or jump
 * to `deny`, which counts and rejects (tcp reset, otherwise icmp port-unreachable): a
 * denied connect() fails at once with ECONNREFUSED instead of timing out.
 */
import { createHash } from "node:crypto";
import type { PolicySet } from "../../api/policy/evaluate.js";
import { ipv4ToNumber } from "../../api/policy/policy.js";

/** The prefix of the table an agent owns for egress, apart from the service VIP table. */
export const egressTableName = "cloudless_egress";

/**
 * The table of the agent of `nodeName`: `cloudless_egress_` and 12 hex digits of the name's
 * SHA-256 (nft names stop at 32 characters). One per agent, so that agents sharing a host
 * (test clusters) never replace or delete each other's, and a restarted agent finds its own.
 */
export function egressTableFor(nodeName: string): string {
  return `${egressTableName}_${createHash("sha256").update(nodeName).digest("hex").slice(0, 12)}`;
}
/** After conntrack (-200), before the VIP table's DNAT (-100): the mangle priority. */
export const egressHookPriority = -150;
/**
 * Workloads one table carries: a node runs far fewer workloads than this (each has a uid
 * of the replica uid range, at most 65,536, but a node's replicas are in the hundreds).
 */
export const maxEgressWorkloads = 4096;
/**
 * nft rules one table carries: rules × patterns × service ports expand; 64 rules of 64
 * patterns for one workload is already 4,096. The whole table is one transaction; beyond
 * this, the agent keeps the previous table and says why.
 */
export const maxEgressRules = 100_000;

export interface EgressWorkload {
  namespace: string;
  name: string;
  labels: Readonly<Record<string, string>>;
  /** The uid its process replicas run as on this node. */
  uid: number;
}

export interface EgressService {
  namespace: string;
  name: string;
  /** Its VIP; empty when the cluster has VIPs off (then no rule can name it, see ADR 0057). */
  vip: string;
  ports: readonly { port: number; protocol: string }[];
}

/** A destination every replica may reach whatever the policies say (the node's DNS). */
export interface EgressExemption {
  ip: string;
  port: number;
  protocol: "tcp" | "udp";
}

/**
 * A workload with container replicas here: the addresses its running containers have on
 * the engine's bridge (ADR 0057, "Containers"). A container has no socket uid on the host.
 */
export interface EgressContainerWorkload {
  namespace: string;
  name: string;
  labels: Readonly<Record<string, string>>;
  addresses: readonly string[];
}

export interface EgressInput {
  policies: PolicySet;
  workloads: readonly EgressWorkload[];
  /** Workloads with container replicas on this node, by address. */
  containers?: readonly EgressContainerWorkload[];
  services: readonly EgressService[];
  exemptions: readonly EgressExemption[];
}

/** One nft rule's match: an address range and, optionally, a port of tcp/udp. */
export interface EgressMatch {
  /** The network as an unsigned 32-bit number; with prefixBits 0, any address. */
  network: number;
  prefixBits: number;
  port?: number;
  /** With a port: the protocols it is matched for. */
  protocols?: readonly ("tcp" | "udp")[];
}

export interface CompiledEgressRule {
  verdict: "accept" | "deny";
  match: EgressMatch;
  /** `policy/rule`, the rule's comment in the table (what `nft list` shows the operator). */
  source: string;
}

export interface CompiledWorkloadChain {
  chain: string;
  uid: number;
  workload: string;
  rules: CompiledEgressRule[];
}

export interface CompiledContainerChain {
  chain: string;
  /** The source addresses (its containers on the bridge) that jump to the chain. */
  addresses: string[];
  workload: string;
  rules: CompiledEgressRule[];
}

export interface CompiledEgress {
  chains: CompiledWorkloadChain[];
  /** Judged in prerouting (before the VIP DNAT) by source address. */
  containerChains: CompiledContainerChain[];
  exemptions: EgressExemption[];
  /** Rules whose condition reads the destination: judged fail-closed (ADR 0057). */
  failedClosed: string[];
}

export class EgressCompileError extends Error {}

/** The rules per workload; throws EgressCompileError (one line) beyond the limits. */
export function compileEgress(input: EgressInput): CompiledEgress {
  const containers = input.containers ?? [];
  if (input.workloads.length + containers.length > maxEgressWorkloads) {
    throw new EgressCompileError(
      `${input.workloads.length + containers.length} workloads on this node exceed maxEgressWorkloads (${maxEgressWorkloads})`,
    );
  }
  const byUid = [...input.workloads].sort((a, b) => a.uid - b.uid);
  const chains: CompiledWorkloadChain[] = [];
  const containerChains: CompiledContainerChain[] = [];
  const failedClosed = new Set<string>();
  let total = 0;
  const count = (rules: CompiledEgressRule[]): void => {
    total += rules.length;
    if (total > maxEgressRules) {
      throw new EgressCompileError(
        `the egress policies expand to more than maxEgressRules (${maxEgressRules}) nft rules on this node; use CIDRs instead of long lists`,
      );
    }
  };
  const seenUids = new Set<number>();
  for (const workload of byUid) {
    // Two workloads never share a uid (dynamicUsers.ts); a stale entry must not widen one.
    if (seenUids.has(workload.uid)) continue;
    seenUids.add(workload.uid);
    const rules = rulesFor(input, workload, failedClosed);
    count(rules);
    // A workload no rule concerns needs no chain: no match is allowed.
    if (rules.length === 0) continue;
    chains.push({
      chain: `wl_${workload.uid}`,
      uid: workload.uid,
      workload: `${workload.namespace}/${workload.name}`,
      rules,
    });
  }
  // Containers by their address on the engine's bridge. One address is one container at a
  // time: the last workload given an address keeps it (an engine reuses a freed address).
  const owner = new Map<string, string>();
  for (const container of containers) {
    for (const address of container.addresses) {
      owner.set(address, `${container.namespace}/${container.name}`);
    }
  }
  const byKey = [...containers].sort((a, b) =>
    `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`),
  );
  const seenKeys = new Set<string>();
  for (const container of byKey) {
    const key = `${container.namespace}/${container.name}`;
    if (seenKeys.has(key)) continue;
    seenKeys.add(key);
    const addresses = [...new Set(container.addresses)]
      .filter((address) => owner.get(address) === key && ipv4ToNumber(address) !== undefined)
      .sort();
    if (addresses.length === 0) continue;
    const rules = rulesFor(input, container, failedClosed);
    count(rules);
    if (rules.length === 0) continue;
    containerChains.push({
      chain: `wc_${containerChains.length}`,
      addresses,
      workload: key,
      rules,
    });
  }
  return {
    chains,
    containerChains,
    exemptions: [...input.exemptions],
    failedClosed: [...failedClosed].sort(),
  };
}

/** A workload's egress rules, in the decider's order, as nft matches. */
function rulesFor(
  input: EgressInput,
  workload: { namespace: string; name: string; labels: Readonly<Record<string, string>> },
  failedClosed: Set<string>,
): CompiledEgressRule[] {
  const rules: CompiledEgressRule[] = [];
  const applying = input.policies.egressRulesFor(workload);
  for (const source of applying.failedClosed) failedClosed.add(source);
  for (const view of applying.rules) {
    const source = `${view.policy}/${view.rule}`;
    const verdict = view.effect === "allow" ? "accept" : "deny";
    const matches: EgressMatch[] =
      view.patterns.length === 0
        ? [{ network: 0, prefixBits: 0 }]
        : view.patterns.flatMap((pattern) => {
            if (pattern.kind === "any")
              return [withPort({ network: 0, prefixBits: 0 }, pattern.port)];
            if (pattern.kind === "cidr") {
              const bits = pattern.prefixBits ?? 32;
              return [
                withPort(
                  { network: networkOf(pattern.network ?? 0, bits), prefixBits: bits },
                  pattern.port,
                ),
              ];
            }
            const namespace = pattern.namespace ?? workload.namespace;
            return input.services.flatMap((service) => {
              if (service.name !== pattern.service || service.namespace !== namespace) return [];
              const vip = ipv4ToNumber(service.vip);
              if (vip === undefined) return [];
              return service.ports
                .filter((p) => pattern.port === undefined || p.port === pattern.port)
                .map((p) => ({
                  network: vip,
                  prefixBits: 32,
                  port: p.port,
                  protocols: [p.protocol === "udp" ? ("udp" as const) : ("tcp" as const)],
                }));
            });
          });
    for (const match of matches) rules.push({ verdict, match, source });
  }
  return rules;
}

function withPort(match: EgressMatch, port: number | undefined): EgressMatch {
  return port === undefined ? match : { ...match, port, protocols: ["tcp", "udp"] };
}

function networkOf(address: number, bits: number): number {
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  return (address & mask) >>> 0;
}

export function formatIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => (value >>> shift) & 0xff).join(".");
}

type NftCommand = Record<string, unknown>;

function matchExpressions(match: EgressMatch): NftCommand[] {
  const expressions: NftCommand[] = [];
  if (match.prefixBits > 0) {
    const address = formatIpv4(match.network);
    expressions.push({
      match: {
        op: "==",
        left: { payload: { protocol: "ip", field: "daddr" } },
        right:
          match.prefixBits === 32 ? address : { prefix: { addr: address, len: match.prefixBits } },
      },
    });
  }
  if (match.port !== undefined) {
    const protocols = match.protocols ?? ["tcp", "udp"];
    expressions.push({
      match: {
        op: "==",
        left: { meta: { key: "l4proto" } },
        right: protocols.length === 1 ? protocols[0] : { set: [...protocols] },
      },
    });
    expressions.push({
      match: {
        op: "==",
        left: { payload: { protocol: "th", field: "dport" } },
        right: match.port,
      },
    });
  }
  return expressions;
}

/**
 * The nft JSON transaction that replaces the egress table with `compiled` (add, delete,
 * add: it never fails on the state it starts from, as the VIP table's).
 */
export function buildEgressRuleset(compiled: CompiledEgress, table = egressTableName): unknown {
  const family = "ip";
  const rule = (chain: string, expr: NftCommand[], comment?: string): NftCommand => ({
    add: { rule: { family, table, chain, expr, ...(comment ? { comment } : {}) } },
  });
  const commands: NftCommand[] = [
    { add: { table: { family, name: table } } },
    { delete: { table: { family, name: table } } },
    { add: { table: { family, name: table } } },
    {
      add: {
        chain: {
          family,
          table,
          name: "output",
          type: "filter",
          hook: "output",
          prio: egressHookPriority,
          policy: "accept",
        },
      },
    },
    { add: { chain: { family, table, name: "deny" } } },
    rule("deny", [
      { match: { op: "==", left: { meta: { key: "l4proto" } }, right: "tcp" } },
      { counter: null },
      { reject: { type: "tcp reset" } },
    ]),
    rule("deny", [{ counter: null }, { reject: { type: "icmp", expr: "port-unreachable" } }]),
    // Only new connections are judged: a replica's replies to its own clients and the
    // connections it opened before a policy changed go on (ADR 0057).
    rule("output", [
      { match: { op: "in", left: { ct: { key: "state" } }, right: ["established", "related"] } },
      { accept: null },
    ]),
  ];
  for (const exemption of compiled.exemptions) {
    commands.push(rule("output", exemptionRule(exemption), "the node's name server"));
  }
  for (const chain of compiled.chains) {
    commands.push({ add: { chain: { family, table, name: chain.chain } } });
    commands.push(
      rule(
        "output",
        [
          { match: { op: "==", left: { meta: { key: "skuid" } }, right: chain.uid } },
          { jump: { target: chain.chain } },
        ],
        `workload ${chain.workload}`,
      ),
    );
    commands.push(...workloadRules(table, chain.chain, chain.rules));
  }
  if (compiled.containerChains.length > 0) {
    // Containers (ADR 0057, "Containers"): their connections come in from the bridge and
    // are judged in prerouting at the same priority, before the VIP table's DNAT (-100):
    // a connection to a service is still addressed to the VIP:port it dialled, and a
    // reject answers from that address, so the container's connect() fails at once (after
    // the DNAT, in input, the kernel's reset would carry the proxy's address and the
    // container would wait for a timeout; measured).
    commands.push({
      add: {
        chain: {
          family,
          table,
          name: "prerouting",
          type: "filter",
          hook: "prerouting",
          prio: egressHookPriority,
          policy: "accept",
        },
      },
    });
    commands.push(
      rule("prerouting", [
        { match: { op: "in", left: { ct: { key: "state" } }, right: ["established", "related"] } },
        { accept: null },
      ]),
    );
    for (const exemption of compiled.exemptions) {
      commands.push(rule("prerouting", exemptionRule(exemption), "the node's name server"));
    }
    for (const chain of compiled.containerChains) {
      commands.push({ add: { chain: { family, table, name: chain.chain } } });
      commands.push(
        rule(
          "prerouting",
          [
            {
              match: {
                op: "==",
                left: { payload: { protocol: "ip", field: "saddr" } },
                right:
                  chain.addresses.length === 1 ? chain.addresses[0] : { set: [...chain.addresses] },
              },
            },
            { jump: { target: chain.chain } },
          ],
          `workload ${chain.workload}`,
        ),
      );
      commands.push(...workloadRules(table, chain.chain, chain.rules));
    }
  }
  return { nftables: commands };
}

/** Accepts a connection to the node's name server (its VIP or 127.0.0.1 and port). */
function exemptionRule(exemption: EgressExemption): NftCommand[] {
  return [
    ...matchExpressions({
      network: ipv4ToNumber(exemption.ip) ?? 0,
      prefixBits: 32,
      port: exemption.port,
      protocols: [exemption.protocol],
    }),
    { accept: null },
  ];
}

function workloadRules(
  table: string,
  chain: string,
  rules: readonly CompiledEgressRule[],
): NftCommand[] {
  return rules.map((compiledRule) => ({
    add: {
      rule: {
        family: "ip",
        table,
        chain,
        expr: [
          ...matchExpressions(compiledRule.match),
          // A deny rule counts its own packets: the agent's denied-connections metric
          // is read from these counters, by workload and rule.
          ...(compiledRule.verdict === "accept"
            ? [{ accept: null }]
            : [{ counter: null }, { jump: { target: "deny" } }]),
        ],
        comment: compiledRule.source,
      },
    },
  }));
}

/** The transaction that removes the egress table (idempotent). */
export function removeEgressRuleset(table = egressTableName): unknown {
  return {
    nftables: [
      { add: { table: { family: "ip", name: table } } },
      { delete: { table: { family: "ip", name: table } } },
    ],
  };
}

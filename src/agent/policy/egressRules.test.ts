import { describe, expect, it } from "vitest";
import { type EgressDestination, PolicySet } from "../../api/policy/evaluate.js";
import { decodePolicy, ipv4ToNumber, type Policy } from "../../api/policy/policy.js";
import { seededRng } from "../../lib/rng.js";
import {
  buildEgressRuleset,
  compileEgress,
  EgressCompileError,
  type EgressContainerWorkload,
  type EgressService,
  type EgressWorkload,
  egressTableName,
  maxEgressWorkloads,
} from "./egressRules.js";

function policy(name: string, rules: unknown[]): Policy {
  const decoded = decodePolicy({
    apiVersion: "cloudless/v1",
    kind: "Policy",
    metadata: { name },
    spec: { rules },
  });
  if (!decoded.ok) throw new Error(decoded.errors.join("; "));
  return decoded.policy;
}

const web: EgressWorkload = {
  namespace: "default",
  name: "web",
  labels: { team: "a" },
  uid: 61184,
};
const batch: EgressWorkload = { namespace: "jobs", name: "batch", labels: {}, uid: 61185 };
const api: EgressService = {
  namespace: "default",
  name: "api",
  vip: "10.96.0.20",
  ports: [
    { port: 80, protocol: "tcp" },
    { port: 8443, protocol: "tcp" },
  ],
};
const dnsExemption = { ip: "10.96.0.10", port: 53, protocol: "udp" as const };

type Expr = Record<string, unknown>;
interface NftRule {
  chain: string;
  expr: Expr[];
  comment?: string;
}
interface Packet {
  uid: number;
  /** A container's address on the bridge (judged in prerouting); absent for a process. */
  saddr?: string;
  daddr: string;
  protocol: "tcp" | "udp";
  dport: number;
}

/**
 * A tiny interpreter of the nft JSON the compiler emits (only the expressions it uses): the
 * verdict the kernel would give a new connection. An expression it does not know fails
 * the test, so the JSON cannot drift from what is interpreted here.
 */
function verdictOf(ruleset: unknown, packet: Packet): "accept" | "reject" {
  const commands = (ruleset as { nftables: Record<string, Record<string, unknown>>[] }).nftables;
  const rules: NftRule[] = commands.flatMap((c) =>
    c.add?.rule ? [c.add.rule as unknown as NftRule] : [],
  );
  const value = (left: Expr): unknown => {
    const payload = left.payload as { protocol: string; field: string } | undefined;
    if (payload?.protocol === "ip" && payload.field === "daddr") return packet.daddr;
    if (payload?.protocol === "ip" && payload.field === "saddr") return packet.saddr;
    if (payload?.protocol === "th" && payload.field === "dport") return packet.dport;
    const meta = left.meta as { key: string } | undefined;
    if (meta?.key === "l4proto") return packet.protocol;
    if (meta?.key === "skuid") return packet.uid;
    const ct = left.ct as { key: string } | undefined;
    if (ct?.key === "state") return "new";
    throw new Error(`unknown left side ${JSON.stringify(left)}`);
  };
  const holds = (match: { op: string; left: Expr; right: unknown }): boolean => {
    const actual = value(match.left);
    const right = match.right as unknown;
    if (Array.isArray(right)) return match.op === "in" && right.includes(actual);
    if (typeof right === "object" && right !== null && "set" in right) {
      return (right.set as unknown[]).includes(actual);
    }
    if (typeof right === "object" && right !== null && "prefix" in right) {
      const { addr, len } = (right as { prefix: { addr: string; len: number } }).prefix;
      const mask = len === 0 ? 0 : (~0 << (32 - len)) >>> 0;
      const a = ipv4ToNumber(String(actual)) ?? -1;
      return (a & mask) >>> 0 === ((ipv4ToNumber(addr) ?? 0) & mask) >>> 0;
    }
    const equal = actual === right;
    return match.op === "!=" ? !equal : equal;
  };
  const run = (chain: string, depth: number): "accept" | "reject" | undefined => {
    if (depth > 4) throw new Error("jumps too deep");
    for (const rule of rules.filter((r) => r.chain === chain)) {
      let matched = true;
      for (const expr of rule.expr) {
        if ("match" in expr) {
          if (!holds(expr.match as never)) {
            matched = false;
            break;
          }
        } else if ("counter" in expr) {
          // counts; no verdict
        } else if ("accept" in expr) return "accept";
        else if ("reject" in expr) return "reject";
        else if ("jump" in expr) {
          const verdict = run((expr.jump as { target: string }).target, depth + 1);
          if (verdict) return verdict;
        } else throw new Error(`unknown expression ${JSON.stringify(expr)}`);
      }
      if (!matched) continue;
    }
    return undefined;
  };
  // A process's connection leaves through output; a container's comes in from the bridge.
  return run(packet.saddr === undefined ? "output" : "prerouting", 0) ?? "accept";
}

describe("egress rules compiled for nftables (REQ-061)", () => {
  it("REQ-061: an allowlist compiles to the service's VIP ports and a CIDR, then a catch-all deny, in order", () => {
    const set = new PolicySet([
      policy("egress", [
        {
          name: "to-api",
          subject: "egress",
          effect: "allow",
          match: ["service:api", "10.1.0.0/16:443"],
        },
        { name: "rest", subject: "egress", effect: "deny", match: ["*"] },
      ]),
    ]);
    const compiled = compileEgress({
      policies: set,
      workloads: [web],
      services: [api],
      exemptions: [dnsExemption],
    });
    expect(compiled.chains).toEqual([
      {
        chain: "wl_61184",
        uid: 61184,
        workload: "default/web",
        rules: [
          {
            verdict: "accept",
            match: {
              network: ipv4ToNumber("10.96.0.20"),
              prefixBits: 32,
              port: 80,
              protocols: ["tcp"],
            },
            source: "egress/to-api",
          },
          {
            verdict: "accept",
            match: {
              network: ipv4ToNumber("10.96.0.20"),
              prefixBits: 32,
              port: 8443,
              protocols: ["tcp"],
            },
            source: "egress/to-api",
          },
          {
            verdict: "accept",
            match: {
              network: ipv4ToNumber("10.1.0.0"),
              prefixBits: 16,
              port: 443,
              protocols: ["tcp", "udp"],
            },
            source: "egress/to-api",
          },
          { verdict: "deny", match: { network: 0, prefixBits: 0 }, source: "egress/rest" },
        ],
      },
    ]);
    const ruleset = buildEgressRuleset(compiled) as { nftables: Record<string, unknown>[] };
    // Replaced whole: add, delete, add the table, then the hook before the VIP table's DNAT.
    expect(ruleset.nftables.slice(0, 4)).toEqual([
      { add: { table: { family: "ip", name: egressTableName } } },
      { delete: { table: { family: "ip", name: egressTableName } } },
      { add: { table: { family: "ip", name: egressTableName } } },
      {
        add: {
          chain: {
            family: "ip",
            table: egressTableName,
            name: "output",
            type: "filter",
            hook: "output",
            prio: -150,
            policy: "accept",
          },
        },
      },
    ]);
    const rules = ruleset.nftables.flatMap((c) => {
      const rule = (c.add as { rule?: { chain: string; expr: unknown[]; comment?: string } })?.rule;
      return rule ? [rule] : [];
    });
    expect(
      rules.find((r) => r.chain === "output" && r.comment === "workload default/web")?.expr,
    ).toEqual([
      { match: { op: "==", left: { meta: { key: "skuid" } }, right: 61184 } },
      { jump: { target: "wl_61184" } },
    ]);
    expect(rules.filter((r) => r.chain === "wl_61184").map((r) => r.expr)).toEqual([
      [
        {
          match: {
            op: "==",
            left: { payload: { protocol: "ip", field: "daddr" } },
            right: "10.96.0.20",
          },
        },
        { match: { op: "==", left: { meta: { key: "l4proto" } }, right: "tcp" } },
        { match: { op: "==", left: { payload: { protocol: "th", field: "dport" } }, right: 80 } },
        { accept: null },
      ],
      [
        {
          match: {
            op: "==",
            left: { payload: { protocol: "ip", field: "daddr" } },
            right: "10.96.0.20",
          },
        },
        { match: { op: "==", left: { meta: { key: "l4proto" } }, right: "tcp" } },
        { match: { op: "==", left: { payload: { protocol: "th", field: "dport" } }, right: 8443 } },
        { accept: null },
      ],
      [
        {
          match: {
            op: "==",
            left: { payload: { protocol: "ip", field: "daddr" } },
            right: { prefix: { addr: "10.1.0.0", len: 16 } },
          },
        },
        { match: { op: "==", left: { meta: { key: "l4proto" } }, right: { set: ["tcp", "udp"] } } },
        { match: { op: "==", left: { payload: { protocol: "th", field: "dport" } }, right: 443 } },
        { accept: null },
      ],
      [{ counter: null }, { jump: { target: "deny" } }],
    ]);
    // The node's name server stays reachable before any workload's rules.
    const dns = { uid: 61184, daddr: "10.96.0.10", protocol: "udp" as const, dport: 53 };
    expect(verdictOf(ruleset, dns)).toBe("accept");
    expect(verdictOf(ruleset, { ...dns, daddr: "10.96.0.20", protocol: "tcp", dport: 80 })).toBe(
      "accept",
    );
    expect(verdictOf(ruleset, { ...dns, daddr: "8.8.8.8", protocol: "tcp", dport: 443 })).toBe(
      "reject",
    );
    // Another uid (the agent, another workload) is not judged by web's rules.
    expect(
      verdictOf(ruleset, { ...dns, uid: 0, daddr: "8.8.8.8", protocol: "tcp", dport: 443 }),
    ).toBe("accept");
  });

  it("REQ-061: namespaces and workload conditions are decided per workload at compile time; a workload no rule concerns gets no chain", () => {
    const set = new PolicySet([
      policy("a-team", [
        {
          name: "team-a-out",
          subject: "egress",
          effect: "deny",
          match: ["192.0.2.0/24"],
          condition: 'workload.labels.team == "a"',
        },
      ]),
      policy("b-jobs", [
        {
          name: "jobs-no-db",
          subject: "egress",
          effect: "deny",
          match: ["service:db.data:5432"],
          namespaces: ["jobs"],
        },
      ]),
    ]);
    const db: EgressService = {
      namespace: "data",
      name: "db",
      vip: "10.96.0.30",
      ports: [{ port: 5432, protocol: "tcp" }],
    };
    const other: EgressWorkload = { namespace: "default", name: "other", labels: {}, uid: 61186 };
    const compiled = compileEgress({
      policies: set,
      workloads: [batch, web, other],
      services: [api, db],
      exemptions: [],
    });
    expect(compiled.chains.map((c) => [c.workload, c.rules.map((r) => r.source)])).toEqual([
      ["default/web", ["a-team/team-a-out"]],
      // batch has no team label: the condition fails to evaluate and a deny rule fails closed.
      ["jobs/batch", ["a-team/team-a-out", "b-jobs/jobs-no-db"]],
      ["default/other", ["a-team/team-a-out"]],
    ]);
  });

  it("REQ-061: a condition that reads the destination is judged fail-closed for the whole rule, and said so", () => {
    const set = new PolicySet([
      policy("p", [
        {
          name: "allow-https",
          subject: "egress",
          effect: "allow",
          match: ["*"],
          condition: "destination.port == 443",
        },
        {
          name: "deny-big-ports",
          subject: "egress",
          effect: "deny",
          match: ["10.0.0.0/8"],
          condition: "destination.port > 1024",
        },
      ]),
    ]);
    const compiled = compileEgress({
      policies: set,
      workloads: [web],
      services: [],
      exemptions: [],
    });
    expect(compiled.chains[0]?.rules.map((r) => [r.source, r.verdict])).toEqual([
      ["p/deny-big-ports", "deny"],
    ]);
    expect(compiled.failedClosed).toEqual(["p/allow-https", "p/deny-big-ports"]);
  });

  it("REQ-061: a service pattern for a service this node does not know (yet) or one without a VIP compiles to nothing", () => {
    const set = new PolicySet([
      policy("p", [
        {
          name: "no-api",
          subject: "egress",
          effect: "deny",
          match: ["service:api", "service:ghost"],
        },
      ]),
    ]);
    const compiled = compileEgress({
      policies: set,
      workloads: [web],
      services: [{ ...api, vip: "" }],
      exemptions: [],
    });
    expect(compiled.chains).toEqual([]);
  });

  it("REQ-061: more workloads than maxEgressWorkloads is one line, not a table", () => {
    const workloads = Array.from({ length: maxEgressWorkloads + 1 }, (_, i) => ({
      ...web,
      name: `w${i}`,
      uid: 1000 + i,
    }));
    expect(() =>
      compileEgress({ policies: new PolicySet([]), workloads, services: [], exemptions: [] }),
    ).toThrow(EgressCompileError);
  });

  it("REQ-061: a container workload is judged in prerouting before the VIP DNAT, by its addresses; an address given to another workload since is the other's", () => {
    const set = new PolicySet([
      policy("egress", [
        { name: "api-only", subject: "egress", effect: "allow", match: ["service:api:80"] },
        { name: "rest", subject: "egress", effect: "deny" },
      ]),
    ]);
    const compiled = compileEgress({
      policies: set,
      workloads: [],
      containers: [
        { namespace: "default", name: "web", labels: {}, addresses: ["10.88.0.5", "10.88.0.6"] },
        // 10.88.0.6 was freed by web's container and given to batch's since.
        { namespace: "jobs", name: "batch", labels: {}, addresses: ["10.88.0.6"] },
        // No address (host network, not started): nothing to match, no chain.
        { namespace: "jobs", name: "idle", labels: {}, addresses: [] },
      ],
      services: [api],
      exemptions: [dnsExemption],
    });
    expect(compiled.chains).toEqual([]);
    expect(
      compiled.containerChains.map((c) => ({ workload: c.workload, addresses: c.addresses })),
    ).toEqual([
      { workload: "default/web", addresses: ["10.88.0.5"] },
      { workload: "jobs/batch", addresses: ["10.88.0.6"] },
    ]);
    const ruleset = buildEgressRuleset(compiled) as {
      nftables: Record<string, Record<string, unknown>>[];
    };
    const prerouting = ruleset.nftables.find(
      (c) => (c.add?.chain as { name?: string } | undefined)?.name === "prerouting",
    );
    // Same priority as output: after conntrack (-200), before the VIP DNAT (-100).
    expect(prerouting?.add?.chain).toMatchObject({
      type: "filter",
      hook: "prerouting",
      prio: -150,
      policy: "accept",
    });
    // No process workload: no output chain jumps by uid.
    expect(JSON.stringify(ruleset)).not.toContain("skuid");
    const jumps = ruleset.nftables
      .map((c) => c.add?.rule as NftRule | undefined)
      .filter(
        (r): r is NftRule =>
          r?.chain === "prerouting" && r.comment?.startsWith("workload") === true,
      );
    expect(jumps.map((r) => r.expr)).toEqual([
      [
        {
          match: {
            op: "==",
            left: { payload: { protocol: "ip", field: "saddr" } },
            right: "10.88.0.5",
          },
        },
        { jump: { target: "wc_0" } },
      ],
      [
        {
          match: {
            op: "==",
            left: { payload: { protocol: "ip", field: "saddr" } },
            right: "10.88.0.6",
          },
        },
        { jump: { target: "wc_1" } },
      ],
    ]);
    const from = (saddr: string, daddr: string, dport: number, protocol: "tcp" | "udp" = "tcp") =>
      verdictOf(ruleset, { uid: 0, saddr, daddr, protocol, dport });
    expect(from("10.88.0.5", "10.96.0.20", 80)).toBe("accept");
    expect(from("10.88.0.5", "10.96.0.20", 8443)).toBe("reject");
    expect(from("10.88.0.5", "8.8.8.8", 443)).toBe("reject");
    // The name server is reachable whatever the policy says.
    expect(from("10.88.0.5", "10.96.0.10", 53, "udp")).toBe("accept");
    // Not a container of a workload with rules (another engine's, the host's): untouched.
    expect(from("10.88.0.99", "8.8.8.8", 443)).toBe("accept");
  });

  it("REQ-061: for random policies and destinations the compiled rules' verdict equals evaluateEgress", () => {
    const rng = seededRng(61);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(rng.next() * items.length)] as T;
    const services: EgressService[] = [
      api,
      {
        namespace: "default",
        name: "cache",
        vip: "10.96.0.21",
        ports: [{ port: 6379, protocol: "tcp" }],
      },
      {
        namespace: "data",
        name: "db",
        vip: "10.96.1.30",
        ports: [
          { port: 5432, protocol: "tcp" },
          { port: 80, protocol: "tcp" },
        ],
      },
    ];
    const workloads: EgressWorkload[] = [
      web,
      batch,
      { namespace: "data", name: "etl", labels: { team: "b" }, uid: 61190 },
    ];
    // The same workloads with container replicas (two addresses for web): judged by source.
    const containers: EgressContainerWorkload[] = workloads.map((w, index) => ({
      namespace: w.namespace,
      name: w.name,
      labels: w.labels,
      addresses: index === 0 ? ["10.88.0.10", "10.88.0.11"] : [`10.88.0.${20 + index}`],
    }));
    const patterns = [
      "*",
      "*:80",
      "*:443",
      "service:api",
      "service:api:80",
      "service:api.default:8443",
      "service:db.data",
      "service:db.data:80",
      "service:cache",
      "10.0.0.0/8",
      "10.96.0.0/16:80",
      "10.96.0.20",
      "10.96.1.0/24:5432",
      "192.0.2.0/24",
      "192.0.2.7:443",
      "0.0.0.0/0:6379",
      "198.51.100.0/25",
    ];
    const conditions = [
      undefined,
      undefined,
      'workload.labels.team == "a"',
      'workload.namespace != "jobs"',
      "workload.labels.missing == 'x'",
    ];
    const addresses = [
      "10.96.0.20",
      "10.96.0.21",
      "10.96.1.30",
      "10.1.2.3",
      "192.0.2.7",
      "192.0.2.200",
      "198.51.100.5",
      "198.51.100.200",
      "8.8.8.8",
    ];
    const ports = [80, 443, 5432, 6379, 8443, 53];
    let compared = 0;
    let containerCompared = 0;
    let denials = 0;
    for (let round = 0; round < 200; round++) {
      const policies: Policy[] = [];
      const policyCount = 1 + Math.floor(rng.next() * 3);
      for (let p = 0; p < policyCount; p++) {
        const rules: unknown[] = [];
        const ruleCount = 1 + Math.floor(rng.next() * 4);
        for (let r = 0; r < ruleCount; r++) {
          const matchCount = Math.floor(rng.next() * 3);
          const condition = pick(conditions);
          const namespaces = rng.next() < 0.2 ? [pick(["default", "jobs", "data"])] : undefined;
          rules.push({
            name: `r${r}`,
            subject: "egress",
            effect: rng.next() < 0.5 ? "allow" : "deny",
            ...(matchCount > 0
              ? { match: Array.from({ length: matchCount }, () => pick(patterns)) }
              : {}),
            ...(condition ? { condition } : {}),
            ...(namespaces ? { namespaces } : {}),
          });
        }
        policies.push(policy(`p${p}`, rules));
      }
      const set = new PolicySet(policies);
      const ruleset = buildEgressRuleset(
        compileEgress({ policies: set, workloads, containers, services, exemptions: [] }),
      );
      for (let probe = 0; probe < 40; probe++) {
        const workload = pick(workloads);
        const ip = pick(addresses);
        const port = pick(ports);
        const service = services.find(
          (s) => s.vip === ip && s.ports.some((sp) => sp.port === port),
        );
        const destination: EgressDestination = {
          ip,
          port,
          ...(service ? { service: { name: service.name, namespace: service.namespace } } : {}),
        };
        const decided = set.evaluateEgress(workload, destination).allowed ? "accept" : "reject";
        const kernel = verdictOf(ruleset, {
          uid: workload.uid,
          daddr: ip,
          protocol: "tcp",
          dport: port,
        });
        if (kernel !== decided) {
          throw new Error(
            `round ${round}: ${workload.namespace}/${workload.name} → ${ip}:${port}: decider ${decided}, compiled ${kernel}\n${JSON.stringify(policies.map((p) => p.spec.rules))}`,
          );
        }
        compared++;
        if (decided === "reject") denials++;
        const container = containers[workloads.indexOf(workload)];
        const fromContainer = verdictOf(ruleset, {
          uid: 0,
          saddr: pick(container?.addresses ?? []),
          daddr: ip,
          protocol: "tcp",
          dport: port,
        });
        if (fromContainer !== decided) {
          throw new Error(
            `round ${round}: container of ${workload.namespace}/${workload.name} → ${ip}:${port}: decider ${decided}, compiled ${fromContainer}\n${JSON.stringify(policies.map((p) => p.spec.rules))}`,
          );
        }
        containerCompared++;
      }
    }
    expect(compared).toBe(8000);
    expect(containerCompared).toBe(8000);
    // Both verdicts occur often, so the comparison is not trivially one-sided.
    expect(denials).toBeGreaterThan(1000);
    expect(compared - denials).toBeGreaterThan(1000);
  });
});

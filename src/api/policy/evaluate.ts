/**
 * The policy decider (REQ-061): pure, no I/O, no clock. Every fact of a workload (its image,
 * running as root, each added capability, an unconfined seccomp profile) and every egress
 * destination is judged on its own, like a packet in a firewall chain: policies in name
 * order, rules in their order, and the first rule of that subject that matches decides.
 * A fact no rule matches is allowed — a cluster without policies runs as before; an
 * allowlist ends with a catch-all deny rule.
 *
 * A condition that fails to evaluate (a missing field, a type error) fails closed: a deny
 * rule matches, an allow rule does not.
 */
import { parse as parseCel } from "@marcbachmann/cel-js";
import {
  type EgressPattern,
  ipv4ToNumber,
  type Policy,
  type PolicyRule,
  type PolicySubject,
  parseEgressPattern,
} from "./policy.js";

/** What the policies judge about one workload, decoded from its spec at the edge. */
export interface WorkloadFacts {
  namespace: string;
  name: string;
  labels: Readonly<Record<string, string>>;
  /** The container image as written; absent for a process workload. */
  image?: string;
  /** Whether its replicas run as uid 0. */
  runsAsRoot: boolean;
  /** Capabilities added beyond the empty default, upper case without CAP_. */
  capabilitiesAdded: readonly string[];
  seccompUnconfined: boolean;
}

/** A destination a replica connects to. */
export interface EgressDestination {
  /** The service, when the address is a service VIP (or the name was resolved to one). */
  service?: { name: string; namespace: string };
  ip?: string;
  port: number;
}

export interface PolicyDecision {
  subject: PolicySubject;
  /** The fact judged: the image, a capability, "root", a destination. */
  item: string;
  effect: "allow" | "deny";
  /** Absent when no rule matched (the default, allow). */
  policy?: string;
  rule?: string;
  /** One line for people: who decided and why. */
  reason: string;
}

export interface PolicyVerdict {
  allowed: boolean;
  /** Every fact's decision, denials first. */
  decisions: PolicyDecision[];
  /** The first denial, for a one-line error. */
  denied?: PolicyDecision;
}

/** An image reference split Docker's way (docker.io/library/ for bare names). */
export interface ImageReference {
  registry: string;
  repository: string;
  tag: string;
  digest: string;
}

export function parseImageReference(image: string): ImageReference {
  let rest = image;
  let digest = "";
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  let tag = "";
  const lastSlash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  const first = rest.split("/")[0] ?? "";
  const hasRegistry =
    rest.includes("/") && (first.includes(".") || first.includes(":") || first === "localhost");
  const registry = hasRegistry ? first : "docker.io";
  let repository = hasRegistry ? rest.slice(first.length + 1) : rest;
  if (registry === "docker.io" && !repository.includes("/")) repository = `library/${repository}`;
  if (tag === "" && digest === "") tag = "latest";
  return { registry, repository: repository.toLowerCase(), tag, digest };
}

/** `*` matches within one path segment, `**` across segments; the rest literally. */
function globToRegExp(pattern: string): RegExp {
  let source = "";
  for (let i = 0; i < pattern.length; i++) {
    const char = pattern[i] as string;
    if (char === "*") {
      if (pattern[i + 1] === "*") {
        source += ".*";
        i++;
      } else source += "[^/]*";
    } else source += char.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${source}$`);
}

/** An egress rule as it applies to one workload (see PolicySet.egressRulesFor). */
export interface EgressRuleView {
  policy: string;
  rule: string;
  effect: "allow" | "deny";
  /** Destinations the rule matches; empty matches every destination. */
  patterns: readonly EgressPattern[];
}

/** A condition that names the destination cannot be evaluated before there is a packet. */
const destinationDependent = /\b(destination|item)\b/;

type CompiledCondition = (context: Record<string, unknown>) => unknown;

/** Policies prepared once for many evaluations: sorted, patterns and conditions compiled. */
export class PolicySet {
  private readonly rules: {
    policy: string;
    rule: PolicyRule;
    images: RegExp[];
    egress: EgressPattern[];
    condition?: CompiledCondition;
  }[] = [];

  constructor(policies: readonly Policy[]) {
    const sorted = [...policies].sort((a, b) =>
      a.metadata.name < b.metadata.name ? -1 : a.metadata.name > b.metadata.name ? 1 : 0,
    );
    for (const policy of sorted) {
      for (const rule of policy.spec.rules) {
        const patterns = rule.match ?? [];
        this.rules.push({
          policy: policy.metadata.name,
          rule,
          images: rule.subject === "image" ? patterns.map(globToRegExp) : [],
          egress:
            rule.subject === "egress"
              ? patterns.flatMap((p) => {
                  const parsed = parseEgressPattern(p);
                  return parsed ? [parsed] : [];
                })
              : [],
          ...(rule.condition !== undefined
            ? { condition: parseCel(rule.condition) as CompiledCondition }
            : {}),
        });
      }
    }
  }

  get size(): number {
    return this.rules.length;
  }

  /** Judges every fact of a workload. */
  evaluateWorkload(facts: WorkloadFacts): PolicyVerdict {
    const workload = { name: facts.name, namespace: facts.namespace, labels: facts.labels };
    const decisions: PolicyDecision[] = [];
    if (facts.image !== undefined) {
      const image = parseImageReference(facts.image);
      const name = `${image.registry}/${image.repository}`;
      decisions.push(
        this.decide(
          "image",
          facts.image,
          facts.namespace,
          { workload, item: facts.image, image },
          (r) => {
            if (r.rule.pinned !== undefined && r.rule.pinned !== (image.digest !== ""))
              return false;
            if (r.images.length === 0) return true;
            // A pattern names a repository with or without its registry (docker.io implied).
            return r.images.some(
              (re) =>
                re.test(name) || (image.registry === "docker.io" && re.test(image.repository)),
            );
          },
        ),
      );
    }
    if (facts.runsAsRoot) {
      decisions.push(
        this.decide("runAsRoot", "root", facts.namespace, { workload, item: "root" }, () => true),
      );
    }
    for (const capability of facts.capabilitiesAdded) {
      const bare = capability.toUpperCase().replace(/^CAP_/, "");
      decisions.push(
        this.decide("capability", bare, facts.namespace, { workload, item: bare }, (r) => {
          const names = r.rule.match;
          if (names === undefined) return true;
          return names.some((n) => n === "*" || n.toUpperCase().replace(/^CAP_/, "") === bare);
        }),
      );
    }
    if (facts.seccompUnconfined) {
      decisions.push(
        this.decide(
          "seccompUnconfined",
          "unconfined",
          facts.namespace,
          { workload, item: "unconfined" },
          () => true,
        ),
      );
    }
    return verdictOf(decisions);
  }

  /** Judges one connection of a workload's replica (the agent enforces what this says). */
  evaluateEgress(
    workload: Pick<WorkloadFacts, "name" | "namespace" | "labels">,
    destination: EgressDestination,
  ): PolicyVerdict {
    const item = destination.service
      ? `service:${destination.service.name}.${destination.service.namespace}:${destination.port}`
      : `${destination.ip ?? "?"}:${destination.port}`;
    const context = {
      workload: { name: workload.name, namespace: workload.namespace, labels: workload.labels },
      item,
      destination: {
        service: destination.service?.name ?? "",
        namespace: destination.service?.namespace ?? "",
        ip: destination.ip ?? "",
        port: destination.port,
      },
    };
    const ip = destination.ip === undefined ? undefined : ipv4ToNumber(destination.ip);
    const decision = this.decide("egress", item, workload.namespace, context, (r) => {
      if (r.egress.length === 0) return true;
      return r.egress.some((pattern) => {
        if (pattern.port !== undefined && pattern.port !== destination.port) return false;
        if (pattern.kind === "any") return true;
        if (pattern.kind === "service") {
          const service = destination.service;
          if (!service || service.name !== pattern.service) return false;
          return (pattern.namespace ?? workload.namespace) === service.namespace;
        }
        if (ip === undefined) return false;
        const bits = pattern.prefixBits ?? 32;
        const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
        return (ip & mask) >>> 0 === ((pattern.network ?? 0) & mask) >>> 0;
      });
    });
    return verdictOf([decision]);
  }

  /**
   * The egress rules that can decide for one workload's replicas, in the decider's order,
   * each with the patterns it matches (empty: every destination) — what the agent compiles
   * into nftables (ADR 0057). A rule of another namespace is left out; a condition is
   * evaluated here for the workload. A condition that reads the destination (`destination`
   * or `item`) cannot be judged before a packet exists, so it fails closed as an
   * unevaluable one does: the deny rule is kept as if it held, the allow rule is dropped.
   */
  egressRulesFor(workload: Pick<WorkloadFacts, "name" | "namespace" | "labels">): {
    rules: EgressRuleView[];
    /** `policy/rule` of the rules whose condition reads the destination (judged fail-closed). */
    failedClosed: string[];
  } {
    const context = {
      workload: { name: workload.name, namespace: workload.namespace, labels: workload.labels },
    };
    const rules: EgressRuleView[] = [];
    const failedClosed: string[] = [];
    for (const entry of this.rules) {
      const { rule } = entry;
      if (rule.subject !== "egress") continue;
      if (rule.namespaces !== undefined && !rule.namespaces.includes(workload.namespace)) continue;
      if (entry.condition) {
        const readsDestination = destinationDependent.test(rule.condition ?? "");
        if (readsDestination) failedClosed.push(`${entry.policy}/${rule.name}`);
        const holds = readsDestination
          ? rule.effect === "deny"
          : conditionHolds(entry.condition, context, rule.effect);
        if (!holds) continue;
      }
      rules.push({
        policy: entry.policy,
        rule: rule.name,
        effect: rule.effect,
        patterns: entry.egress,
      });
    }
    return { rules, failedClosed };
  }

  private decide(
    subject: PolicySubject,
    item: string,
    namespace: string,
    context: Record<string, unknown>,
    matches: (entry: PolicySet["rules"][number]) => boolean,
  ): PolicyDecision {
    for (const entry of this.rules) {
      const { rule } = entry;
      if (rule.subject !== subject) continue;
      if (rule.namespaces !== undefined && !rule.namespaces.includes(namespace)) continue;
      if (!matches(entry)) continue;
      if (entry.condition && !conditionHolds(entry.condition, context, rule.effect)) continue;
      const said = rule.message ? `: ${rule.message}` : "";
      return {
        subject,
        item,
        effect: rule.effect,
        policy: entry.policy,
        rule: rule.name,
        reason: `${rule.effect === "deny" ? "denied" : "allowed"} by policy ${entry.policy} rule ${rule.name} (${describe(subject, item)})${said}`,
      };
    }
    return {
      subject,
      item,
      effect: "allow",
      reason: `allowed: no policy rule matches ${describe(subject, item)}`,
    };
  }
}

function conditionHolds(
  condition: CompiledCondition,
  context: Record<string, unknown>,
  effect: "allow" | "deny",
): boolean {
  try {
    return condition(context) === true;
  } catch {
    // Fail closed: an unevaluable condition denies, and never allows.
    return effect === "deny";
  }
}

function describe(subject: PolicySubject, item: string): string {
  switch (subject) {
    case "image":
      return `image ${item}`;
    case "runAsRoot":
      return "running as root";
    case "capability":
      return `capability ${item}`;
    case "seccompUnconfined":
      return "an unconfined seccomp profile";
    case "egress":
      return `a connection to ${item}`;
  }
}

function verdictOf(decisions: PolicyDecision[]): PolicyVerdict {
  const denials = decisions.filter((d) => d.effect === "deny");
  const ordered = [...denials, ...decisions.filter((d) => d.effect !== "deny")];
  return {
    allowed: denials.length === 0,
    decisions: ordered,
    ...(denials[0] ? { denied: denials[0] } : {}),
  };
}

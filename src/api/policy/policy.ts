/**
 * Cluster policies (REQ-061): documents of ordered allow/deny rules about what a workload may
 * be — its image, running as root, added capabilities, an unconfined seccomp profile — and
 * where its replicas may connect (egress). One zod schema is the source of validation, the
 * TypeScript types and the published JSON Schema (schemas/policy.schema.json), as for
 * workload specs. Conditions are CEL expressions, compiled when a policy is decoded, so a
 * policy that does not compile is refused at apply, never at the first workload it meets.
 *
 * The decider that applies them is ./evaluate.ts; it is pure and shared by the coordinator
 * (checked at apply), the agent (checked again before a replica starts) and the CLI
 * (`cloudless policy test`).
 */
import { parse as parseCel } from "@marcbachmann/cel-js";
import { z } from "zod";

export const policyApiVersion = "cloudless/v1";
export const policyKind = "Policy";

/**
 * Limits of one policy document. A policy is read on every apply and every replica start,
 * so it stays small: 64 rules is more than the longest Kyverno baseline policy set, 64
 * patterns per rule covers a registry allowlist, and a CEL condition of 1 KiB is a long
 * expression (CEL is not Turing complete; its cost is bounded by its size and the input).
 */
export const MAX_RULES_PER_POLICY = 64;
export const MAX_PATTERNS_PER_RULE = 64;
export const MAX_PATTERN_CHARS = 256;
export const MAX_CONDITION_CHARS = 1024;
export const MAX_MESSAGE_CHARS = 256;
/** Policies in a cluster: every one is evaluated on every apply. */
export const MAX_POLICIES = 256;
/** A policy file as read by the CLI or the API, before parsing. */
export const MAX_POLICY_DOCUMENT_BYTES = 256 * 1024;

/** What a rule is about; each kind of fact of a workload is judged by its own rules. */
export const policySubjects = [
  "image",
  "runAsRoot",
  "capability",
  "seccompUnconfined",
  "egress",
] as const;
export type PolicySubject = (typeof policySubjects)[number];

const dnsLabelPattern = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const dnsLabelMessage =
  "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters";

function dnsLabel() {
  return z
    .string({ error: (issue) => (issue.input === undefined ? "is required" : dnsLabelMessage) })
    .regex(dnsLabelPattern, { error: dnsLabelMessage })
    .max(63, { error: dnsLabelMessage });
}

const conditionSchema = z
  .string({ error: "expected a CEL expression" })
  .min(1, { error: "must not be empty" })
  .max(MAX_CONDITION_CHARS, {
    error: `must be at most ${MAX_CONDITION_CHARS} characters (MAX_CONDITION_CHARS)`,
  })
  .superRefine((text, context) => {
    try {
      parseCel(text);
    } catch (error) {
      const reason = (error instanceof Error ? error.message : String(error)).split("\n")[0];
      context.addIssue({ code: "custom", message: `is not valid CEL: ${reason}` });
    }
  })
  .describe(
    "A CEL expression that must also be true for the rule to match. Variables: " +
      "`workload` {name, namespace, labels}, `item` (the image, capability or destination " +
      "judged), `image` {registry, repository, tag, digest} for image rules, `destination` " +
      "{service, namespace, ip, port} for egress rules.",
  );

export const policyRuleSchema = z
  .strictObject({
    name: dnsLabel().describe("Named in every decision the rule makes."),
    subject: z
      .enum(policySubjects, {
        error: `expected one of ${policySubjects.join(", ")}`,
      })
      .describe("What the rule judges."),
    effect: z.enum(["allow", "deny"], { error: "expected allow or deny" }),
    match: z
      .array(
        z
          .string({ error: "expected a string" })
          .min(1, { error: "must not be empty" })
          .max(MAX_PATTERN_CHARS, {
            error: `must be at most ${MAX_PATTERN_CHARS} characters (MAX_PATTERN_CHARS)`,
          }),
      )
      .max(MAX_PATTERNS_PER_RULE, {
        error: `at most ${MAX_PATTERNS_PER_RULE} patterns (MAX_PATTERNS_PER_RULE)`,
      })
      .optional()
      .describe(
        "What the rule matches (absent: everything of its subject). image: repository " +
          "patterns such as `registry.example.com/team/*` (`*` within a path segment, `**` " +
          "across). capability: names such as NET_ADMIN or `*`. egress: `service:NAME` or " +
          "`service:NAME.NAMESPACE`, an IPv4 CIDR, or `*`, each optionally followed by `:PORT`.",
      ),
    pinned: z
      .boolean({ error: "expected true or false" })
      .optional()
      .describe(
        "image rules only: match only images pinned by digest (true) or only unpinned ones " +
          "(false).",
      ),
    namespaces: z
      .array(dnsLabel())
      .max(MAX_PATTERNS_PER_RULE, {
        error: `at most ${MAX_PATTERNS_PER_RULE} namespaces (MAX_PATTERNS_PER_RULE)`,
      })
      .optional()
      .describe("Only workloads in these namespaces (absent: every namespace)."),
    condition: conditionSchema.optional(),
    message: z
      .string({ error: "expected a string" })
      .max(MAX_MESSAGE_CHARS, {
        error: `must be at most ${MAX_MESSAGE_CHARS} characters (MAX_MESSAGE_CHARS)`,
      })
      .optional()
      .describe("Said to whoever is refused, after the policy and rule names."),
  })
  .superRefine((rule, context) => {
    if (rule.pinned !== undefined && rule.subject !== "image") {
      context.addIssue({
        code: "custom",
        path: ["pinned"],
        message: "applies to image rules only",
      });
    }
    if (
      rule.match !== undefined &&
      (rule.subject === "runAsRoot" || rule.subject === "seccompUnconfined")
    ) {
      context.addIssue({
        code: "custom",
        path: ["match"],
        message: `a ${rule.subject} rule has nothing to match; use namespaces or condition`,
      });
    }
    for (const [index, pattern] of (rule.match ?? []).entries()) {
      const problem = patternProblem(rule.subject, pattern);
      if (problem) context.addIssue({ code: "custom", path: ["match", index], message: problem });
    }
  });

export const policySchema = z
  .strictObject({
    apiVersion: z.literal(policyApiVersion, { error: `expected "${policyApiVersion}"` }),
    kind: z.literal(policyKind, { error: `expected "${policyKind}"` }),
    metadata: z.strictObject({ name: dnsLabel() }),
    spec: z.strictObject({
      description: z.string().max(1024).optional(),
      rules: z
        .array(policyRuleSchema)
        .min(1, { error: "a policy needs at least one rule" })
        .max(MAX_RULES_PER_POLICY, {
          error: `at most ${MAX_RULES_PER_POLICY} rules (MAX_RULES_PER_POLICY)`,
        })
        .superRefine(
          (rules, context) => {
            const seen = new Set<string>();
            for (const [index, rule] of rules.entries()) {
              if (rule?.name === undefined) continue;
              if (seen.has(rule.name)) {
                context.addIssue({
                  code: "custom",
                  path: [index, "name"],
                  message: `rule name ${rule.name} is used twice`,
                });
              }
              seen.add(rule.name);
            }
            // Runs even when a rule is invalid, so one round reports every problem.
          },
          { when: () => true },
        ),
    }),
  })
  .describe("A Cloudless cluster policy: ordered allow/deny rules (REQ-061).");

export type Policy = z.output<typeof policySchema>;
export type PolicyRule = z.output<typeof policyRuleSchema>;

const capabilityPattern = /^(CAP_)?[A-Z_]{2,32}$/;
const imagePatternPattern = /^[a-z0-9*][a-z0-9._\-/:*]*$/;

/** Why a pattern cannot mean anything for its subject, or undefined when it can. */
function patternProblem(subject: PolicySubject, pattern: string): string | undefined {
  switch (subject) {
    case "image":
      return imagePatternPattern.test(pattern)
        ? undefined
        : "must be an image repository pattern such as registry.example.com/team/* (lowercase, no tag)";
    case "capability":
      return pattern === "*" || capabilityPattern.test(pattern)
        ? undefined
        : "must be a capability name such as NET_ADMIN, or *";
    case "egress":
      return parseEgressPattern(pattern) === undefined
        ? "must be service:NAME[.NAMESPACE], an IPv4 CIDR such as 10.0.0.0/8, or *, optionally with :PORT"
        : undefined;
    default:
      return undefined;
  }
}

/** An egress pattern: what destinations it covers. */
export interface EgressPattern {
  kind: "any" | "service" | "cidr";
  service?: string;
  namespace?: string;
  network?: number;
  prefixBits?: number;
  port?: number;
}

const ipv4Pattern = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** The IPv4 address as an unsigned 32-bit number, or undefined. */
export function ipv4ToNumber(address: string): number | undefined {
  const parts = ipv4Pattern.exec(address);
  if (!parts) return undefined;
  let value = 0;
  for (const part of parts.slice(1)) {
    const octet = Number(part);
    if (octet > 255) return undefined;
    value = value * 256 + octet;
  }
  return value;
}

const egressPatternSyntax = /^(service:[a-z0-9.-]+|\*|[0-9./]+)(?::(\d{1,5}))?$/;

export function parseEgressPattern(pattern: string): EgressPattern | undefined {
  const parts = egressPatternSyntax.exec(pattern);
  if (!parts) return undefined;
  const body = parts[1] as string;
  const port = parts[2] === undefined ? undefined : Number(parts[2]);
  if (port !== undefined && (port < 1 || port > 65535)) return undefined;
  const withPort = <T extends EgressPattern>(value: T): T =>
    port === undefined ? value : { ...value, port };
  if (body === "*") return withPort({ kind: "any" });
  if (body.startsWith("service:")) {
    const [service, namespace, extra] = body.slice("service:".length).split(".");
    if (extra !== undefined || !service || !dnsLabelPattern.test(service)) return undefined;
    if (namespace !== undefined && !dnsLabelPattern.test(namespace)) return undefined;
    return withPort({ kind: "service", service, ...(namespace ? { namespace } : {}) });
  }
  const [address, bits, extra] = body.split("/");
  const network = address === undefined ? undefined : ipv4ToNumber(address);
  const prefixBits = bits === undefined ? 32 : Number(bits);
  if (network === undefined || extra !== undefined) return undefined;
  if (!Number.isInteger(prefixBits) || prefixBits < 0 || prefixBits > 32) return undefined;
  return withPort({ kind: "cidr", network, prefixBits });
}

/** One line per problem, each naming the field: `spec.rules[0].match[1]: …`. */
export type PolicyDecodeResult = { ok: true; policy: Policy } | { ok: false; errors: string[] };

export function decodePolicy(value: unknown): PolicyDecodeResult {
  const parsed = policySchema.safeParse(value);
  if (parsed.success) return { ok: true, policy: parsed.data };
  return {
    ok: false,
    errors: parsed.error.issues.map((issue) => {
      const where = issue.path
        .map((part, index) =>
          typeof part === "number" ? `[${part}]` : `${index === 0 ? "" : "."}${String(part)}`,
        )
        .join("");
      return `${where || "(document)"}: ${issue.message}`;
    }),
  };
}

/** The published JSON Schema for policy documents. */
export function policyJsonSchema(): Record<string, unknown> {
  const generated = z.toJSONSchema(policySchema, { io: "input" }) as Record<string, unknown>;
  const { $schema, ...rest } = generated;
  return {
    $schema,
    $id: "urn:cloudless:schema:policy:v1",
    title: `Cloudless ${policyKind} (${policyApiVersion})`,
    ...rest,
  };
}

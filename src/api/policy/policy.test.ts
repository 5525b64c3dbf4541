import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { PolicySet, parseImageReference, type WorkloadFacts } from "./evaluate.js";
import {
  decodePolicy,
  MAX_RULES_PER_POLICY,
  type Policy,
  parseEgressPattern,
  policyJsonSchema,
} from "./policy.js";

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

const base: WorkloadFacts = {
  namespace: "default",
  name: "web",
  labels: { team: "a" },
  runsAsRoot: false,
  capabilitiesAdded: [],
  seccompUnconfined: false,
};

describe("policy documents (REQ-061)", () => {
  it("REQ-061: a valid policy decodes; every bad field is one line naming it", () => {
    expect(
      decodePolicy({
        apiVersion: "cloudless/v1",
        kind: "Policy",
        metadata: { name: "Bad Name" },
        spec: {
          rules: [
            { name: "r", subject: "image", effect: "maybe" },
            { name: "r", subject: "runAsRoot", effect: "deny", match: ["x"] },
            { name: "c", subject: "capability", effect: "deny", match: ["net admin"] },
            { name: "e", subject: "egress", effect: "deny", match: ["10.0.0.0/33"] },
            { name: "p", subject: "capability", effect: "deny", pinned: true },
            { name: "cel", subject: "image", effect: "deny", condition: "image.registry ==" },
          ],
        },
      }),
    ).toEqual({
      ok: false,
      errors: expect.arrayContaining([
        expect.stringMatching(/^metadata\.name: must be a DNS label/),
        "spec.rules[0].effect: expected allow or deny",
        "spec.rules[1].match: a runAsRoot rule has nothing to match; use namespaces or condition",
        "spec.rules[1].name: rule name r is used twice",
        "spec.rules[2].match[0]: must be a capability name such as NET_ADMIN, or *",
        expect.stringMatching(/^spec\.rules\[3\]\.match\[0\]: must be service:NAME/),
        "spec.rules[4].pinned: applies to image rules only",
        expect.stringMatching(/^spec\.rules\[5\]\.condition: is not valid CEL: /),
      ]),
    });
  });

  it("REQ-061: limits are checked before any rule is compiled: too many rules is one error", () => {
    const rules = Array.from({ length: MAX_RULES_PER_POLICY + 1 }, (_, i) => ({
      name: `r${i}`,
      subject: "runAsRoot",
      effect: "deny",
    }));
    const decoded = decodePolicy({
      apiVersion: "cloudless/v1",
      kind: "Policy",
      metadata: { name: "p" },
      spec: { rules },
    });
    expect(decoded).toEqual({
      ok: false,
      errors: [`spec.rules: at most ${MAX_RULES_PER_POLICY} rules (MAX_RULES_PER_POLICY)`],
    });
  });

  it("REQ-061 the published policy JSON Schema matches the zod schema", () => {
    const committed: unknown = JSON.parse(
      readFileSync(new URL("../../../schemas/policy.schema.json", import.meta.url), "utf8"),
    );
    // Compared as data: Biome owns the file's layout. On failure: npx tsx scripts/generate-schema.ts
    expect(committed).toEqual(policyJsonSchema());
  });

  it("REQ-061: the published JSON Schema names every subject", () => {
    const schema = JSON.stringify(policyJsonSchema());
    for (const subject of ["image", "runAsRoot", "capability", "seccompUnconfined", "egress"]) {
      expect(schema).toContain(`"${subject}"`);
    }
  });

  it("image references split Docker's way", () => {
    expect(parseImageReference("busybox")).toEqual({
      registry: "docker.io",
      repository: "library/busybox",
      tag: "latest",
      digest: "",
    });
    expect(parseImageReference("localhost:5000/team/app:1.2@sha256:ab")).toEqual({
      registry: "localhost:5000",
      repository: "team/app",
      tag: "1.2",
      digest: "sha256:ab",
    });
    expect(parseImageReference("quay.io/x/y@sha256:cd")).toMatchObject({
      registry: "quay.io",
      tag: "",
      digest: "sha256:cd",
    });
  });

  it("egress patterns: services, CIDRs, ports", () => {
    expect(parseEgressPattern("service:db")).toEqual({ kind: "service", service: "db" });
    expect(parseEgressPattern("service:db.prod:5432")).toEqual({
      kind: "service",
      service: "db",
      namespace: "prod",
      port: 5432,
    });
    expect(parseEgressPattern("10.0.0.0/8:443")).toMatchObject({
      kind: "cidr",
      prefixBits: 8,
      port: 443,
    });
    expect(parseEgressPattern("*:53")).toEqual({ kind: "any", port: 53 });
    for (const bad of ["service:", "service:a.b.c", "10.0.0.0/40", "300.0.0.1", "*:0", "db"]) {
      expect(parseEgressPattern(bad), bad).toBeUndefined();
    }
  });
});

describe("policy decisions (REQ-061)", () => {
  const registryAllowlist = policy("images", [
    { name: "ours", subject: "image", effect: "allow", match: ["registry.example.com/**"] },
    {
      name: "everything-else",
      subject: "image",
      effect: "deny",
      message: "pull from registry.example.com",
    },
  ]);

  it("REQ-061: an image from a denied registry is refused with the policy and rule named; an allowed one passes", () => {
    const set = new PolicySet([registryAllowlist]);
    const denied = set.evaluateWorkload({ ...base, image: "docker.io/evil/miner:1" });
    expect(denied.allowed).toBe(false);
    expect(denied.denied).toMatchObject({ policy: "images", rule: "everything-else" });
    expect(denied.denied?.reason).toBe(
      "denied by policy images rule everything-else (image docker.io/evil/miner:1): pull from registry.example.com",
    );
    const allowed = set.evaluateWorkload({ ...base, image: "registry.example.com/team/app:2" });
    expect(allowed.allowed).toBe(true);
    expect(allowed.decisions[0]).toMatchObject({ policy: "images", rule: "ours", effect: "allow" });
    // A process workload has no image to judge.
    expect(set.evaluateWorkload(base)).toEqual({ allowed: true, decisions: [] });
  });

  it("REQ-061: no policy, or no matching rule, allows — with a reason that says so", () => {
    const verdict = new PolicySet([]).evaluateWorkload({
      ...base,
      image: "busybox",
      runsAsRoot: true,
    });
    expect(verdict.allowed).toBe(true);
    expect(verdict.decisions.map((d) => d.reason)).toEqual([
      "allowed: no policy rule matches image busybox",
      "allowed: no policy rule matches running as root",
    ]);
  });

  it("REQ-061: digest pinning, root, capabilities and unconfined seccomp are each judged by their own rules", () => {
    const set = new PolicySet([
      policy("baseline", [
        { name: "pin", subject: "image", effect: "deny", pinned: false, namespaces: ["prod"] },
        { name: "no-root", subject: "runAsRoot", effect: "deny" },
        { name: "net-bind", subject: "capability", effect: "allow", match: ["NET_BIND_SERVICE"] },
        { name: "no-caps", subject: "capability", effect: "deny", match: ["*"] },
        { name: "no-unconfined", subject: "seccompUnconfined", effect: "deny" },
      ]),
    ]);
    const prod = { ...base, namespace: "prod" };
    expect(set.evaluateWorkload({ ...prod, image: "busybox:1" }).denied?.rule).toBe("pin");
    expect(set.evaluateWorkload({ ...prod, image: "busybox@sha256:aa" }).allowed).toBe(true);
    // Unpinned outside prod: the rule is scoped to its namespaces.
    expect(set.evaluateWorkload({ ...base, image: "busybox:1" }).allowed).toBe(true);
    expect(set.evaluateWorkload({ ...base, runsAsRoot: true }).denied?.rule).toBe("no-root");
    const caps = set.evaluateWorkload({
      ...base,
      capabilitiesAdded: ["CAP_NET_BIND_SERVICE", "SYS_ADMIN"],
    });
    expect(caps.decisions.map((d) => `${d.item}:${d.effect}:${d.rule}`)).toEqual([
      "SYS_ADMIN:deny:no-caps",
      "NET_BIND_SERVICE:allow:net-bind",
    ]);
    expect(set.evaluateWorkload({ ...base, seccompUnconfined: true }).denied?.rule).toBe(
      "no-unconfined",
    );
  });

  it("REQ-061: policies apply in name order, rules in their order; the first match decides", () => {
    const allowFirst = policy("a-allow", [
      {
        name: "team-a-root",
        subject: "runAsRoot",
        effect: "allow",
        condition: 'workload.labels.team == "a"',
      },
    ]);
    const denyAfter = policy("b-deny", [{ name: "no-root", subject: "runAsRoot", effect: "deny" }]);
    const set = new PolicySet([denyAfter, allowFirst]);
    expect(set.evaluateWorkload({ ...base, runsAsRoot: true }).decisions[0]?.rule).toBe(
      "team-a-root",
    );
    expect(
      set.evaluateWorkload({ ...base, labels: { team: "b" }, runsAsRoot: true }).denied?.rule,
    ).toBe("no-root");
  });

  it("REQ-061: a condition that cannot be evaluated fails closed (deny matches, allow does not)", () => {
    const set = new PolicySet([
      policy("p", [
        {
          name: "allow-if",
          subject: "runAsRoot",
          effect: "allow",
          condition: 'workload.labels.missing == "x"',
        },
        {
          name: "deny-if",
          subject: "capability",
          effect: "deny",
          condition: 'workload.labels.missing == "x"',
        },
      ]),
    ]);
    const verdict = set.evaluateWorkload({
      ...base,
      runsAsRoot: true,
      capabilitiesAdded: ["CHOWN"],
    });
    expect(verdict.decisions.map((d) => `${d.subject}:${d.effect}:${d.rule ?? "-"}`)).toEqual([
      "capability:deny:deny-if",
      "runAsRoot:allow:-",
    ]);
  });

  it("REQ-061: egress — a denied destination is refused while an allowed service passes, by service, CIDR and port", () => {
    const set = new PolicySet([
      policy("egress", [
        { name: "dns", subject: "egress", effect: "allow", match: ["*:53"] },
        {
          name: "db",
          subject: "egress",
          effect: "allow",
          match: ["service:db:5432", "service:cache.shared"],
        },
        {
          name: "lan",
          subject: "egress",
          effect: "allow",
          match: ["192.168.10.0/24"],
          namespaces: ["ops"],
        },
        { name: "rest", subject: "egress", effect: "deny", match: ["*"] },
      ]),
    ]);
    const web = { name: "web", namespace: "default", labels: {} };
    const verdictFor = (destination: Parameters<PolicySet["evaluateEgress"]>[1], who = web) =>
      set.evaluateEgress(who, destination).decisions[0]?.rule;
    expect(verdictFor({ service: { name: "db", namespace: "default" }, port: 5432 })).toBe("db");
    expect(verdictFor({ service: { name: "db", namespace: "default" }, port: 22 })).toBe("rest");
    expect(verdictFor({ service: { name: "db", namespace: "other" }, port: 5432 })).toBe("rest");
    expect(verdictFor({ service: { name: "cache", namespace: "shared" }, port: 6379 })).toBe("db");
    expect(verdictFor({ ip: "10.0.0.1", port: 53 })).toBe("dns");
    expect(verdictFor({ ip: "192.168.10.7", port: 80 })).toBe("rest");
    expect(verdictFor({ ip: "192.168.10.7", port: 80 }, { ...web, namespace: "ops" })).toBe("lan");
    expect(set.evaluateEgress(web, { ip: "1.1.1.1", port: 443 }).denied?.reason).toBe(
      "denied by policy egress rule rest (a connection to 1.1.1.1:443)",
    );
  });
});

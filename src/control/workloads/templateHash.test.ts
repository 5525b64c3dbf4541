import { describe, expect, it } from "vitest";
import { parseWorkloadValue, specHash } from "../../api/workload/parse.js";
import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import { templateHash } from "./workloadRegistry.js";

function doc(
  placement: Record<string, unknown>,
  replicas = 3,
  service?: Record<string, unknown>,
): WorkloadSpecDocument {
  const parsed = parseWorkloadValue({
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: "web" },
    spec: {
      command: ["/bin/sleep", "600"],
      resources: { cpuMillicores: 100, memoryMiB: 64 },
      replicas,
      placement,
      ...(service ? { ports: [{ name: "http", containerPort: 8080 }], service } : {}),
    },
  });
  if (!parsed.ok) throw new Error("test spec is invalid");
  return parsed.doc;
}

describe("REQ-020 the template hash decides what is a new revision", () => {
  it("ADR 0035 placement.rebalance is not part of it: turning rebalancing off or on starts no rollout", () => {
    expect(templateHash(doc({ rebalance: false }))).toBe(templateHash(doc({})));
    expect(templateHash(doc({ rebalance: true }))).toBe(templateHash(doc({})));
  });

  it("REQ-041 the service section is not part of it: a weight, a name or published ports start no rollout", () => {
    const plain = templateHash(doc({}, 3, {}));
    expect(templateHash(doc({}, 3, { weight: 0 }))).toBe(plain);
    expect(templateHash(doc({}, 3, { name: "shop", ports: ["http"], weight: 1000 }))).toBe(plain);
  });

  it("the rest of placement and the replica count: new revision for the first, not the second", () => {
    expect(templateHash(doc({ antiAffinity: true }))).not.toBe(templateHash(doc({})));
    expect(templateHash(doc({}, 5))).toBe(templateHash(doc({}, 3)));
  });

  it("stored hashes stay valid: the hash of a given template never changes between releases", () => {
    // Values computed by the release that introduced them; a different hash here would
    // make every stored workload look changed and start a rollout of each.
    expect(templateHash(doc({}))).toBe("172cade28de4448a");
    const full = parseWorkloadValue({
      apiVersion: "cloudless/v1",
      kind: "Workload",
      metadata: { name: "web", labels: { app: "web" } },
      spec: {
        image: "localhost/web:1",
        env: { A: "1" },
        resources: { cpuMillicores: 100, memoryMiB: 64 },
        replicas: 3,
        placement: { antiAffinity: true, rebalance: true },
        rollout: { maxSurge: 2 },
      },
    });
    if (!full.ok) throw new Error("test spec is invalid");
    expect(templateHash(full.doc)).toBe("f7d2711cf4117fc9");
  });

  it("is the spec hash of the template: the spec minus replicas, rollout knobs and rebalance", () => {
    const { replicas: _r, minAvailable: _m, rollout: _o, ...template } = doc({}).spec;
    const { rebalance: _b, ...placement } = template.placement;
    expect(templateHash(doc({}))).toBe(
      specHash({ ...doc({}), spec: { ...template, placement } } as WorkloadSpecDocument),
    );
  });
});

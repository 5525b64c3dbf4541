import { describe, expect, it } from "vitest";
import { parseWorkloadValue } from "../../api/workload/parse.js";
import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import { templateHash } from "./workloadService.js";

function doc(placement: Record<string, unknown>, replicas = 3): WorkloadSpecDocument {
  const parsed = parseWorkloadValue({
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: "web" },
    spec: {
      command: ["/bin/sleep", "600"],
      resources: { cpuMillicores: 100, memoryMiB: 64 },
      replicas,
      placement,
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

  it("the rest of placement and the replica count: new revision for the first, not the second", () => {
    expect(templateHash(doc({ antiAffinity: true }))).not.toBe(templateHash(doc({})));
    expect(templateHash(doc({}, 5))).toBe(templateHash(doc({}, 3)));
  });
});

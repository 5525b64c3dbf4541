import { describe, expect, it } from "vitest";
import { parseWorkloadValue } from "./parse.js";
import { parseWorkloadValueTolerant } from "./tolerant.js";

function doc(spec: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: "web", namespace: "shop" },
    spec: { image: "nginx:1", resources: { cpuMillicores: 10, memoryMiB: 8 }, ...spec },
    ...extra,
  };
}

describe("reading a spec another version wrote", () => {
  it("REQ-081 contract: unknown fields at any level are set aside and named; the rest parses as the strict parser would", () => {
    const value = doc(
      {
        futureSidecar: { image: "x", nested: { deep: 1 } },
        ports: [{ name: "http", containerPort: 8080, appProtocol: "h2c" }],
        livenessProbe: { tcp: { port: "http", tls: true } },
      },
      { status: { observed: 1 } },
    );
    const tolerant = parseWorkloadValueTolerant(value);
    expect(tolerant.ok).toBe(true);
    if (!tolerant.ok) return;
    expect(tolerant.unknownFields).toEqual([
      "spec.futureSidecar",
      "spec.livenessProbe.tcp.tls",
      "spec.ports[0].appProtocol",
      "status",
    ]);
    const strict = parseWorkloadValue(
      doc({
        ports: [{ name: "http", containerPort: 8080 }],
        livenessProbe: { tcp: { port: "http" } },
      }),
    );
    expect(strict.ok && strict.doc).toEqual(tolerant.doc);
    // The input is not changed.
    expect((value.spec as Record<string, unknown>).futureSidecar).toBeDefined();
  });

  it("REQ-081 contract: what the agent knows is still checked, named by field", () => {
    const result = parseWorkloadValueTolerant(doc({ futureSidecar: 1, replicas: -1 }));
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.errors.map((e) => e.path)).toContain("spec.replicas");
    expect(parseWorkloadValueTolerant("not a document").ok).toBe(false);
  });
});

import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { workloadJsonSchema, workloadSchemaId } from "./jsonSchema.js";
import {
  driverOf,
  probeActionOf,
  resolvePort,
  type WorkloadSpecInput,
  workloadSchema,
} from "./spec.js";

function minimal(spec: Partial<WorkloadSpecInput["spec"]> = {}): WorkloadSpecInput {
  return {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: "web" },
    spec: { image: "localhost/web:1", resources: { cpuMillicores: 100, memoryMiB: 64 }, ...spec },
  };
}

describe("workload schema", () => {
  it("REQ-020 applies every default to a minimal spec", () => {
    const doc = workloadSchema.parse(minimal());
    expect(doc).toEqual({
      apiVersion: "cloudless/v1",
      kind: "Workload",
      metadata: { name: "web", namespace: "default", labels: {} },
      spec: {
        image: "localhost/web:1",
        args: [],
        env: {},
        ports: [],
        resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0, bandwidthMbps: 0 },
        replicas: 1,
        minAvailable: 0,
        placement: {
          strategy: "binpack",
          regions: { required: [], preferred: [] },
          zones: { required: [], preferred: [] },
          antiAffinity: false,
          spreadAcrossZones: false,
          nodeSelector: {},
          tolerations: [],
          rebalance: true,
        },
        restartPolicy: "Always",
        rollout: { maxSurge: 1, maxUnavailable: 0 },
        terminationGracePeriodSeconds: 10,
      },
    });
  });

  it.each([
    [0, 0],
    [1, 0],
    [2, 1],
    [3, 2],
  ])(
    "REQ-023 minAvailable defaults to max(0, replicas - 1): replicas %i -> %i",
    (replicas, min) => {
      expect(workloadSchema.parse(minimal({ replicas })).spec.minAvailable).toBe(min);
    },
  );

  it("REQ-023 keeps an explicit minAvailable up to replicas", () => {
    expect(workloadSchema.parse(minimal({ replicas: 3, minAvailable: 3 })).spec.minAvailable).toBe(
      3,
    );
  });

  it("REQ-020 an image selects the container driver, a bare command the process driver", () => {
    expect(driverOf(workloadSchema.parse(minimal()))).toBe("container");
    expect(driverOf(workloadSchema.parse(minimal({ command: ["/bin/sh"] })))).toBe("container");
    expect(driverOf(workloadSchema.parse(minimal({ image: undefined, command: ["/bin/x"] })))).toBe(
      "process",
    );
  });

  it("REQ-032 probe defaults and actions, with port names resolved", () => {
    const doc = workloadSchema.parse(
      minimal({
        ports: [{ name: "http", containerPort: 8080 }],
        livenessProbe: { http: { port: "http" } },
        readinessProbe: { tcp: { port: 9000 }, periodSeconds: 2 },
      }),
    );
    const { livenessProbe, readinessProbe, ports } = doc.spec;
    expect(livenessProbe).toEqual({
      http: { path: "/", port: "http" },
      periodSeconds: 10,
      timeoutSeconds: 1,
      failureThreshold: 3,
      successThreshold: 1,
      initialDelaySeconds: 0,
    });
    expect(probeActionOf(livenessProbe!, ports)).toEqual({ kind: "http", path: "/", port: 8080 });
    expect(probeActionOf(readinessProbe!, ports)).toEqual({ kind: "tcp", port: 9000 });
    expect(
      probeActionOf({ ...readinessProbe!, tcp: undefined, exec: { command: ["true"] } }, ports),
    ).toEqual({ kind: "exec", command: ["true"] });
    expect(resolvePort(ports, "metrics")).toBeUndefined();
  });

  it("REQ-022 spread and zone spreading are opt-in", () => {
    const doc = workloadSchema.parse(
      minimal({ placement: { strategy: "spread", spreadAcrossZones: true } }),
    );
    expect(doc.spec.placement.strategy).toBe("spread");
    expect(doc.spec.placement.spreadAcrossZones).toBe(true);
    expect(doc.spec.placement.antiAffinity).toBe(false);
  });
});

describe("published JSON Schema", () => {
  it("NFR-S1 a port may be published on one node address (hostIP), an IPv4 or IPv6 literal", () => {
    const ports = (hostIP: string) => [{ name: "http", containerPort: 8080, hostIP }];
    expect(workloadSchema.parse(minimal({ ports: ports("127.0.0.1") })).spec.ports).toEqual([
      { name: "http", containerPort: 8080, protocol: "tcp", hostIP: "127.0.0.1" },
    ]);
    expect(workloadSchema.safeParse(minimal({ ports: ports("::1") })).success).toBe(true);
    const bad = workloadSchema.safeParse(minimal({ ports: ports("localhost") }));
    expect(bad.success).toBe(false);
    expect(bad.error?.issues.map((issue) => issue.message)).toContain(
      "expected an IP address of the node, such as 127.0.0.1",
    );
  });

  it("REQ-081 the published JSON Schema matches the zod schema", () => {
    const committed: unknown = JSON.parse(
      readFileSync(new URL("../../../schemas/workload.schema.json", import.meta.url), "utf8"),
    );
    // Compared as data: Biome owns the file's layout. On failure: npx tsx scripts/generate-schema.ts
    expect(committed).toEqual(workloadJsonSchema());
  });

  it("REQ-081 the JSON Schema describes the document", () => {
    const schema = workloadJsonSchema() as {
      $id: string;
      title: string;
      type: string;
      required: string[];
      additionalProperties: boolean;
      properties: Record<string, { properties?: Record<string, unknown>; required?: string[] }>;
    };
    expect(schema.$id).toBe(workloadSchemaId);
    expect(schema.title).toContain("Workload");
    expect(schema.type).toBe("object");
    expect(schema.additionalProperties).toBe(false);
    expect(schema.required).toEqual(["apiVersion", "kind", "metadata", "spec"]);
    const spec = schema.properties.spec;
    expect(spec?.required).toEqual(["resources"]);
    expect(Object.keys(spec?.properties ?? {})).toEqual(
      expect.arrayContaining(["image", "command", "replicas", "placement", "rollout"]),
    );
    // Input view: a defaulted field is optional and says its default.
    expect(spec?.properties?.replicas).toMatchObject({ type: "integer", minimum: 0, default: 1 });
  });
});

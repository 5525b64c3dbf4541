import { describe, expect, it } from "vitest";
import { limits } from "../limits.js";
import {
  canonicalSpecJson,
  closestKey,
  formatSpecErrors,
  type ParseWorkloadResult,
  parseWorkloadText,
  parseWorkloadValue,
  specHash,
} from "./parse.js";
import type { WorkloadSpecDocument } from "./spec.js";

const fullYaml = `
apiVersion: cloudless/v1
kind: Workload
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: frontend}
spec:
  image: localhost/web:1
  command: ["/bin/httpd"]
  args: ["-f", "-p", "8080"]
  env: {LOG_LEVEL: debug, PORT: "8080"}
  ports:
    - {name: http, containerPort: 8080, protocol: tcp}
    - {name: dns, containerPort: 53, protocol: udp}
    - {name: dns-tcp, containerPort: 53}
  resources: {cpuMillicores: 250, memoryMiB: 128, storageGiB: 0.5, bandwidthMbps: 10}
  replicas: 3
  minAvailable: 2
  placement:
    strategy: spread
    regions: {required: [eu], preferred: [eu-west]}
    zones: {required: [], preferred: [eu-west-1a]}
    antiAffinity: true
    spreadAcrossZones: true
    nodeSelector: {disk: ssd}
    tolerations:
      - {key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}
      - {key: flaky, operator: Exists}
    rebalance: false
  restartPolicy: OnFailure
  rollout: {maxSurge: 2, maxUnavailable: 1}
  livenessProbe:
    http: {path: /healthz, port: http}
    periodSeconds: 5
    timeoutSeconds: 2
    failureThreshold: 4
    successThreshold: 1
    initialDelaySeconds: 3
  readinessProbe: {tcp: {port: 8080}}
  terminationGracePeriodSeconds: 30
`;

const minimalYaml = `
apiVersion: cloudless/v1
kind: Workload
metadata: {name: web}
spec:
  image: localhost/web:1
  resources: {cpuMillicores: 100, memoryMiB: 64}
  readinessProbe: {exec: {command: [/bin/check]}}
`;

const probeDefaults = {
  periodSeconds: 10,
  timeoutSeconds: 1,
  failureThreshold: 3,
  successThreshold: 1,
  initialDelaySeconds: 0,
};

function parsed(text: string): WorkloadSpecDocument {
  const result = parseWorkloadText(text, "web.yaml");
  if (!result.ok) throw new Error(`unexpected errors:\n${formatSpecErrors(result.errors)}`);
  return result.doc;
}

function errorLines(result: ParseWorkloadResult): string[] {
  return result.ok ? [] : formatSpecErrors(result.errors).split("\n");
}

/** A valid document whose spec body (indented by the caller's lines) replaces the default one. */
function withSpec(specLines: string, metadata = "{name: web}"): string {
  return `apiVersion: cloudless/v1\nkind: Workload\nmetadata: ${metadata}\nspec:\n${specLines}`;
}

const resources = "  resources: {cpuMillicores: 100, memoryMiB: 64}\n";
const image = "  image: localhost/web:1\n";

describe("parseWorkloadText", () => {
  it("REQ-020 REQ-081 accepts a spec with every field and keeps every value", () => {
    const doc = parsed(fullYaml);
    expect(doc).toEqual({
      apiVersion: "cloudless/v1",
      kind: "Workload",
      metadata: { name: "web", namespace: "shop", labels: { app: "web", tier: "frontend" } },
      spec: {
        image: "localhost/web:1",
        command: ["/bin/httpd"],
        args: ["-f", "-p", "8080"],
        env: { LOG_LEVEL: "debug", PORT: "8080" },
        ports: [
          { name: "http", containerPort: 8080, protocol: "tcp" },
          { name: "dns", containerPort: 53, protocol: "udp" },
          { name: "dns-tcp", containerPort: 53, protocol: "tcp" },
        ],
        resources: { cpuMillicores: 250, memoryMiB: 128, storageGiB: 0.5, bandwidthMbps: 10 },
        replicas: 3,
        minAvailable: 2,
        placement: {
          strategy: "spread",
          regions: { required: ["eu"], preferred: ["eu-west"] },
          zones: { required: [], preferred: ["eu-west-1a"] },
          antiAffinity: true,
          spreadAcrossZones: true,
          nodeSelector: { disk: "ssd" },
          tolerations: [
            { key: "dedicated", operator: "Equal", value: "gpu", effect: "NoSchedule" },
            { key: "flaky", operator: "Exists", value: "", effect: "" },
          ],
          rebalance: false,
        },
        restartPolicy: "OnFailure",
        rollout: { maxSurge: 2, maxUnavailable: 1 },
        livenessProbe: {
          http: { path: "/healthz", port: "http" },
          periodSeconds: 5,
          timeoutSeconds: 2,
          failureThreshold: 4,
          successThreshold: 1,
          initialDelaySeconds: 3,
        },
        readinessProbe: { tcp: { port: 8080 }, ...probeDefaults },
        terminationGracePeriodSeconds: 30,
      },
    });
  });

  it("REQ-020 REQ-081 applies the defaults to a minimal spec", () => {
    const doc = parsed(minimalYaml);
    expect(doc.metadata).toEqual({ name: "web", namespace: "default", labels: {} });
    expect(doc.spec.replicas).toBe(1);
    expect(doc.spec.minAvailable).toBe(0);
    expect(doc.spec.restartPolicy).toBe("Always");
    expect(doc.spec.rollout).toEqual({ maxSurge: 1, maxUnavailable: 0 });
    expect(doc.spec.placement.strategy).toBe("binpack");
    expect(doc.spec.resources).toEqual({
      cpuMillicores: 100,
      memoryMiB: 64,
      storageGiB: 0,
      bandwidthMbps: 0,
    });
    expect(doc.spec.readinessProbe).toEqual({
      exec: { command: ["/bin/check"] },
      ...probeDefaults,
    });
    expect(doc.spec.livenessProbe).toBeUndefined();
    expect(doc.spec.terminationGracePeriodSeconds).toBe(10);
  });

  it("REQ-081 JSON input is equivalent to YAML", () => {
    const yamlDoc = parsed(fullYaml);
    const json = JSON.stringify(yamlDoc, null, 2);
    const jsonDoc = parsed(json);
    expect(jsonDoc).toEqual(yamlDoc);
    expect(specHash(jsonDoc)).toBe(specHash(yamlDoc));
    const compact = parseWorkloadText(
      '{"apiVersion":"cloudless/v1","kind":"Workload","metadata":{"name":"web"},' +
        '"spec":{"image":"localhost/web:1","resources":{"cpuMillicores":100,"memoryMiB":64},' +
        '"readinessProbe":{"exec":{"command":["/bin/check"]}}}}',
      "web.json",
    );
    expect(compact).toEqual({ ok: true, doc: parsed(minimalYaml) });
  });

  it("REQ-020 a command without an image is a process workload; with one, an override", () => {
    expect(
      parsed(withSpec(`  command: [/usr/bin/python3, -m, http.server]\n${resources}`)).spec,
    ).toMatchObject({ command: ["/usr/bin/python3", "-m", "http.server"] });
    expect(parsed(withSpec(image + resources)).spec.command).toBeUndefined();
  });

  it("REQ-081 hardening: refuses text over the one spec-size limit (specBytes, in UTF-8 bytes) before parsing it", () => {
    const tooLarge =
      "(document): big.yaml is larger than 256 KiB (limit specBytes); make it smaller " +
      "(move large data out of env, command and args)";
    // 300 KiB: the API always refused it, this parser (1 Mi characters) did not.
    const comment = (bytes: number) => `# ${"x".repeat(bytes)}\n`;
    expect(errorLines(parseWorkloadText(minimalYaml + comment(300 * 1024), "big.yaml"))).toEqual([
      tooLarge,
    ]);
    expect(errorLines(parseWorkloadText(comment(5 * 1024 * 1024), "big.yaml"))).toEqual([tooLarge]);
    // Counted as sent: 100,000 "é" are 100,000 characters but 200,000 bytes.
    const accents = `${minimalYaml}# ${"é".repeat(100_000)}\n`;
    expect(accents.length).toBeLessThan(limits.specBytes);
    expect(parseWorkloadText(accents, "big.yaml").ok).toBe(true);
    expect(
      errorLines(parseWorkloadText(`${accents}# ${"é".repeat(40_000)}\n`, "big.yaml")),
    ).toEqual([tooLarge]);
    // Up to the limit itself a spec is read.
    const padding = limits.specBytes - Buffer.byteLength(minimalYaml) - 3;
    expect(parseWorkloadText(minimalYaml + comment(padding), "big.yaml").ok).toBe(true);
    expect(parseWorkloadText(minimalYaml + comment(padding + 1), "big.yaml").ok).toBe(false);
  });

  it("REQ-081 hardening: replicas above replicasPerWorkload are refused with the limit named, however large", () => {
    const replicas = (value: string) =>
      errorLines(
        parseWorkloadText(withSpec(`${image}${resources}  replicas: ${value}\n`), "w.yaml"),
      );
    const atMost = "spec.replicas: must be at most 10000 (limit replicasPerWorkload)";
    for (const value of ["10001", "1e6", "1000000", "2147483647", "9007199254740993", "1e300"]) {
      expect(replicas(value), value).toEqual([atMost]);
    }
    expect(replicas("10000")).toEqual([]);
    expect(replicas("0")).toEqual([]);
    expect(replicas("-1")).toEqual(["spec.replicas: expected a non-negative integer"]);
    expect(replicas("2.5")).toEqual(["spec.replicas: expected a non-negative integer"]);
    expect(replicas(".inf")).toEqual(["spec.replicas: expected a non-negative integer"]);
  });

  it("REQ-081 hardening: an environment over envBytes is refused with its size and the limit", () => {
    const env = (entries: number, valueBytes: number) =>
      `  env:\n${Array.from({ length: entries }, (_, i) => `    V${i}: "${"v".repeat(valueBytes)}"\n`).join("")}`;
    // 64 entries of "Vnn=" + 1,000 bytes + NUL: 64 × 1,005 or so, under 64 KiB.
    expect(
      errorLines(parseWorkloadText(withSpec(image + resources + env(64, 1000)), "w.yaml")),
    ).toEqual([]);
    const big = parseWorkloadText(withSpec(image + resources + env(80, 1000)), "w.yaml");
    expect(errorLines(big)).toEqual([
      "spec.env: is 80390 bytes; names and values may take at most 65536 (64 KiB) (limit envBytes)",
    ]);
  });

  it("REQ-081 hardening: probe periods, timeouts and delays are bounded by probeSeconds (a Node timer's range)", () => {
    const probe = (field: string, value: string) =>
      errorLines(
        parseWorkloadText(
          withSpec(`${image}${resources}  livenessProbe: {tcp: {port: 80}, ${field}: ${value}}\n`),
          "w.yaml",
        ),
      );
    for (const field of ["periodSeconds", "timeoutSeconds", "initialDelaySeconds"]) {
      expect(probe(field, "86400"), field).toEqual([]);
      expect(probe(field, "1e10"), field).toEqual([
        `spec.livenessProbe.${field}: must be at most 86400 (limit probeSeconds)`,
      ]);
    }
  });

  it("REQ-081 a trailing document separator is not a second workload", () => {
    expect(parseWorkloadText(`${minimalYaml}---\n`, "web.yaml").ok).toBe(true);
  });

  const invalid: Array<[string, string, string[]]> = [
    [
      "a negative memory size",
      withSpec(`${image}  resources: {cpuMillicores: 100, memoryMiB: -1}\n`),
      ["spec.resources.memoryMiB: expected a positive integer"],
    ],
    [
      "a fractional CPU",
      withSpec(`${image}  resources: {cpuMillicores: 0.5, memoryMiB: 64}\n`),
      ["spec.resources.cpuMillicores: expected a positive integer"],
    ],
    [
      "a typo in a field name",
      withSpec(`${image + resources}  replica: 3\n`),
      ['spec: unknown field "replica"; did you mean "replicas"?'],
    ],
    [
      "an unknown field with no close match",
      withSpec(`${image + resources}  sidecars: []\n`),
      ['spec: unknown field "sidecars"'],
    ],
    [
      "a Kubernetes-style resource name",
      withSpec(`${image}  resources: {cpuMillicores: 100, memory: 64}\n`),
      [
        'spec.resources: unknown field "memory"; did you mean "memoryMiB"?',
        "spec.resources.memoryMiB: is required",
      ],
    ],
    [
      "neither image nor command",
      withSpec(resources),
      [
        "spec.image: is required unless command is set (a command without an image runs as a process)",
      ],
    ],
    [
      "an empty command",
      withSpec(`  command: []\n${resources}`),
      ["spec.command: must not be empty"],
    ],
    [
      "a command given as a string",
      withSpec(`  command: /bin/httpd\n${resources}`),
      ["spec.command: expected a list, got a string"],
    ],
    [
      "minAvailable above replicas",
      withSpec(`${image + resources}  replicas: 3\n  minAvailable: 5\n`),
      ["spec.minAvailable: must be at most replicas (3)"],
    ],
    [
      "a name that is not a DNS label",
      withSpec(image + resources, "{name: Web_1}"),
      [
        "metadata.name: must be a DNS label: lowercase letters, digits and '-', starting and " +
          "ending with a letter or digit, at most 63 characters",
      ],
    ],
    [
      "a missing name",
      withSpec(image + resources, "{namespace: prod}"),
      ["metadata.name: is required"],
    ],
    [
      "a probe with two kinds",
      withSpec(`${image + resources}  livenessProbe: {tcp: {port: 80}, exec: {command: [ok]}}\n`),
      ["spec.livenessProbe: must set exactly one of http, tcp or exec, not tcp and exec"],
    ],
    [
      "a probe with no kind",
      withSpec(`${image + resources}  readinessProbe: {periodSeconds: 5}\n`),
      ["spec.readinessProbe: must set exactly one of http, tcp or exec"],
    ],
    [
      "a probe naming an unknown port",
      withSpec(
        `${image + resources}  ports: [{name: http, containerPort: 8080}]\n` +
          "  readinessProbe: {http: {path: /ready, port: metrics}}\n",
      ),
      ['spec.readinessProbe.http.port: no port named "metrics" in spec.ports (known: "http")'],
    ],
    [
      "an unknown restart policy",
      withSpec(`${image + resources}  restartPolicy: Sometimes\n`),
      ["spec.restartPolicy: expected one of Always, OnFailure, Never"],
    ],
    [
      "a rollout that can never progress",
      withSpec(`${image + resources}  rollout: {maxSurge: 0, maxUnavailable: 0}\n`),
      [
        "spec.rollout: maxSurge and maxUnavailable cannot both be 0; a rolling update could " +
          "never replace a replica",
      ],
    ],
    [
      "no surge while every replica must stay available",
      withSpec(
        `${image + resources}  replicas: 2\n  minAvailable: 2\n` +
          "  rollout: {maxSurge: 0, maxUnavailable: 1}\n",
      ),
      [
        "spec.rollout.maxSurge: must be at least 1 when minAvailable equals replicas (2), or a " +
          "rolling update can never proceed",
      ],
    ],
    [
      "duplicate port names and numbers",
      withSpec(
        `${image + resources}  ports:\n` +
          "    - {name: http, containerPort: 8080}\n" +
          "    - {name: http, containerPort: 8081}\n" +
          "    - {name: alt, containerPort: 8080}\n",
      ),
      [
        'spec.ports[1].name: duplicate port name "http"',
        "spec.ports[2].containerPort: duplicate port 8080/tcp",
      ],
    ],
    [
      "REQ-041 a service publishing an unknown port",
      withSpec(
        `${image + resources}  ports: [{name: http, containerPort: 8080}]\n` +
          "  service: {ports: [http, admin]}\n",
      ),
      ['spec.service.ports[1]: no port named "admin" in spec.ports (tcp ports: "http")'],
    ],
    [
      "REQ-041 a service publishing a udp port",
      withSpec(
        `${image + resources}  ports: [{name: dns, containerPort: 53, protocol: udp}]\n` +
          "  service: {ports: [dns]}\n",
      ),
      [
        'spec.service.ports[0]: port "dns" is udp; a service publishes tcp ports only (the mesh is L4 TCP)',
      ],
    ],
    [
      "REQ-042 a service weight above 1000",
      withSpec(`${image + resources}  service: {weight: 1001}\n`),
      ["spec.service.weight: expected an integer from 0 to 1000"],
    ],
    [
      "REQ-041 a service name that is not a DNS label",
      withSpec(`${image + resources}  service: {name: Shop_1}\n`),
      [
        "spec.service.name: must be a DNS label: lowercase letters, digits and '-', starting and " +
          "ending with a letter or digit, at most 63 characters",
      ],
    ],
    [
      "a port out of range",
      withSpec(`${image + resources}  ports: [{name: http, containerPort: 70000}]\n`),
      ["spec.ports[0].containerPort: expected a port number from 1 to 65535"],
    ],
    [
      "an unquoted number in env and a bad variable name",
      withSpec(`${image + resources}  env: {PORT: 8080, 1BAD: x}\n`),
      [
        "spec.env[\"1BAD\"]: is not a valid environment variable name: letters, digits and '_', " +
          "not starting with a digit",
        'spec.env.PORT: expected a string; quote the value, e.g. "8080"',
      ],
    ],
    [
      "a toleration with Exists and a value",
      withSpec(
        `${image + resources}  placement: {tolerations: [{key: gpu, operator: Exists, value: x}]}\n`,
      ),
      ["spec.placement.tolerations[0].value: must be omitted when operator is Exists"],
    ],
    [
      "a wrong apiVersion and kind",
      withSpec(image + resources)
        .replace("cloudless/v1", "apps/v1")
        .replace("Workload", "Deployment"),
      ["apiVersion: must be cloudless/v1", "kind: must be Workload"],
    ],
    [
      "a YAML syntax error",
      "apiVersion: cloudless/v1\nkind: Workload\nmetadata: {name: web\nspec: {}\n",
      [
        "(document): YAML syntax error at web.yaml:4:1: Flow map in block collection must be " +
          "sufficiently indented and end with a }",
      ],
    ],
    [
      "a duplicate key",
      "apiVersion: cloudless/v1\napiVersion: cloudless/v1\n",
      ["(document): YAML syntax error at web.yaml:2:1: Map keys must be unique"],
    ],
    [
      "an empty file",
      "",
      [
        "(document): web.yaml is empty; expected a mapping with apiVersion, kind, metadata and spec",
      ],
    ],
    [
      "a file with only comments",
      "# nothing here\n",
      [
        "(document): web.yaml is empty; expected a mapping with apiVersion, kind, metadata and spec",
      ],
    ],
    [
      "a list instead of a mapping",
      "- apiVersion: cloudless/v1\n",
      ["(document): expected a mapping with apiVersion, kind, metadata and spec, got a list"],
    ],
    [
      "two documents",
      `${minimalYaml}---\n${minimalYaml}`,
      ["(document): one workload per file: web.yaml holds 2 YAML documents"],
    ],
    [
      "an unknown top-level field",
      `${minimalYaml}apiversion: cloudless/v1\n`,
      ['(document): unknown field "apiversion"; did you mean "apiVersion"?'],
    ],
  ];

  it.each(invalid)("REQ-081 rejects %s, naming the field", (_name, text, expected) => {
    const result = parseWorkloadText(text, "web.yaml");
    expect(result.ok).toBe(false);
    expect(errorLines(result)).toEqual(expected);
  });

  it("REQ-081 reports every error at once, sorted by path and without duplicates", () => {
    const text = withSpec(
      "  replica: 3\n" +
        "  resources: {cpuMillicores: -5, memoryMiB: 1.5, storageGiB: -1}\n" +
        "  restartPolicy: Sometimes\n" +
        "  ports: [{name: http, containerPort: 8080}, {name: http, containerPort: 0}]\n" +
        "  livenessProbe: {http: {port: metrics}}\n" +
        "  terminationGracePeriodSeconds: 4000\n",
      "{name: Web_1, namespace: prod}",
    );
    expect(errorLines(parseWorkloadText(text, "web.yaml"))).toEqual([
      "metadata.name: must be a DNS label: lowercase letters, digits and '-', starting and ending " +
        "with a letter or digit, at most 63 characters",
      'spec: unknown field "replica"; did you mean "replicas"?',
      "spec.image: is required unless command is set (a command without an image runs as a process)",
      'spec.livenessProbe.http.port: no port named "metrics" in spec.ports (known: "http")',
      "spec.ports[1].containerPort: expected a port number from 1 to 65535",
      'spec.ports[1].name: duplicate port name "http"',
      "spec.resources.cpuMillicores: expected a positive integer",
      "spec.resources.memoryMiB: expected a positive integer",
      "spec.resources.storageGiB: expected a non-negative number",
      "spec.restartPolicy: expected one of Always, OnFailure, Never",
      "spec.terminationGracePeriodSeconds: expected an integer from 0 to 3600 (limit terminationGracePeriodSeconds)",
    ]);
  });

  it("REQ-081 sorts indices numerically", () => {
    const ports = Array.from(
      { length: 11 },
      (_, i) => `    - {name: p${i}, containerPort: ${i === 2 || i === 10 ? 0 : 1000 + i}}\n`,
    ).join("");
    const result = parseWorkloadText(withSpec(`${image + resources}  ports:\n${ports}`), "w.yaml");
    expect(errorLines(result)).toEqual([
      "spec.ports[2].containerPort: expected a port number from 1 to 65535",
      "spec.ports[10].containerPort: expected a port number from 1 to 65535",
    ]);
  });
});

describe("parseWorkloadValue", () => {
  it("REQ-081 validates an already decoded document the same way", () => {
    expect(parseWorkloadValue(JSON.parse(JSON.stringify(parsed(fullYaml))))).toEqual({
      ok: true,
      doc: parsed(fullYaml),
    });
    expect(errorLines(parseWorkloadValue("web"))).toEqual([
      "(document): expected a mapping with apiVersion, kind, metadata and spec, got a string",
    ]);
    expect(errorLines(parseWorkloadValue({}))).toEqual([
      "apiVersion: is required",
      "kind: is required",
      "metadata: is required",
      "spec: is required",
    ]);
  });
});

describe("specHash", () => {
  const base = parsed(minimalYaml);

  it("REQ-081 ignores key order and explicitly written defaults", () => {
    const reordered = parsed(`
spec:
  readinessProbe: {exec: {command: [/bin/check]}}
  resources: {memoryMiB: 64, cpuMillicores: 100}
  image: localhost/web:1
metadata: {name: web}
kind: Workload
apiVersion: cloudless/v1
`);
    const explicit = parsed(`${minimalYaml}  replicas: 1
  minAvailable: 0
  restartPolicy: Always
  rollout: {maxSurge: 1, maxUnavailable: 0}
  placement: {strategy: binpack, antiAffinity: false, nodeSelector: {}, tolerations: []}
  env: {}
  args: []
  terminationGracePeriodSeconds: 10
`);
    expect(specHash(reordered)).toBe(specHash(base));
    expect(specHash(explicit)).toBe(specHash(base));
    expect(canonicalSpecJson(explicit)).toBe(canonicalSpecJson(base));
    expect(specHash(base)).toMatch(/^[0-9a-f]{16}$/);
  });

  it("REQ-081 changes when the spec changes", () => {
    const otherImage = parsed(minimalYaml.replace("localhost/web:1", "localhost/web:2"));
    const scaled = parsed(`${minimalYaml}  replicas: 2\n`);
    expect(specHash(otherImage)).not.toBe(specHash(base));
    expect(specHash(scaled)).not.toBe(specHash(base));
  });

  it("REQ-081 canonical JSON sorts keys at every level", () => {
    const json = canonicalSpecJson(base);
    expect(
      json.startsWith('{"apiVersion":"cloudless/v1","kind":"Workload","metadata":{"labels"'),
    ).toBe(true);
    expect(JSON.parse(json)).toEqual(base);
  });
  it("REQ-081 contract: a fixed vector keeps the hash of a stored spec (one canonical JSON, ADR 0038)", () => {
    // Computed by parse.ts before canonical JSON moved to lib/canonicalJson.ts: a spec
    // applied before the move must hash the same after it, or re-applying it unchanged
    // would start a rollout. Index-like label keys ("2", "10") are where copies differed.
    const stored = parsed(`
apiVersion: cloudless/v1
kind: Workload
metadata:
  name: vec
  namespace: shop
  labels: {"10": ten, "x.y/z": "ä€😀", "2": two, "1a": one-a, app: web, Zed: upper}
spec:
  image: localhost/web:1
  command: ["/bin/httpd", "-x"]
  env: {B: "2", A: "é\\u0001\\"q\\"", _9: nine}
  ports:
    - {name: http, containerPort: 8080}
  resources: {cpuMillicores: 250, memoryMiB: 128, storageGiB: 0.5}
  replicas: 2
  placement:
    nodeSelector: {"3": x, "20": y, disk: ssd}
  readinessProbe: {tcp: {port: 8080}}
`);
    expect(canonicalSpecJson(stored)).toBe(
      '{"apiVersion":"cloudless/v1","kind":"Workload","metadata":{"labels":{"2":"two","10":"ten","1a":"one-a","Zed":"upper","app":"web","x.y/z":"ä€😀"},"name":"vec","namespace":"shop"},"spec":{"args":[],"command":["/bin/httpd","-x"],"env":{"A":"é\\u0001\\"q\\"","B":"2","_9":"nine"},"image":"localhost/web:1","minAvailable":1,"placement":{"antiAffinity":false,"nodeSelector":{"3":"x","20":"y","disk":"ssd"},"rebalance":true,"regions":{"preferred":[],"required":[]},"spreadAcrossZones":false,"strategy":"binpack","tolerations":[],"zones":{"preferred":[],"required":[]}},"ports":[{"containerPort":8080,"name":"http","protocol":"tcp"}],"readinessProbe":{"failureThreshold":3,"initialDelaySeconds":0,"periodSeconds":10,"successThreshold":1,"tcp":{"port":8080},"timeoutSeconds":1},"replicas":2,"resources":{"bandwidthMbps":0,"cpuMillicores":250,"memoryMiB":128,"storageGiB":0.5},"restartPolicy":"Always","rollout":{"maxSurge":1,"maxUnavailable":0},"terminationGracePeriodSeconds":10}}',
    );
    expect(specHash(stored)).toBe("34c0dd0fcb78f415");
  });
});

describe("closestKey", () => {
  it.each([
    ["replica", "replicas"],
    ["iamge", "image"],
    ["ContainerPort", "containerPort"],
    ["memory", "memoryMiB"],
    ["cpu", "cpuMillicores"],
    ["sidecars", undefined],
  ])("REQ-081 suggests a close field for %s", (typo, expected) => {
    const known = ["replicas", "image", "containerPort", "memoryMiB", "cpuMillicores", "command"];
    expect(closestKey(typo, known)).toBe(expected);
  });
});

describe("spec.securityContext (REQ-062)", () => {
  const refused = (value: string) =>
    errorLines(
      parseWorkloadText(withSpec(`${image}${resources}  securityContext: ${value}\n`), "web.yaml"),
    ).join("\n");

  it("REQ-062 takes runAsUser, capabilities with or without CAP_, a read-only root and a seccomp profile; absent stays absent so existing workloads keep their hash", () => {
    const doc = parsed(
      withSpec(
        `${image}${resources}  securityContext: {runAsUser: 0, capabilitiesAdd: [NET_BIND_SERVICE, CAP_NET_RAW], readOnlyRootFilesystem: true, seccompProfile: unconfined}\n`,
      ),
    );
    expect(doc.spec.securityContext).toEqual({
      runAsUser: 0,
      capabilitiesAdd: ["NET_BIND_SERVICE", "CAP_NET_RAW"],
      readOnlyRootFilesystem: true,
      seccompProfile: "unconfined",
    });
    const plain = parsed(withSpec(`${image}${resources}`));
    expect(plain.spec.securityContext).toBeUndefined();
    expect(canonicalSpecJson(plain)).not.toContain("securityContext");
    // An empty section writes no defaults either.
    expect(
      parsed(withSpec(`${image}${resources}  securityContext: {}\n`)).spec.securityContext,
    ).toEqual({});
  });

  it("REQ-062 refuses an unknown capability, a uid out of range, an unknown profile and an unknown field, each in one line", () => {
    expect(refused("{capabilitiesAdd: [NET_RAWW]}")).toMatch(
      /spec\.securityContext\.capabilitiesAdd\[0\]: "NET_RAWW" is not a Linux capability; use a name such as NET_BIND_SERVICE/,
    );
    expect(refused("{capabilitiesAdd: [net_raw]}")).toMatch(/is not a Linux capability/);
    expect(refused("{runAsUser: -1}")).toMatch(
      /spec\.securityContext\.runAsUser: expected an integer uid from 0 to 2147483647/,
    );
    expect(refused("{runAsUser: 2147483648}")).toMatch(/expected an integer uid/);
    expect(refused("{runAsUser: 1.5}")).toMatch(/expected an integer uid/);
    expect(refused("{seccompProfile: localhost/mine}")).toMatch(
      /spec\.securityContext\.seccompProfile: expected default or unconfined/,
    );
    expect(refused("{privileged: true}")).toMatch(/unknown field "privileged"/);
  });
});

describe("spec.secrets (REQ-063)", () => {
  it("REQ-063 lists secrets by name; absent stays absent so existing workloads keep their hash", () => {
    expect(
      parsed(withSpec(`${image}${resources}  secrets: [{name: db}, {name: api-token}]\n`)).spec
        .secrets,
    ).toEqual([{ name: "db" }, { name: "api-token" }]);
    expect(parsed(withSpec(`${image}${resources}`)).spec.secrets).toBeUndefined();
  });

  it("REQ-063 refuses a bad or repeated name, an unknown field and more than secretsPerWorkload", () => {
    const refused = (secrets: string) =>
      errorLines(
        parseWorkloadText(withSpec(`${image}${resources}  secrets: ${secrets}\n`), "web.yaml"),
      );
    expect(refused("[{name: Bad_Name}]").join("\n")).toMatch(
      /spec\.secrets\[0\]\.name: must be a DNS label/,
    );
    expect(refused("[{name: db}, {name: db}]").join("\n")).toMatch(/names a secret twice/);
    expect(refused("[{name: db, value: x}]").join("\n")).toMatch(/unknown field "value"/);
    const many = `[${Array.from({ length: limits.secretsPerWorkload + 1 }, (_, i) => `{name: s${i}}`).join(", ")}]`;
    expect(refused(many).join("\n")).toMatch(/secretsPerWorkload/);
  });
});

describe("spec.secrets mounts and env, spec.configs (REQ-063, configuration with hot reload)", () => {
  const refused = (field: string, value: string) =>
    errorLines(
      parseWorkloadText(withSpec(`${image}${resources}  ${field}: ${value}\n`), "web.yaml"),
    ).join("\n");

  it("REQ-063 takes a mount path and environment variables from keys of a secret", () => {
    expect(
      parsed(
        withSpec(
          `${image}${resources}  secrets: [{name: db, mountPath: /etc/db, env: [{name: DB_PASSWORD, key: password}]}]\n`,
        ),
      ).spec.secrets,
    ).toEqual([
      { name: "db", mountPath: "/etc/db", env: [{ name: "DB_PASSWORD", key: "password" }] },
    ]);
  });

  it("REQ-063 refuses a relative or '..' mount path and a bad environment variable name", () => {
    expect(refused("secrets", "[{name: db, mountPath: run/db}]")).toMatch(
      /spec\.secrets\[0\]\.mountPath: must be an absolute path/,
    );
    expect(refused("secrets", "[{name: db, mountPath: /run/../etc}]")).toMatch(
      /must be an absolute path without '\.\.'/,
    );
    expect(refused("secrets", "[{name: db, env: [{name: 1X, key: a}]}]")).toMatch(
      /must be an environment variable name/,
    );
  });

  it("configs default to onChange reload; restart is taken; repeats and unknown values are refused", () => {
    expect(
      parsed(
        withSpec(
          `${image}${resources}  configs: [{name: app}, {name: rules, onChange: restart}]\n`,
        ),
      ).spec.configs,
    ).toEqual([
      { name: "app", onChange: "reload" },
      { name: "rules", onChange: "restart" },
    ]);
    expect(parsed(withSpec(`${image}${resources}`)).spec.configs).toBeUndefined();
    expect(refused("configs", "[{name: app}, {name: app}]")).toMatch(/names a config twice/);
    expect(refused("configs", "[{name: app, onChange: sometimes}]")).toMatch(
      /spec\.configs\[0\]\.onChange/,
    );
  });
});

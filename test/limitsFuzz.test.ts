/**
 * A property test of the limits (issue 12): fast-check throws random and extreme workload
 * specs — huge and fractional numbers, negative counts, huge strings, environments and
 * label sets, deep nesting, 5 MB bodies — at apply, dry run, scale and status of one real
 * coordinator through the real API client. Every answer must be an answer (a result or a
 * clean InvalidArgument or NotFound, never Internal, a timeout or a dropped connection),
 * the coordinator must answer a ListNodes after each, and its memory must stay bounded.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify as yamlStringify } from "yaml";
import { WorkloadView } from "../src/api/gen/cloudless/v1/workload_pb.js";
import { limits } from "../src/api/limits.js";
import type { CoordinatorClients } from "../src/client/transport.js";
import { TestCluster } from "./helpers/cluster.js";
import { rssMiB } from "./helpers/memory.js";
import { TestResources } from "./helpers/processes.js";
import { adminClients } from "./helpers/workloads.js";

/**
 * Operations per run: each is one request and a ListNodes; with the few 5 MB bodies and
 * the controller writing up to 20,000 replica records meanwhile, about 20 s on 2 cores.
 */
const runs = Number(process.env.FUZZ_RUNS ?? 60);

/**
 * The coordinator's resident set may not pass this. Idle it is about 95 MiB; the runs
 * may leave two workloads at the replicasPerWorkload limit, whose 20,000 pending replica
 * records the leader keeps in memory (about 2 KiB each with their parsed copies: 40 MiB)
 * and whose store pages SQLite caches; the rest is V8's headroom for 5 MB requests. Runs
 * of 60 operations peaked at 200–250 MiB, one of 250 at 316 MiB. The unfixed coordinator
 * passed 5 GiB on one request.
 */
const rssBoundMiB = 400;

/** Real applies go to these two names, so at most two workloads ever hold replicas. */
const names = ["fz-a", "fz-b"] as const;

const extremeNumbers = [
  limits.replicasPerWorkload,
  limits.replicasPerWorkload + 1,
  1e6,
  2_147_483_647,
  2 ** 31,
  2 ** 53,
  2 ** 53 + 2,
  1e300,
  -1,
  -(2 ** 31),
  0.5,
  Number.MIN_VALUE,
  Number.MAX_VALUE,
];

/** A number a careless or hostile writer might put anywhere a count goes, or not a number. */
const anyCount: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 5 }) },
  { weight: 3, arbitrary: fc.constantFrom(...extremeNumbers) },
  { weight: 1, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }) },
  { weight: 1, arbitrary: fc.constantFrom<unknown>("10", null, [], {}, true) },
);

/** Strings from empty to past the spec limit (256 KiB). */
const anyString: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1_000, max: 300_000 }).map((n) => "x".repeat(n)) },
);

/** One field may also carry 5 MB, past the request limit (4 MiB) too. */
const hugeString: fc.Arbitrary<string> = fc.oneof(
  { weight: 8, arbitrary: anyString },
  { weight: 1, arbitrary: fc.constant("y".repeat(5_000_000)) },
);

/** Nested lists, `depth` deep, as a value (for JSON, YAML or a structured spec). */
function nested(depth: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

const wildFields = {
  replicas: anyCount,
  cpuMillicores: anyCount,
  memoryMiB: anyCount,
  periodSeconds: anyCount,
  image: hugeString,
  env: fc.dictionary(fc.stringMatching(/^[A-Z_][A-Z0-9_]{0,8}$/), anyString, { maxKeys: 20 }),
  labels: fc.dictionary(fc.string({ maxLength: 70 }), fc.string({ maxLength: 300 }), {
    maxKeys: 80,
  }),
  args: fc.array(anyString, { maxLength: 5 }),
  nestedDepth: fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 40, max: 3_000 })),
  namespace: fc.constantFrom("default", "fuzz", "Not A Namespace", "n".repeat(100)),
};

/** Values within every limit, the largest ones included. */
const validFields = {
  replicas: fc.oneof(
    fc.integer({ min: 0, max: 5 }),
    fc.constantFrom(limits.replicasPerWorkload - 1, limits.replicasPerWorkload),
  ),
  periodSeconds: fc.constantFrom(1, 10, limits.probeSeconds),
  image: fc.constantFrom("localhost/fuzz:1", "registry.example/a/b:latest"),
  env: fc.dictionary(fc.stringMatching(/^[A-Z_][A-Z0-9_]{0,8}$/), fc.string({ maxLength: 100 }), {
    maxKeys: 10,
  }),
  labels: fc.dictionary(fc.stringMatching(/^[a-z][a-z0-9]{0,10}$/), fc.string({ maxLength: 50 }), {
    maxKeys: 10,
  }),
};

/**
 * One random spec: within every limit, or valid but for its replica count, or with one
 * wild field, or with several; the first kind makes workloads to scale and read, the
 * others probe every refusal.
 */
const specArb = fc
  .oneof(
    { weight: 3, arbitrary: fc.record(validFields, { requiredKeys: [] }) },
    // What took the unfixed coordinator down: a valid spec asking for too many replicas.
    {
      weight: 2,
      arbitrary: fc.record({
        ...validFields,
        replicas: fc.oneof(
          fc.constantFrom(limits.replicasPerWorkload + 1, 1e6, 2_147_483_647, 2 ** 53 - 1),
          fc.integer({ min: limits.replicasPerWorkload + 1, max: 2_147_483_647 }),
        ),
      }),
    },
    {
      weight: 3,
      arbitrary: fc
        .constantFrom(...(Object.keys(wildFields) as Array<keyof typeof wildFields>))
        .chain((field) => fc.record({ [field]: wildFields[field] })),
    },
    { weight: 2, arbitrary: fc.record(wildFields, { requiredKeys: [] }) },
  )
  .map((wild: Partial<Record<string, unknown>>) => ({ wild, doc: buildSpec(wild) }));

function buildSpec(wild: Partial<Record<string, unknown>>): Record<string, unknown> {
  const spec: Record<string, unknown> = {
    command: ["sleep", "3600"],
    resources: {
      cpuMillicores: "cpuMillicores" in wild ? wild.cpuMillicores : 10,
      memoryMiB: "memoryMiB" in wild ? wild.memoryMiB : 8,
    },
    replicas: "replicas" in wild ? wild.replicas : 1,
  };
  if ("image" in wild) spec.image = wild.image;
  if ("env" in wild) spec.env = wild.env;
  if ("args" in wild) spec.args = wild.args;
  if ("periodSeconds" in wild) {
    spec.livenessProbe = { exec: { command: ["true"] }, periodSeconds: wild.periodSeconds };
  }
  if ("nestedDepth" in wild) spec.x = nested(wild.nestedDepth as number);
  return {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: {
      name: names[0],
      ...("namespace" in wild ? { namespace: wild.namespace } : {}),
      ...("labels" in wild ? { labels: wild.labels } : {}),
    },
    spec,
  };
}

type Operation =
  | {
      kind: "apply";
      name: string;
      dryRun: boolean;
      format: "json" | "yaml" | "struct";
      spec: { wild: object; doc: Record<string, unknown> };
    }
  | { kind: "scale"; name: string; replicas: number }
  | { kind: "status"; name: string };

const nameArb = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(...names) },
  { weight: 1, arbitrary: fc.constantFrom("missing", "Bad_Name", "z".repeat(70_000)) },
);

const operationArb: fc.Arbitrary<Operation> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant("apply" as const),
      name: nameArb,
      dryRun: fc.boolean(),
      format: fc.constantFrom("json" as const, "yaml" as const, "struct" as const),
      spec: specArb,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("scale" as const),
      name: nameArb,
      // int32 on the wire: the extremes the field can carry.
      replicas: fc.oneof(
        fc.integer({ min: 0, max: limits.replicasPerWorkload }),
        fc.constantFrom(limits.replicasPerWorkload + 1, 2_147_483_647, -1, -(2 ** 31)),
      ),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("status" as const), name: nameArb }) },
);

/** The request body a client would send for this apply. */
function applyRequest(op: Extract<Operation, { kind: "apply" }>) {
  const doc = {
    ...op.spec.doc,
    metadata: { ...(op.spec.doc.metadata as object), name: op.name },
  };
  const depth = "nestedDepth" in op.spec.wild ? Number(op.spec.wild.nestedDepth) : 0;
  // The client itself cannot serialize a structured spec or YAML thousands of levels
  // deep (its own stack ends); those go as JSON text, which any client can send.
  if (op.format === "struct" && depth <= 100) return { spec: doc as never, dryRun: op.dryRun };
  if (op.format === "yaml" && depth <= 100) {
    return { specText: yamlStringify(doc), dryRun: op.dryRun };
  }
  return { specText: JSON.stringify(doc), dryRun: op.dryRun };
}

/** Codes that are an answer: a refusal of the input or of a name that does not exist. */
const answers = new Set([Code.InvalidArgument, Code.NotFound]);

describe("limits fuzz against a real coordinator", () => {
  let resources: TestResources;
  let cluster: TestCluster;
  let api: CoordinatorClients;

  beforeAll(async () => {
    resources = new TestResources();
    cluster = await TestCluster.start(resources);
    api = await adminClients(cluster.configPath);
  });
  afterAll(async () => {
    await resources.cleanup();
  });

  it("NFR-S1 REQ-080 REQ-081 hardening fuzz: random and extreme specs at apply, dry run, scale and status get answers, the coordinator keeps answering and its memory stays bounded", async () => {
    const rssAtStart = await rssMiB(cluster.coordinator.pid);
    let rssPeak = rssAtStart;
    const outcomes = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(operationArb, async (op) => {
        let outcome = "ok";
        try {
          if (op.kind === "apply") {
            await api.workloads.applyWorkload(applyRequest(op));
          } else if (op.kind === "scale") {
            await api.workloads.scaleWorkload({ name: op.name, replicas: op.replicas });
          } else {
            await api.workloads.getWorkload({ name: op.name });
            await api.workloads.listWorkloads({ view: WorkloadView.BASIC });
          }
        } catch (error) {
          const refused = ConnectError.from(error);
          // Anything else — Internal, a deadline, a reset stream, 429 — is a failure.
          expect(
            answers.has(refused.code),
            `${op.kind}: ${Code[refused.code]} ${refused.rawMessage.slice(0, 300)}`,
          ).toBe(true);
          expect(refused.rawMessage.length, "a refusal is short").toBeLessThan(4_000);
          outcome = Code[refused.code];
        }
        const key = `${op.kind}${op.kind === "apply" && op.dryRun ? " (dry run)" : ""}: ${outcome}`;
        outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
        expect(cluster.coordinator.running, cluster.coordinator.stderr.slice(-2_000)).toBe(true);
        expect((await api.nodes.listNodes({})).nodes).toEqual([]);
        rssPeak = Math.max(rssPeak, await rssMiB(cluster.coordinator.pid));
        expect(rssPeak).toBeLessThan(rssBoundMiB);
      }),
      { numRuns: runs, endOnFailure: true },
    );
    const rssAtEnd = await rssMiB(cluster.coordinator.pid);
    const counts = [...outcomes].sort().map(([key, n]) => `  ${key}: ${n}`);
    console.log(
      `limits fuzz: ${runs} operations; coordinator RSS ${rssAtStart} MiB at start, peak ${rssPeak} MiB, ${rssAtEnd} MiB at the end (bound ${rssBoundMiB} MiB)\n${counts.join("\n")}`,
    );
    // The runs must have tried both sides of the limits, not only refusals.
    expect([...outcomes.keys()].some((key) => key.startsWith("apply") && key.endsWith("ok"))).toBe(
      true,
    );
    expect([...outcomes.keys()].some((key) => key.endsWith("InvalidArgument"))).toBe(true);
  });
});

import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  fastAgentFlags,
  removeProcessReplicas,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { OtlpReceiver, type ReceivedSpan } from "./helpers/otlp.js";
import { type ManagedProcess, TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

const applyName = "cloudless.v1.WorkloadService/ApplyWorkload";
const nodeName = "traced-node";
const SERVER = 2;
const CLIENT = 3;
const ERROR = 2;

/** The span's ancestors within the received spans, nearest first. */
function ancestors(spans: ReceivedSpan[], span: ReceivedSpan): ReceivedSpan[] {
  const byId = new Map(spans.map((s) => [`${s.traceId}/${s.spanId}`, s]));
  const chain: ReceivedSpan[] = [];
  let current = span;
  while (current.parentSpanId) {
    const parent = byId.get(`${current.traceId}/${current.parentSpanId}`);
    if (!parent || chain.includes(parent)) break;
    chain.push(parent);
    current = parent;
  }
  return chain;
}

function describeSpans(spans: ReceivedSpan[]): string {
  return spans
    .map((s) => `${s.service} ${s.name} ${s.traceId}/${s.spanId} parent=${s.parentSpanId}`)
    .join("\n");
}

/** The JSON log lines of a process's stderr (other lines are skipped). */
function logLines(stderr: string): Record<string, unknown>[] {
  return stderr
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .flatMap((line) => {
      try {
        return [JSON.parse(line) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
}

describe("OpenTelemetry traces", () => {
  let resources: TestResources;
  let receiver: OtlpReceiver | undefined;
  let agent: ManagedProcess | undefined;
  let agentDir: string | undefined;

  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    try {
      // The agent first (a graceful stop takes its replicas down), then any replica that
      // survived, then the coordinator, the directories and the receiver.
      await agent?.stop(10_000);
      if (agentDir) await removeProcessReplicas([agentDir]);
      await resources.cleanup();
    } finally {
      await receiver?.close();
      receiver = undefined;
      agent = undefined;
      agentDir = undefined;
    }
  });

  it("REQ-070 apply → placement → replica start → driver start is one trace across coordinator and agent, exported over OTLP/HTTP", async () => {
    const otlp = await OtlpReceiver.start();
    receiver = otlp;
    const env = {
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint,
      OTEL_BSP_SCHEDULE_DELAY: "200",
    };
    const cluster = await TestCluster.start(resources, ["--log-level", "debug"], env);
    agentDir = await cluster.agentDir(nodeName);
    agent = await cluster.startAgent(nodeName, {
      token: await cluster.createToken(),
      extra: [...fastAgentFlags, "--driver", "process"],
      env,
    });
    await cluster.waitForStatus(nodeName, "Ready", 30_000);

    const dir = await resources.tempDir("cloudless-trace-spec-");
    const file = await writeSpec(
      dir,
      "traced",
      workloadDoc("traced", "tracing", {
        command: [process.execPath, "-e", "setInterval(() => {}, 1000)"],
        replicas: 1,
      }),
    );
    const applied = await cluster.cli(["workload", "apply", "-f", file]);
    expect(applied.code, applied.stderr).toBe(0);
    const workload = await waitForWorkload(
      cluster,
      "tracing",
      "traced",
      "its replica Running",
      (w) => w.replicas.length === 1 && w.replicas[0]?.phase === "Running",
    );
    const replicaId = workload.replicas[0]?.id ?? "";

    // Everything below is found in what the two processes exported.
    const found = await waitFor(
      "the apply, placement, replica start and driver start spans",
      () => {
        const spans = otlp.spans;
        const apply = spans.find((s) => s.name === applyName);
        const place = spans.find(
          (s) => s.name === "replica.place" && s.attributes["cloudless.replica.id"] === replicaId,
        );
        const start = spans.find(
          (s) => s.name === "replica.start" && s.attributes["cloudless.replica.id"] === replicaId,
        );
        const driverStart = start
          ? spans.find((s) => s.name === "driver.start" && s.parentSpanId === start.spanId)
          : undefined;
        return apply && place && start && driverStart
          ? { apply, place, start, driverStart }
          : undefined;
      },
      30_000,
      100,
    ).catch((error: unknown) => {
      throw new Error(`${String(error)}; received:\n${describeSpans(otlp.spans)}`);
    });
    const { apply, place, start, driverStart } = found;
    const spans = otlp.spans;
    expect(otlp.rejected).toEqual([]);

    // The API call: a SERVER span of the coordinator with the RPC conventions.
    expect(apply.service).toBe("cloudless-coordinator");
    expect(apply.kind).toBe(SERVER);
    expect(apply.attributes).toMatchObject({
      "rpc.system": "connect_rpc",
      "rpc.service": "cloudless.v1.WorkloadService",
      "rpc.method": "ApplyWorkload",
      "rpc.response.status_code": "ok",
      "cloudless.peer": "admin/admin",
    });
    // Its store operations are its children.
    const applyStoreSpans = spans.filter(
      (s) => s.parentSpanId === apply.spanId && s.name.startsWith("store."),
    );
    expect(applyStoreSpans.map((s) => s.name)).toContain("store.txn");
    expect(applyStoreSpans.every((s) => s.kind === CLIENT)).toBe(true);
    expect(applyStoreSpans.find((s) => s.name === "store.get")?.attributes).toMatchObject({
      "db.system.name": "sqlite",
      "db.operation.name": "get",
      "db.collection.name": "workloads",
    });
    // The write: the workload and its first revision in one transaction.
    expect(
      applyStoreSpans.some(
        (s) => s.name === "store.txn" && s.attributes["db.operation.batch.size"] === 2,
      ),
    ).toBe(true);

    // The placement: same trace, its parent chain leads to the apply.
    expect(place.service).toBe("cloudless-coordinator");
    expect(place.traceId).toBe(apply.traceId);
    expect(ancestors(spans, place)).toContain(apply);
    expect(place.parentSpanId).toBe(apply.spanId);
    expect(place.attributes).toMatchObject({
      "cloudless.workload": "tracing/traced",
      "cloudless.node": nodeName,
      "cloudless.placement.committed": true,
    });

    // The controller pass that placed it is its own trace: pass → schedule, commit_plan;
    // the placement links to the commit.
    const commit = spans.find(
      (s) =>
        s.name === "controller.commit_plan" &&
        place.links.some((l) => l.traceId === s.traceId && l.spanId === s.spanId),
    );
    expect(commit, describeSpans(spans)).toBeDefined();
    const pass = commit ? ancestors(spans, commit)[0] : undefined;
    expect(pass?.name).toBe("controller.pass");
    expect(pass?.parentSpanId).toBe("");
    const schedule = spans.find(
      (s) => s.name === "controller.schedule" && s.parentSpanId === pass?.spanId,
    );
    expect(schedule?.attributes).toMatchObject({
      "cloudless.scheduler.pending": 1,
      "cloudless.scheduler.placements": 1,
    });
    // The replica was created by a reconcile step of a pass (normally this same one).
    const passIds = new Set(spans.filter((s) => s.name === "controller.pass").map((s) => s.spanId));
    expect(
      spans.some((s) => s.name === "controller.reconcile" && passIds.has(s.parentSpanId)),
    ).toBe(true);

    // The agent's start of the replica: a child of the placement, in the same trace.
    expect(start.service).toBe("cloudless-agent");
    expect(start.resource["cloudless.node"]).toBe(nodeName);
    expect(start.traceId).toBe(apply.traceId);
    expect(start.parentSpanId).toBe(place.spanId);
    expect(start.statusCode).not.toBe(ERROR);
    expect(start.attributes).toMatchObject({
      "cloudless.driver": "process",
      "cloudless.workload": "tracing/traced",
      "cloudless.replica.restart": false,
    });
    // …and the driver call under it.
    expect(driverStart.service).toBe("cloudless-agent");
    expect(driverStart.traceId).toBe(apply.traceId);
    expect(driverStart.attributes).toMatchObject({
      "cloudless.driver": "process",
      "cloudless.replica.id": replicaId,
    });
    expect(ancestors(spans, driverStart).map((s) => s.name)).toEqual([
      "replica.start",
      "replica.place",
      applyName,
    ]);

    // Heartbeats are a stream: no span per beat (nor per stream).
    expect(spans.some((s) => s.name.endsWith("/Heartbeat"))).toBe(false);

    // Log lines about the request carry its request ID and trace ID.
    const applyLogs = logLines(cluster.coordinator.stderr).filter(
      (line) => line.method === applyName,
    );
    expect(applyLogs.length).toBeGreaterThan(0);
    expect(applyLogs.every((line) => line.traceId === apply.traceId)).toBe(true);
    expect(applyLogs.every((line) => typeof line.reqId === "string")).toBe(true);
    expect(applyLogs[0]?.reqId).toBe(apply.attributes["cloudless.request_id"]);
    expect(applyLogs[0]).toMatchObject({ level: "debug", component: "coordinator" });
    // The agent's "replica started" line is in the replica's trace.
    const started = logLines(agent.stderr).find(
      (line) => line.msg === "replica started" && line.replica === replicaId,
    );
    expect(started).toMatchObject({ traceId: start.traceId, spanId: start.spanId });
  });
});

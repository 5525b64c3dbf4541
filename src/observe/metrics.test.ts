import { describe, expect, it } from "vitest";
import {
  countBy,
  createAgentMetrics,
  createCoordinatorMetrics,
  nodeStatuses,
  replicaPhases,
  writeMetrics,
} from "./metrics.js";

/** Metric families in an exposition: name → type, from the # TYPE lines. */
function families(exposition: string): Map<string, string> {
  const found = new Map<string, string>();
  for (const match of exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    found.set(match[1]!, match[2]!);
  }
  return found;
}

/** The value of one sample line, e.g. `cloudless_nodes{status="Ready"}`. */
function sample(exposition: string, series: string): number | undefined {
  const line = exposition.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** Prometheus naming conventions, the rules `promtool check metrics` applies to names. */
function conventionProblems(types: Map<string, string>): string[] {
  const problems: string[] = [];
  for (const [name, type] of types) {
    if (!name.startsWith("cloudless_")) problems.push(`${name}: no cloudless_ prefix`);
    if (type === "counter" && !name.endsWith("_total"))
      problems.push(`${name}: counter without _total`);
    if (type !== "counter" && name.endsWith("_total"))
      problems.push(`${name}: ${type} with _total`);
    if (/_(ms|milliseconds|minutes|kilobytes|megabytes)(_|$)/.test(name)) {
      problems.push(`${name}: not in base units`);
    }
  }
  return problems;
}

describe("metrics registry", () => {
  it("REQ-070 the coordinator registry holds the Cloudless metrics and the process metrics, named by convention", async () => {
    const metrics = createCoordinatorMetrics();
    const exposition = await metrics.registry.metrics();
    const types = families(exposition);
    expect(
      Object.fromEntries([...types].filter(([name]) => !/process_|nodejs_/.test(name))),
    ).toEqual({
      cloudless_api_requests_total: "counter",
      cloudless_api_request_duration_seconds: "histogram",
      cloudless_store_operation_duration_seconds: "histogram",
      cloudless_store_operation_errors_total: "counter",
      cloudless_scheduler_decision_duration_seconds: "histogram",
      cloudless_scheduler_pending_replicas: "gauge",
      cloudless_scheduler_placement_failures_total: "counter",
      cloudless_scheduler_placements_total: "counter",
      cloudless_nodes: "gauge",
      cloudless_replicas: "gauge",
      cloudless_node_loss_to_replacement_running_seconds: "histogram",
      cloudless_heartbeats_received_total: "counter",
      cloudless_heartbeat_streams: "gauge",
      cloudless_leader: "gauge",
      cloudless_leader_elections_total: "counter",
    });
    // Process CPU, memory and event-loop lag.
    expect(types.get("cloudless_process_cpu_seconds_total")).toBe("counter");
    expect(types.get("cloudless_process_resident_memory_bytes")).toBe("gauge");
    expect(types.get("cloudless_nodejs_eventloop_lag_seconds")).toBe("gauge");
    expect(conventionProblems(types)).toEqual([]);
  });

  it("REQ-070 the agent registry holds the agent metrics, named by convention", async () => {
    const metrics = createAgentMetrics();
    const types = families(await metrics.registry.metrics());
    expect(
      Object.fromEntries([...types].filter(([name]) => !/process_|nodejs_/.test(name))),
    ).toEqual({
      cloudless_agent_driver_operations_total: "counter",
      cloudless_agent_driver_operation_duration_seconds: "histogram",
      cloudless_agent_probe_results_total: "counter",
      cloudless_agent_replicas: "gauge",
      cloudless_agent_heartbeats_sent_total: "counter",
      cloudless_agent_log_lines_dropped_total: "counter",
    });
    expect(types.get("cloudless_process_cpu_seconds_total")).toBe("counter");
    expect(conventionProblems(types)).toEqual([]);
  });

  it("REQ-070 registries are per process object: two coordinators in one process do not share counts", async () => {
    const a = createCoordinatorMetrics({ defaultMetrics: false });
    const b = createCoordinatorMetrics({ defaultMetrics: false });
    a.heartbeatsReceived.inc(3);
    expect(sample(await a.registry.metrics(), "cloudless_heartbeats_received_total")).toBe(3);
    expect(sample(await b.registry.metrics(), "cloudless_heartbeats_received_total")).toBe(0);
  });

  it("REQ-070 state gauges read their source at scrape time and always list every status and phase", async () => {
    const metrics = createCoordinatorMetrics({ defaultMetrics: false });
    let nodes: Record<string, number> = { Ready: 2, Lost: 1 };
    let streams = 2;
    metrics.setStateSource({
      nodesByStatus: async () => nodes,
      replicasByPhase: async () => ({ Running: 3, Pending: 1 }),
      heartbeatStreams: () => streams,
    });
    let text = await metrics.registry.metrics();
    expect(sample(text, 'cloudless_nodes{status="Ready"}')).toBe(2);
    expect(sample(text, 'cloudless_nodes{status="Lost"}')).toBe(1);
    expect(sample(text, 'cloudless_nodes{status="NotReady"}')).toBe(0);
    expect(sample(text, 'cloudless_replicas{phase="Running"}')).toBe(3);
    expect(sample(text, 'cloudless_replicas{phase="CrashLoopBackOff"}')).toBe(0);
    expect(sample(text, "cloudless_heartbeat_streams")).toBe(2);
    for (const status of nodeStatuses)
      expect(text).toContain(`cloudless_nodes{status="${status}"}`);
    for (const phase of replicaPhases)
      expect(text).toContain(`cloudless_replicas{phase="${phase}"}`);

    // A status that disappears drops to 0 rather than keeping its last value.
    nodes = { Ready: 3 };
    streams = 0;
    text = await metrics.registry.metrics();
    expect(sample(text, 'cloudless_nodes{status="Ready"}')).toBe(3);
    expect(sample(text, 'cloudless_nodes{status="Lost"}')).toBe(0);
    expect(sample(text, "cloudless_heartbeat_streams")).toBe(0);
  });

  it("REQ-070 the agent's replica gauge counts the supervisor's reports by phase", async () => {
    const metrics = createAgentMetrics({ defaultMetrics: false });
    metrics.setStateSource({
      replicasByPhase: () => countBy(["Running", "Running", "Failed"], (phase) => phase),
    });
    const text = await metrics.registry.metrics();
    expect(sample(text, 'cloudless_agent_replicas{phase="Running"}')).toBe(2);
    expect(sample(text, 'cloudless_agent_replicas{phase="Failed"}')).toBe(1);
    expect(sample(text, 'cloudless_agent_replicas{phase="Pending"}')).toBe(0);
  });

  it("REQ-070 writeMetrics answers GET with the exposition and refuses other methods", async () => {
    const metrics = createAgentMetrics({ defaultMetrics: false });
    metrics.heartbeatsSent.inc();
    const reply = (method: string) => {
      const captured: { status?: number; headers?: Record<string, unknown>; body?: string } = {};
      const response = {
        writeHead(status: number, headers: Record<string, unknown>) {
          captured.status = status;
          captured.headers = headers;
        },
        end(body?: string) {
          captured.body = body;
        },
      };
      return { captured, response, request: { method } };
    };
    const get = reply("GET");
    // biome-ignore lint/suspicious/noExplicitAny: minimal request and response doubles
    await writeMetrics(metrics.registry, get.request as any, get.response as any);
    expect(get.captured.status).toBe(200);
    expect(String(get.captured.headers?.["content-type"])).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(get.captured.body).toContain("cloudless_agent_heartbeats_sent_total 1");
    const post = reply("POST");
    // biome-ignore lint/suspicious/noExplicitAny: minimal request and response doubles
    await writeMetrics(metrics.registry, post.request as any, post.response as any);
    expect(post.captured.status).toBe(405);
    expect(post.captured.body).not.toContain("cloudless_");
  });
});

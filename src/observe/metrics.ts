/**
 * Prometheus metrics (REQ-070). Every process (coordinator, agent) owns one Registry,
 * built here, with the process metrics prom-client collects (CPU, memory, event-loop
 * lag) under the `cloudless_` prefix and the Cloudless metrics as typed handles.
 *
 * Conventions: base units (seconds, bytes), `_total` only on counters, `_seconds` on
 * durations, and bounded labels only — never replica ids, node names or anything a
 * caller controls. The exposition is served only to holders of a cluster certificate
 * (NFR-S1): by the coordinator's API listener and by the agent's opt-in metrics
 * listener (docs/decisions/0009-agent-metrics-listener.md).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { replicaPhases } from "../lib/replicaPhase.js";
import { droppedLogLines } from "./logger.js";

export type { Registry };

/** The path both listeners serve the exposition on. */
export const metricsPath = "/metrics";

const prefix = "cloudless_";

/**
 * prom-client's default metrics include three gauges named `…_total`, which breaks the
 * naming convention (`promtool check metrics` flags them); the same values are exposed
 * without the suffix (`nodejs_active_handles`, `_requests`, `_resources`).
 */
const nonConformingDefaults = [
  `${prefix}nodejs_active_handles_total`,
  `${prefix}nodejs_active_requests_total`,
  `${prefix}nodejs_active_resources_total`,
];

/** Node statuses always exported (0 when none), so queries never see a missing series. */
export const nodeStatuses = ["Ready", "NotReady", "Lost", "Left"] as const;

/** Replica phases always exported (0 when none): every phase there is (lib/replicaPhase.ts). */
export { replicaPhases };

const apiBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const storeBuckets = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
];
const schedulerBuckets = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5];
const replacementBuckets = [1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800];
const driverBuckets = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

function newRegistry(defaultMetrics: boolean): Registry {
  const registry = new Registry();
  if (defaultMetrics) {
    collectDefaultMetrics({ register: registry, prefix });
    for (const name of nonConformingDefaults) registry.removeSingleMetric(name);
  }
  return registry;
}

/** Counts of items by a label value; the keys listed in `known` are always present. */
function setCounts(
  gauge: Gauge<string>,
  label: string,
  known: readonly string[],
  counts: Record<string, number>,
): void {
  gauge.reset();
  for (const value of known) gauge.set({ [label]: value }, 0);
  for (const [value, count] of Object.entries(counts)) gauge.set({ [label]: value }, count);
}

/** Where the coordinator's state gauges read their values, at scrape time. */
export interface CoordinatorStateSource {
  /** Node count by status (the store's view). */
  nodesByStatus(): Promise<Record<string, number>>;
  /** Replica count by phase (the store's view; unplaced replicas count as Pending). */
  replicasByPhase(): Promise<Record<string, number>>;
  /** Heartbeat streams open now. */
  heartbeatStreams(): number;
}

/** The metric handles the workload controller updates. */
export interface ControllerMetrics {
  schedulerDecision: Histogram<string>;
  schedulerPending: Gauge<string>;
  placementFailures: Counter<"reason">;
  placements: Counter<string>;
  nodeLossToReplacementRunning: Histogram<string>;
}

export interface CoordinatorMetrics extends ControllerMetrics {
  registry: Registry;
  apiRequests: Counter<"method" | "code">;
  apiRequestDuration: Histogram<"method">;
  storeOperationDuration: Histogram<"operation">;
  storeOperationErrors: Counter<"operation">;
  nodes: Gauge<"status">;
  replicas: Gauge<"phase">;
  heartbeatsReceived: Counter<string>;
  heartbeatStreams: Gauge<string>;
  /** 1 while this coordinator is the leader (NFR-R1). */
  leader: Gauge<string>;
  /** Times this coordinator became leader. */
  leaderElections: Counter<string>;
  /** Connects the state gauges to where the state lives (the coordinator does this once). */
  setStateSource(source: CoordinatorStateSource): void;
}

/** The coordinator's registry and metrics. */
export function createCoordinatorMetrics(
  options: { defaultMetrics?: boolean } = {},
): CoordinatorMetrics {
  const registry = newRegistry(options.defaultMetrics ?? true);
  const registers = [registry];
  let source: CoordinatorStateSource | undefined;
  const metrics: CoordinatorMetrics = {
    registry,
    apiRequests: new Counter({
      name: `${prefix}api_requests_total`,
      help: 'API calls completed, by procedure (package.Service/Method) and Connect code (ok, unauthenticated, …). Calls refused before routing for want of a client certificate count under method="other" unless the path names a known procedure.',
      labelNames: ["method", "code"],
      registers,
    }),
    apiRequestDuration: new Histogram({
      name: `${prefix}api_request_duration_seconds`,
      help: "Duration of API calls from the start of handling to the last response message (streams: the whole stream), by procedure.",
      labelNames: ["method"],
      buckets: apiBuckets,
      registers,
    }),
    storeOperationDuration: new Histogram({
      name: `${prefix}store_operation_duration_seconds`,
      help: "Latency of store operations (get, range, put, delete, txn, compact, lease calls).",
      labelNames: ["operation"],
      buckets: storeBuckets,
      registers,
    }),
    storeOperationErrors: new Counter({
      name: `${prefix}store_operation_errors_total`,
      help: "Store operations that failed, by operation.",
      labelNames: ["operation"],
      registers,
    }),
    schedulerDecision: new Histogram({
      name: `${prefix}scheduler_decision_duration_seconds`,
      help: "Time the scheduler core takes per scheduling pass, deciding every pending replica of that pass (not per replica); its own time, without the turns it gives the event loop between 250 ms slices.",
      buckets: schedulerBuckets,
      registers,
    }),
    schedulerPending: new Gauge({
      name: `${prefix}scheduler_pending_replicas`,
      help: "Replicas waiting for a node at the last controller pass (the scheduling queue depth).",
      registers,
    }),
    placementFailures: new Counter({
      name: `${prefix}scheduler_placement_failures_total`,
      help: "Failed placement attempts (a pending replica is retried every pass), by reason: the scheduler filter that rejected the most nodes, NoNodes, InvalidRequest, NodeChanged (the re-check before commit refused it) or Conflict (the commit lost a race).",
      labelNames: ["reason"],
      registers,
    }),
    placements: new Counter({
      name: `${prefix}scheduler_placements_total`,
      help: "Replicas placed on a node (committed placements).",
      registers,
    }),
    nodes: new Gauge({
      name: `${prefix}nodes`,
      help: "Nodes by membership status.",
      labelNames: ["status"],
      registers,
      async collect() {
        if (!source) return;
        setCounts(this, "status", nodeStatuses, await source.nodesByStatus());
      },
    }),
    replicas: new Gauge({
      name: `${prefix}replicas`,
      help: "Replicas by phase as last reported by their agents; replicas not yet placed or not yet reported count as Pending or Scheduled.",
      labelNames: ["phase"],
      registers,
      async collect() {
        if (!source) return;
        setCounts(this, "phase", replicaPhases, await source.replicasByPhase());
      },
    }),
    nodeLossToReplacementRunning: new Histogram({
      name: `${prefix}node_loss_to_replacement_running_seconds`,
      help: "Time from a node's transition to Lost until a replacement for a replica it ran is reported Running (one observation per replaced replica).",
      buckets: replacementBuckets,
      registers,
    }),
    heartbeatsReceived: new Counter({
      name: `${prefix}heartbeats_received_total`,
      help: "Heartbeats received from agents.",
      registers,
    }),
    heartbeatStreams: new Gauge({
      name: `${prefix}heartbeat_streams`,
      help: "Heartbeat streams from agents open now.",
      registers,
      collect() {
        if (source) this.set(source.heartbeatStreams());
      },
    }),
    leader: new Gauge({
      name: `${prefix}leader`,
      help: "1 while this coordinator is the leader that runs the scheduler and controllers, else 0.",
      registers,
    }),
    leaderElections: new Counter({
      name: `${prefix}leader_elections_total`,
      help: "Times this coordinator won the leader election (a leadership change seen from here).",
      registers,
    }),
    setStateSource(next) {
      source = next;
    },
  };
  return metrics;
}

/** Where the agent's state gauges read their values, at scrape time. */
export interface AgentStateSource {
  /** The node's replicas by phase, as the supervisor last reported them. */
  replicasByPhase(): Record<string, number>;
}

export interface AgentMetrics {
  registry: Registry;
  driverOperations: Counter<"driver" | "operation" | "result">;
  driverOperationDuration: Histogram<"driver" | "operation">;
  probeResults: Counter<"kind" | "result">;
  replicas: Gauge<"phase">;
  heartbeatsSent: Counter<string>;
  logLinesDropped: Counter<string>;
  setStateSource(source: AgentStateSource): void;
}

/** An agent's registry and metrics. */
export function createAgentMetrics(options: { defaultMetrics?: boolean } = {}): AgentMetrics {
  const registry = newRegistry(options.defaultMetrics ?? true);
  const registers = [registry];
  let source: AgentStateSource | undefined;
  let droppedCounted = 0;
  return {
    registry,
    driverOperations: new Counter({
      name: `${prefix}agent_driver_operations_total`,
      help: "Runtime driver calls, by driver, operation and result (ok, unhealthy, or the error kind: imageNotFound, invalid, unavailable, failed, error).",
      labelNames: ["driver", "operation", "result"],
      registers,
    }),
    driverOperationDuration: new Histogram({
      name: `${prefix}agent_driver_operation_duration_seconds`,
      help: "Latency of runtime driver calls (log streams excluded), by driver and operation.",
      labelNames: ["driver", "operation"],
      buckets: driverBuckets,
      registers,
    }),
    probeResults: new Counter({
      name: `${prefix}agent_probe_results_total`,
      help: "Health probe results, by kind (liveness, readiness) and result (success, failure).",
      labelNames: ["kind", "result"],
      registers,
    }),
    replicas: new Gauge({
      name: `${prefix}agent_replicas`,
      help: "Replicas on this node by phase, as the supervisor reports them.",
      labelNames: ["phase"],
      registers,
      collect() {
        if (!source) return;
        setCounts(this, "phase", replicaPhases, source.replicasByPhase());
      },
    }),
    heartbeatsSent: new Counter({
      name: `${prefix}agent_heartbeats_sent_total`,
      help: "Heartbeats this agent sent to the coordinator.",
      registers,
    }),
    logLinesDropped: new Counter({
      name: `${prefix}agent_log_lines_dropped_total`,
      help: "Log lines this agent process dropped because their destination was gone (e.g. stderr whose reader exited).",
      registers,
      collect() {
        // The count lives in the logger (one per process); the counter catches up at scrape time.
        const total = droppedLogLines();
        if (total > droppedCounted) {
          this.inc(total - droppedCounted);
          droppedCounted = total;
        }
      },
    }),
    setStateSource(next) {
      source = next;
    },
  };
}

/** Counts items by a key, e.g. nodes by status. */
export function countBy<T>(items: Iterable<T>, key: (item: T) => string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const item of items) {
    const value = key(item);
    counts[value] = (counts[value] ?? 0) + 1;
  }
  return counts;
}

/**
 * Answers a request for the exposition: GET or HEAD only. The caller has authenticated
 * the client already.
 */
export async function writeMetrics(
  registry: Registry,
  request: IncomingMessage | Http2ServerRequest,
  response: ServerResponse | Http2ServerResponse,
): Promise<void> {
  const reply = response as ServerResponse;
  if (request.method !== "GET" && request.method !== "HEAD") {
    reply.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" });
    reply.end("only GET is supported on /metrics\n");
    return;
  }
  let body: string;
  try {
    body = await registry.metrics();
  } catch (error) {
    reply.writeHead(500, { "content-type": "text/plain" });
    reply.end(`collecting metrics failed: ${error instanceof Error ? error.message : error}\n`);
    return;
  }
  reply.writeHead(200, {
    "content-type": registry.contentType,
    "content-length": Buffer.byteLength(body),
  });
  reply.end(request.method === "HEAD" ? undefined : body);
}

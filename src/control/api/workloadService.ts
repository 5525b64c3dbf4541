import { create, type JsonObject } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import {
  type Replica,
  ReplicaSchema,
  type Workload,
  WorkloadLogsResponseSchema,
  WorkloadSchema,
  type WorkloadService,
  type WorkloadStatus,
  WorkloadStatusSchema,
  WorkloadView,
} from "../../api/gen/cloudless/v1/workload_pb.js";
import { limitRef, limits, specTooLargeMessage } from "../../api/limits.js";
import {
  formatSpecErrors,
  parseWorkloadText,
  parseWorkloadValue,
  specTextTooLarge,
} from "../../api/workload/parse.js";
import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import type { Clock } from "../../lib/clock.js";
import type { ClusterState } from "../controllers/clusterState.js";
import { type ReplicaRecord, type WorkloadRecord, workloadId } from "../controllers/records.js";
import { availabilityOf, existingReplicaOf, toSchedNodes } from "../controllers/schedulerInput.js";
import { asSpecView, driverOfSpec, placementOf } from "../controllers/specView.js";
import type { TunnelHub } from "../controllers/tunnelHub.js";
import { type WorkloadStatusView, workloadStatus } from "../controllers/workloadReconciler.js";
import type { EventLog } from "../events/eventLog.js";
import { budgetApplies, budgetText, explainPending } from "../scheduler/index.js";
import type { WorkloadRegistry } from "../workloads/workloadRegistry.js";
import { actorName, type Leadership, requireAdmin } from "./context.js";

const defaultRolloutTimeoutSeconds = 600;
const defaultExecTimeoutSeconds = 30;
const rolloutPollMs = 250;

const dnsLabelPattern = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/**
 * The workload a request names. Names and namespaces are DNS labels (the spec schema's
 * rule), so anything else cannot exist and is refused before a lookup; the echo of what
 * was sent is cut short, so a huge name cannot make a huge error.
 */
function nameOf(request: { name: string; namespace: string }) {
  if (!request.name) throw CloudlessError.invalid("a workload name is required");
  const namespace = request.namespace || "default";
  for (const [field, value] of [
    ["name", request.name],
    ["namespace", namespace],
  ] as const) {
    if (!dnsLabelPattern.test(value)) {
      throw CloudlessError.invalid(
        `${field} ${JSON.stringify(value.slice(0, 80))}${value.length > 80 ? "…" : ""} is not a ` +
          "workload name: lowercase letters, digits and '-', at most 63 characters",
      );
    }
  }
  return { name: request.name, namespace };
}

export interface WorkloadServiceDeps {
  clock: Clock;
  /** Exec is recorded as an event. */
  events: EventLog;
  /** Reads, and the writes (apply, scale, undo, delete), which are decided there. */
  registry: WorkloadRegistry;
  /** Logs and exec go to agents through the leader's tunnels. */
  tunnels: TunnelHub;
  leadership: Leadership;
  /**
   * Admission: refuses a spec a cluster policy denies (REQ-061), before anything is
   * written; dry runs are judged too, so `apply --dry-run` tells the truth.
   */
  admit?: (doc: WorkloadSpecDocument) => Promise<void>;
}

export function workloadServiceImpl(
  services: WorkloadServiceDeps,
): ServiceImpl<typeof WorkloadService> {
  const { clock, events, registry } = services;
  const load = (namespace: string, name: string) => registry.load(namespace, name);

  return {
    async applyWorkload(request, context) {
      const identity = requireAdmin(context);
      const parsed = parseRequestSpec(request.specText, request.spec);
      if (!parsed.ok) {
        throw CloudlessError.invalid(
          `workload spec is invalid:\n${formatSpecErrors(parsed.errors)}`,
        );
      }
      await services.admit?.(parsed.doc);
      const { record, state, action } = await registry.apply(parsed.doc, {
        dryRun: request.dryRun,
        actor: actorName(identity),
      });
      return { workload: toWorkload(state, record), action };
    },

    async getWorkload(request, context) {
      requireAdmin(context);
      const { namespace, name } = nameOf(request);
      const { state, workload } = await load(namespace, name);
      return { workload: toWorkload(state, workload) };
    },

    async listWorkloads(request, context) {
      requireAdmin(context);
      const state = await registry.state();
      const workloads = [...state.workloads.values()]
        .map((entry) => entry.value)
        .filter((w) => !request.namespace || w.namespace === request.namespace)
        .sort((a, b) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name));
      // BASIC leaves the replicas out: serializing 20,000 of them took up to 1.8 s of the
      // event loop (ADR 0025), and a table of workloads shows only their counts.
      const withReplicas = request.view !== WorkloadView.BASIC;
      return { workloads: workloads.map((w) => toWorkload(state, w, withReplicas)) };
    },

    async deleteWorkload(request, context) {
      const identity = requireAdmin(context);
      const { namespace, name } = nameOf(request);
      await registry.delete(namespace, name, actorName(identity));
      return {};
    },

    async scaleWorkload(request, context) {
      const identity = requireAdmin(context);
      const { namespace, name } = nameOf(request);
      if (!Number.isInteger(request.replicas) || request.replicas < 0) {
        throw CloudlessError.invalid(
          `replicas must be a non-negative integer, not ${request.replicas}`,
        );
      }
      if (request.replicas > limits.replicasPerWorkload) {
        throw CloudlessError.invalid(
          `replicas must be at most ${limits.replicasPerWorkload} ${limitRef("replicasPerWorkload")}, not ${request.replicas}`,
        );
      }
      const { record, state } = await registry.scale(
        namespace,
        name,
        request.replicas,
        actorName(identity),
      );
      return { workload: toWorkload(state, record) };
    },

    async *rolloutStatus(request, context) {
      requireAdmin(context);
      const { namespace, name } = nameOf(request);
      if (request.timeoutSeconds > limits.rolloutStatusTimeoutSeconds) {
        throw CloudlessError.invalid(
          `timeout_seconds must be at most ${limits.rolloutStatusTimeoutSeconds} ${limitRef("rolloutStatusTimeoutSeconds")}`,
        );
      }
      const timeoutMs = (request.timeoutSeconds || defaultRolloutTimeoutSeconds) * 1000;
      const deadline = clock.nowMs() + timeoutMs;
      let last = "";
      while (!context.signal.aborted) {
        const { state, workload } = await load(namespace, name);
        const view = statusOf(state, workload);
        const complete =
          view.phase === "Running" &&
          view.updatedReplicas === view.desiredReplicas &&
          view.replicas === view.desiredReplicas;
        const timedOut = clock.nowMs() >= deadline;
        const fingerprint = JSON.stringify(view);
        if (fingerprint !== last || complete || timedOut) {
          last = fingerprint;
          yield {
            status: statusToProto(view),
            done: complete || timedOut,
            failed: !complete && timedOut,
          };
        }
        if (complete || timedOut) return;
        await sleep(rolloutPollMs, context.signal);
      }
    },

    async rolloutUndo(request, context) {
      const identity = requireAdmin(context);
      const { namespace, name } = nameOf(request);
      const { record, state, fromRevision, toRevision } = await registry.undo(
        namespace,
        name,
        actorName(identity),
      );
      return {
        workload: toWorkload(state, record),
        fromRevision: BigInt(fromRevision),
        toRevision: BigInt(toRevision),
      };
    },

    async explainWorkload(request, context) {
      requireAdmin(context);
      const { namespace, name } = nameOf(request);
      const { state, workload } = await load(namespace, name);
      const key = workloadId(namespace, name);
      const replicas = (state.replicasByWorkload.get(key) ?? []).map((r) => r.value);
      const pending = replicas.filter((r) => r.node === "" && r.desired === "Running");
      const snapshot = {
        revision: state.revision,
        nodes: toSchedNodes(state, clock.nowMs()),
        replicas: replicas
          .filter((r) => r.node !== "")
          .map((r) => existingReplicaOf(key, r, workload)),
      };
      const explanations = pending.slice(0, 20).map((replica) => {
        const spec = asSpecView(
          state.revisions.get(`${namespace}/${name}/${replica.revision}`)?.spec ?? workload.spec,
        );
        const explanation = explainPending(snapshot, {
          id: replica.id,
          workloadKey: key,
          driver: driverOfSpec(spec),
          resources: replica.resources,
          placement: placementOf(spec),
          availability: availabilityOf(workload),
        });
        return {
          replicaId: replica.id,
          totalNodes: explanation.totalNodes,
          feasibleNodes: explanation.schedulable
            ? explanation.feasibleNodes
            : explanation.eligibleNodes,
          rejections: explanation.rejections,
          message: explanation.message,
          bestScores: explanation.bestScores.map((s) => ({ node: s.node, score: s.score })),
        };
      });
      // REQ-030: whether the placement survives the loss of any one node (ADR 0034).
      const risk = statusOf(state, workload).nodeLossRisk;
      const availability = availabilityOf(workload);
      const survival = risk
        ? `; ${risk}`
        : budgetApplies(availability)
          ? `; the placement survives the loss of any one node (${budgetText(availability)})`
          : "";
      const summary =
        pending.length === 0
          ? `all ${replicas.filter((r) => r.desired === "Running").length} replicas of ${name} are placed${survival}`
          : `${pending.length} replica${pending.length === 1 ? "" : "s"} of ${name} pending: ${explanations[0]?.message ?? ""}`;
      return { pending: explanations, summary };
    },

    async *workloadLogs(request, context) {
      requireAdmin(context);
      const { namespace, name } = nameOf(request);
      if (request.tailLines > limits.logTailLines) {
        throw CloudlessError.invalid(
          `tail_lines must be at most ${limits.logTailLines} ${limitRef("logTailLines")}; leave it unset (or negative) for every line`,
        );
      }
      const { state } = await load(namespace, name);
      const replica = pickReplica(state, namespace, name, request.replicaId);
      // Agents' streams, and so the tunnels to replicas, end at the leader.
      requireLeader(services);
      for await (const line of services.tunnels.logs(replica.node, replica.id, {
        follow: request.follow,
        tailLines: request.tailLines,
        signal: context.signal,
      })) {
        yield create(WorkloadLogsResponseSchema, {
          replicaId: replica.id,
          stream: line.stream,
          line: line.line,
        });
      }
    },

    async execWorkload(request, context) {
      const identity = requireAdmin(context);
      const { namespace, name } = nameOf(request);
      if (request.command.length === 0) {
        throw CloudlessError.invalid(
          "a command is required: cloudless workload exec NAME -- CMD [ARGS…]",
        );
      }
      const commandBytes = request.command.reduce(
        (sum, arg) => sum + Buffer.byteLength(arg) + 1,
        0,
      );
      if (commandBytes > limits.execCommandBytes) {
        throw CloudlessError.invalid(
          `command is ${commandBytes} bytes; at most ${limits.execCommandBytes} are allowed ${limitRef("execCommandBytes")}`,
        );
      }
      if (request.timeoutSeconds > limits.execTimeoutSeconds) {
        throw CloudlessError.invalid(
          `timeout_seconds must be at most ${limits.execTimeoutSeconds} ${limitRef("execTimeoutSeconds")}`,
        );
      }
      const { state } = await load(namespace, name);
      const replica = pickReplica(state, namespace, name, request.replicaId);
      requireLeader(services);
      const timeoutMs = (request.timeoutSeconds || defaultExecTimeoutSeconds) * 1000;
      const result = await services.tunnels.exec(
        replica.node,
        replica.id,
        request.command,
        timeoutMs,
      );
      await events.record({
        type: "ReplicaExec",
        category: "operations",
        subject: `replica/${namespace}/${name}/${replica.id}`,
        reason: "Exec",
        message: `ran ${JSON.stringify(request.command[0])} (exit code ${result.exitCode})`,
        actor: actorName(identity),
      });
      return { replicaId: replica.id, ...result };
    },
  };

  function toWorkload(
    state: ClusterState,
    workload: WorkloadRecord,
    withReplicas = true,
  ): Workload {
    const replicas = withReplicas
      ? (state.replicasByWorkload.get(workloadId(workload.namespace, workload.name)) ?? [])
          .map((r) => r.value)
          .filter((r) => r.desired === "Running")
          .sort((a, b) => a.createdAtMs - b.createdAtMs || a.id.localeCompare(b.id))
      : [];
    return create(WorkloadSchema, {
      name: workload.name,
      namespace: workload.namespace,
      uid: workload.uid,
      spec: workload.spec as JsonObject,
      status: statusToProto(statusOf(state, workload)),
      replicas: replicas.map((r) => replicaToProto(r, state)),
      // A dry run's new workload has no times (0): it was not created.
      createdAt: workload.createdAtMs > 0 ? timestampFromMs(workload.createdAtMs) : undefined,
      updatedAt: workload.updatedAtMs > 0 ? timestampFromMs(workload.updatedAtMs) : undefined,
    });
  }
}

/** A workload's status from its records: a read plans nothing (issue 12). */
function statusOf(state: ClusterState, workload: WorkloadRecord): WorkloadStatusView {
  const spec = asSpecView(workload.spec);
  return workloadStatus(
    {
      revision: workload.revision,
      replicas: workload.replicas,
      minAvailable: workload.minAvailable,
      maxSurge: spec.spec.rollout.maxSurge,
      maxUnavailable: spec.spec.rollout.maxUnavailable,
    },
    (state.replicasByWorkload.get(workloadId(workload.namespace, workload.name)) ?? []).map(
      (r) => r.value,
    ),
    (node) => state.nodes.get(node)?.status,
  );
}

function statusToProto(view: WorkloadStatusView): WorkloadStatus {
  return create(WorkloadStatusSchema, {
    replicas: view.replicas,
    readyReplicas: view.readyReplicas,
    updatedReplicas: view.updatedReplicas,
    availableReplicas: view.availableReplicas,
    phase: view.phase,
    message: view.message,
    revision: BigInt(view.revision),
    desiredReplicas: view.desiredReplicas,
    minAvailable: view.minAvailable,
  });
}

function replicaToProto(replica: ReplicaRecord, state: ClusterState): Replica {
  const nodeStatus = replica.node ? state.nodes.get(replica.node)?.status : undefined;
  const phase = replica.node === "" ? "Pending" : (replica.status?.phase ?? "Scheduled");
  const ready =
    replica.status?.ready === true && replica.status.phase === "Running" && nodeStatus === "Ready";
  return create(ReplicaSchema, {
    id: replica.id,
    node: replica.node,
    phase,
    ready,
    restarts: replica.status?.restarts ?? 0,
    revision: BigInt(replica.revision),
    reason:
      replica.node === ""
        ? "Unschedulable"
        : nodeStatus && nodeStatus !== "Ready"
          ? `Node${nodeStatus}`
          : (replica.status?.reason ?? ""),
    message:
      replica.node === ""
        ? (replica.pendingReason ?? "waiting to be scheduled")
        : (replica.status?.message ?? ""),
    hostPorts: replica.status?.hostPorts ?? {},
    createdAt: timestampFromMs(replica.createdAtMs),
    startedAt: replica.status?.startedAtMs
      ? timestampFromMs(replica.status.startedAtMs)
      : undefined,
    driver: replica.status?.driver ?? "",
    exitCode: replica.status?.exitCode ?? 0,
  });
}

function pickReplica(
  state: ClusterState,
  namespace: string,
  name: string,
  replicaId: string,
): ReplicaRecord {
  const replicas = (state.replicasByWorkload.get(workloadId(namespace, name)) ?? [])
    .map((r) => r.value)
    .filter((r) => r.desired === "Running" && r.node !== "");
  if (replicaId) {
    const found = replicas.find((r) => r.id === replicaId);
    if (!found) {
      throw CloudlessError.notFound(
        `replica "${replicaId}" of workload "${name}" not found or not placed; see \`cloudless workload get ${name}\``,
      );
    }
    return found;
  }
  const running = replicas
    .filter((r) => r.status?.phase === "Running")
    .sort((a, b) => a.id.localeCompare(b.id));
  const chosen = running[0] ?? replicas[0];
  if (!chosen) {
    throw CloudlessError.unavailable(
      `workload "${name}" has no placed replica yet; see \`cloudless workload explain ${name}\``,
    );
  }
  return chosen;
}

/**
 * The request's spec, refused with the one specBytes answer when it is too large
 * (the server's edge gives the same answer to requests too large to read).
 */
export function parseRequestSpec(text: string, value: unknown) {
  if (text) {
    if (specTextTooLarge(text)) throw CloudlessError.invalid(specTooLargeMessage());
    return parseWorkloadText(text, "spec");
  }
  if (value !== undefined) {
    // Depth first: it is counted without recursion, and serializing is not.
    if (nestingLevels(value, limits.specNestingLevels) > limits.specNestingLevels) {
      throw CloudlessError.invalid(
        `workload spec nests deeper than ${limits.specNestingLevels} levels ${limitRef("specNestingLevels")}; a workload spec needs fewer than 10`,
      );
    }
    if (structuredSpecBytes(value) > limits.specBytes) {
      throw CloudlessError.invalid(specTooLargeMessage());
    }
    return parseWorkloadValue(value);
  }
  throw CloudlessError.invalid("no spec given: send spec_text (YAML or JSON) or spec");
}

/** How deeply a decoded value nests, counted without recursion up to `atMost` + 1. */
function nestingLevels(value: unknown, atMost: number): number {
  let deepest = 0;
  const stack: Array<{ value: unknown; depth: number }> = [{ value, depth: 0 }];
  while (stack.length > 0) {
    const next = stack.pop() as { value: unknown; depth: number };
    if (typeof next.value !== "object" || next.value === null) continue;
    deepest = Math.max(deepest, next.depth + 1);
    if (deepest > atMost) return deepest;
    for (const child of Object.values(next.value))
      stack.push({ value: child, depth: next.depth + 1 });
  }
  return deepest;
}

/** A structured spec's size as JSON; one too deep to serialize counts as too large. */
function structuredSpecBytes(value: unknown): number {
  try {
    return Buffer.byteLength(JSON.stringify(value));
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}

function requireLeader(services: { leadership: Leadership }): void {
  if (!services.leadership.isLeader) throw CloudlessError.notLeader(services.leadership.leaderUrl);
}

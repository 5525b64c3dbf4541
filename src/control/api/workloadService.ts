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
  canonicalSpecJson,
  formatSpecErrors,
  parseWorkloadText,
  parseWorkloadValue,
  specHash,
  specTextTooLarge,
} from "../../api/workload/parse.js";
import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import { injectTraceparent } from "../../observe/tracing.js";
import { readFreshClusterState } from "../controllers/clusterCache.js";
import type { ClusterState } from "../controllers/clusterState.js";
import {
  type ReplicaRecord,
  revisionKey,
  revisionListPrefix,
  type WorkloadRecord,
  workloadId,
  workloadKey,
} from "../controllers/records.js";
import { availabilityOf, existingReplicaOf, toSchedNodes } from "../controllers/schedulerInput.js";
import { asSpecView, driverOfSpec, placementOf } from "../controllers/specView.js";
import { type WorkloadStatusView, workloadStatus } from "../controllers/workloadReconciler.js";
import { budgetApplies, budgetText, explainPending } from "../scheduler/index.js";
import type { Op } from "../store/store.js";
import { actorName, type CoordinatorServices, requireAdmin } from "./context.js";

/** Revisions kept per workload for `rollout undo`. */
const revisionHistoryLimit = 10;
const defaultRolloutTimeoutSeconds = 600;
const defaultExecTimeoutSeconds = 30;
const rolloutPollMs = 250;

/**
 * Everything but the replica count, the rollout knobs and whether the rebalancer may move
 * replicas: a change here is a new revision. (`placement.rebalance` is left out also so
 * that a spec applied before it existed keeps its hash.)
 */
export function templateHash(doc: WorkloadSpecDocument): string {
  const { replicas: _r, minAvailable: _m, rollout: _o, ...template } = doc.spec;
  const { rebalance: _b, ...placement } = template.placement;
  return specHash({ ...doc, spec: { ...template, placement } } as WorkloadSpecDocument);
}

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

function notFound(namespace: string, name: string): CloudlessError {
  return CloudlessError.notFound(
    `workload "${name}" not found in namespace "${namespace}"; run \`cloudless workload list\` to see workloads`,
  );
}

export function workloadServiceImpl(
  services: CoordinatorServices,
): ServiceImpl<typeof WorkloadService> {
  const { store, clock, events } = services;

  async function load(namespace: string, name: string) {
    const state = await readFreshClusterState(store, services.workloads.cache);
    const entry = state.workloads.get(workloadId(namespace, name));
    if (!entry) throw notFound(namespace, name);
    return { state, workload: entry.value, modRevision: entry.modRevision };
  }

  return {
    async applyWorkload(request, context) {
      const identity = requireAdmin(context);
      const parsed = parseRequestSpec(request.specText, request.spec);
      if (!parsed.ok) {
        throw CloudlessError.invalid(
          `workload spec is invalid:\n${formatSpecErrors(parsed.errors)}`,
        );
      }
      const doc = parsed.doc;
      const { name, namespace } = doc.metadata;
      const key = workloadKey(namespace, name);
      const now = clock.nowMs();
      // The replicas this change makes are placed and started in this request's trace.
      const traceparent = injectTraceparent();
      for (let attempt = 0; attempt < 5; attempt++) {
        const existingKv = await store.get(key);
        const existing = existingKv ? (JSON.parse(existingKv.value) as WorkloadRecord) : undefined;
        // Quotas are checked against the cluster as it is, a dry run included, before
        // anything is written. Two concurrent creates may both pass: the bounds are soft
        // by the number of requests in flight.
        checkQuotas(await loadState(), namespace, name, existing, doc.spec.replicas);
        const hash = templateHash(doc);
        const ops: Op[] = [];
        let action: "created" | "updated" | "scaled" | "unchanged";
        let record: WorkloadRecord;
        if (!existing) {
          action = "created";
          record = {
            // A dry run makes up no identity: its workload has no uid and no times yet.
            uid: request.dryRun ? "" : services.rng.uuid(),
            namespace,
            name,
            revision: 1,
            templateHash: hash,
            spec: doc,
            replicas: doc.spec.replicas,
            minAvailable: doc.spec.minAvailable,
            createdAtMs: request.dryRun ? 0 : now,
            updatedAtMs: request.dryRun ? 0 : now,
            traceparent,
          };
        } else if (existing.templateHash === hash) {
          const same =
            canonicalSpecJson(existing.spec as WorkloadSpecDocument) === canonicalSpecJson(doc);
          if (same && existing.replicas === doc.spec.replicas) {
            return { workload: toWorkload(await loadState(), existing), action: "unchanged" };
          }
          action =
            existing.replicas !== doc.spec.replicas &&
            canonicalSpecJson({
              ...(existing.spec as WorkloadSpecDocument),
              spec: {
                ...(existing.spec as WorkloadSpecDocument).spec,
                replicas: doc.spec.replicas,
                minAvailable: doc.spec.minAvailable,
              },
            }) === canonicalSpecJson(doc)
              ? "scaled"
              : "updated";
          record = {
            ...existing,
            spec: doc,
            replicas: doc.spec.replicas,
            minAvailable: doc.spec.minAvailable,
            updatedAtMs: now,
            traceparent,
          };
        } else {
          action = "updated";
          record = {
            ...existing,
            revision: existing.revision + 1,
            templateHash: hash,
            spec: doc,
            replicas: doc.spec.replicas,
            minAvailable: doc.spec.minAvailable,
            updatedAtMs: now,
            traceparent,
          };
        }
        if (request.dryRun) {
          // What it would be, with the times it has now: nothing was updated.
          const preview = existing ? { ...record, updatedAtMs: existing.updatedAtMs } : record;
          return { workload: toWorkload(await loadState(), preview), action };
        }
        ops.push({ type: "put", key, value: JSON.stringify(record) });
        if (!existing || existing.revision !== record.revision) {
          ops.push({
            type: "put",
            key: revisionKey(namespace, name, record.revision),
            value: JSON.stringify({
              revision: record.revision,
              templateHash: hash,
              spec: doc,
              createdAtMs: now,
            }),
          });
          const expired = record.revision - revisionHistoryLimit;
          if (expired >= 1)
            ops.push({ type: "delete", key: revisionKey(namespace, name, expired) });
        }
        const result = await store.txn({
          compare: [
            existingKv
              ? { key, target: "modRevision", op: "==", modRevision: existingKv.modRevision }
              : { key, target: "version", op: "==", version: 0 },
          ],
          success: ops,
        });
        if (!result.succeeded) continue;
        await events.record({
          type:
            action === "created"
              ? "WorkloadCreated"
              : action === "scaled"
                ? "WorkloadScaled"
                : "WorkloadUpdated",
          category: "scheduling",
          subject: `workload/${namespace}/${name}`,
          reason:
            action === "updated" && existing?.revision !== record.revision
              ? "NewRevision"
              : "Applied",
          message:
            action === "created"
              ? `created with ${record.replicas} replica${record.replicas === 1 ? "" : "s"}`
              : action === "scaled"
                ? `scaled to ${record.replicas}`
                : existing?.revision !== record.revision
                  ? `rolling out revision ${record.revision}`
                  : "settings updated",
          actor: actorName(identity),
        });
        services.workloads.trigger();
        return { workload: toWorkload(await loadState(), record), action };
      }
      throw CloudlessError.conflict(`workload "${name}" is being changed concurrently; try again`);

      async function loadState() {
        return readFreshClusterState(store, services.workloads.cache);
      }
    },

    async getWorkload(request, context) {
      requireAdmin(context);
      const { namespace, name } = nameOf(request);
      const { state, workload } = await load(namespace, name);
      return { workload: toWorkload(state, workload) };
    },

    async listWorkloads(request, context) {
      requireAdmin(context);
      const state = await readFreshClusterState(store, services.workloads.cache);
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
      const key = workloadKey(namespace, name);
      const result = await store.txn({
        compare: [{ key, target: "version", op: ">", version: 0 }],
        success: [
          { type: "delete", key },
          { type: "deletePrefix", prefix: revisionListPrefix(namespace, name) },
        ],
      });
      if (!result.succeeded) throw notFound(namespace, name);
      await events.record({
        type: "WorkloadDeleted",
        category: "scheduling",
        subject: `workload/${namespace}/${name}`,
        reason: "Deleted",
        message: "workload deleted; its replicas are being stopped",
        actor: actorName(identity),
      });
      services.workloads.trigger();
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
      for (let attempt = 0; attempt < 5; attempt++) {
        const { state, workload, modRevision } = await load(namespace, name);
        checkQuotas(state, namespace, name, workload, request.replicas);
        const doc = workload.spec as WorkloadSpecDocument;
        const minAvailable = Math.min(workload.minAvailable, request.replicas);
        const updated: WorkloadRecord = {
          ...workload,
          replicas: request.replicas,
          minAvailable,
          spec: { ...doc, spec: { ...doc.spec, replicas: request.replicas, minAvailable } },
          updatedAtMs: clock.nowMs(),
          traceparent: injectTraceparent(),
        };
        const key = workloadKey(namespace, name);
        const result = await store.txn({
          compare: [{ key, target: "modRevision", op: "==", modRevision }],
          success: [{ type: "put", key, value: JSON.stringify(updated) }],
        });
        if (!result.succeeded) continue;
        await events.record({
          type: "WorkloadScaled",
          category: "scheduling",
          subject: `workload/${namespace}/${name}`,
          reason: "Scaled",
          message: `scaled from ${workload.replicas} to ${request.replicas}`,
          actor: actorName(identity),
        });
        services.workloads.trigger();
        return { workload: toWorkload(state, updated) };
      }
      throw CloudlessError.conflict(`workload "${name}" is being changed concurrently; try again`);
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
      const { workload, modRevision } = await load(namespace, name);
      const history = await store.range(revisionListPrefix(namespace, name));
      const previous = history.kvs
        .map(
          (kv) =>
            JSON.parse(kv.value) as {
              revision: number;
              templateHash: string;
              spec: WorkloadSpecDocument;
            },
        )
        .filter((r) => r.revision < workload.revision && r.templateHash !== workload.templateHash)
        .sort((a, b) => b.revision - a.revision)[0];
      if (!previous) {
        throw CloudlessError.invalid(
          `workload "${name}" has no previous revision to roll back to (current revision ${workload.revision})`,
        );
      }
      const now = clock.nowMs();
      const revision = workload.revision + 1;
      // The old spec is checked again: it may predate a limit that holds now.
      const restored = parseWorkloadValue({
        ...previous.spec,
        spec: {
          ...previous.spec.spec,
          replicas: workload.replicas,
          minAvailable: workload.minAvailable,
        },
      });
      if (!restored.ok) {
        throw CloudlessError.invalid(
          `the spec of revision ${previous.revision} is not valid any more, so it cannot be restored:\n${formatSpecErrors(restored.errors)}`,
        );
      }
      const doc: WorkloadSpecDocument = restored.doc;
      const updated: WorkloadRecord = {
        ...workload,
        revision,
        templateHash: previous.templateHash,
        spec: doc,
        updatedAtMs: now,
        traceparent: injectTraceparent(),
      };
      const key = workloadKey(namespace, name);
      const result = await store.txn({
        compare: [{ key, target: "modRevision", op: "==", modRevision }],
        success: [
          { type: "put", key, value: JSON.stringify(updated) },
          {
            type: "put",
            key: revisionKey(namespace, name, revision),
            value: JSON.stringify({
              revision,
              templateHash: previous.templateHash,
              spec: doc,
              createdAtMs: now,
            }),
          },
        ],
      });
      if (!result.succeeded) {
        throw CloudlessError.conflict(`workload "${name}" changed meanwhile; try again`);
      }
      await events.record({
        type: "WorkloadRolledBack",
        category: "scheduling",
        subject: `workload/${namespace}/${name}`,
        reason: "RolloutUndo",
        message: `rolling back to the spec of revision ${previous.revision} as revision ${revision}`,
        actor: actorName(identity),
      });
      services.workloads.trigger();
      const state = await readFreshClusterState(store, services.workloads.cache);
      return {
        workload: toWorkload(state, updated),
        fromRevision: BigInt(workload.revision),
        toRevision: BigInt(previous.revision),
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

/**
 * Refuses a create beyond workloadsPerNamespace, and a change that raises the replicas
 * all workloads ask for beyond replicasPerCluster. A change that lowers them is always
 * allowed, so a cluster over a bound (from before it existed) can get back under it.
 */
export function checkQuotas(
  state: ClusterState,
  namespace: string,
  name: string,
  existing: WorkloadRecord | undefined,
  replicas: number,
): void {
  let inNamespace = 0;
  let clusterReplicas = 0;
  for (const { value } of state.workloads.values()) {
    if (value.namespace === namespace) inNamespace++;
    if (value.namespace !== namespace || value.name !== name) clusterReplicas += value.replicas;
  }
  if (!existing && inNamespace >= limits.workloadsPerNamespace) {
    throw CloudlessError.invalid(
      `namespace "${namespace}" already has ${inNamespace} workloads, the most allowed ` +
        `${limitRef("workloadsPerNamespace")}; delete one first or use another namespace`,
    );
  }
  const total = clusterReplicas + replicas;
  if (replicas > (existing?.replicas ?? 0) && total > limits.replicasPerCluster) {
    throw CloudlessError.invalid(
      `replicas: ${replicas} would make ${total} replicas in the cluster, and at most ` +
        `${limits.replicasPerCluster} are allowed ${limitRef("replicasPerCluster")}; ` +
        "scale other workloads down first",
    );
  }
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

function requireLeader(services: CoordinatorServices): void {
  if (!services.leadership.isLeader) throw CloudlessError.notLeader(services.leadership.leaderUrl);
}

/**
 * The workloads' writes: apply, scale, undo and delete, with their quotas, revision
 * history and events. The API handler decodes the request and encodes the answer; what
 * a change means for the store is decided here.
 */
import { CloudlessError } from "../../api/errors.js";
import { limitRef, limits } from "../../api/limits.js";
import {
  canonicalSpecJson,
  formatSpecErrors,
  parseWorkloadValue,
  specHash,
} from "../../api/workload/parse.js";
import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import type { Rng } from "../../lib/rng.js";
import { injectTraceparent } from "../../observe/tracing.js";
import {
  type ConfigRestart,
  decideConfigRestart,
  mountedConfigNames,
  readConfigStamps,
  restartConfigNames,
} from "../configs/configStamps.js";
import { type ClusterCache, readFreshClusterState } from "../controllers/clusterCache.js";
import type { ClusterState } from "../controllers/clusterState.js";
import {
  type ConfigStamps,
  revisionKey,
  revisionListPrefix,
  type WorkloadRecord,
  workloadId,
  workloadKey,
  workloadRecordSchema,
  workloadRevisionRecordSchema,
} from "../controllers/records.js";
import type { EventLog } from "../events/eventLog.js";
import { servicePortConflict } from "../services/serviceModel.js";
import { compareAndSwap } from "../store/compareAndSwap.js";
import type { Op, Store } from "../store/store.js";

/** Revisions kept per workload for `rollout undo`. */
const revisionHistoryLimit = 10;
/** Tries of a compare-and-swap write before the caller is told to try again. */
const writeAttempts = 5;

function concurrentChange(name: string): string {
  return `workload "${name}" is being changed concurrently; try again`;
}

/**
 * Everything but the replica count, the rollout knobs, whether the rebalancer may move
 * replicas and how the workload is published as a service (a weight or a service name
 * changes routing, not what a replica runs): a change here is a new revision.
 * (`placement.rebalance` and `service` are left out also so that a spec applied before
 * they existed keeps its hash.)
 */
export function templateHash(doc: WorkloadSpecDocument): string {
  const { replicas: _r, minAvailable: _m, rollout: _o, service: _s, ...template } = doc.spec;
  const { rebalance: _b, ...placement } = template.placement;
  return specHash({ ...doc, spec: { ...template, placement } } as WorkloadSpecDocument);
}

export function workloadNotFound(namespace: string, name: string): CloudlessError {
  return CloudlessError.notFound(
    `workload "${name}" not found in namespace "${namespace}"; run \`cloudless workload list\` to see workloads`,
  );
}

export interface WorkloadRegistryDeps {
  store: Store;
  clock: Clock;
  /** Workload uids come from here (ADR 0041). */
  rng: Rng;
  events: EventLog;
  /** The leader's controller: its cache serves reads; a change triggers a pass. */
  controller: { readonly cache: ClusterCache; trigger(): void };
}

export type ApplyAction = "created" | "updated" | "scaled" | "unchanged";

/** A workload as written (or, for a dry run, as it would be), with the state it was read at. */
export interface WorkloadChange {
  record: WorkloadRecord;
  state: ClusterState;
}

export class WorkloadRegistry {
  constructor(private readonly deps: WorkloadRegistryDeps) {}

  /** The cluster state, from the leader's cache when it is fresh, else from the store. */
  state(): Promise<ClusterState> {
    return readFreshClusterState(this.deps.store, this.deps.controller.cache);
  }

  /** A workload with the state it was read at; NotFound names how to list them. */
  async load(namespace: string, name: string) {
    const state = await this.state();
    const entry = state.workloads.get(workloadId(namespace, name));
    if (!entry) throw workloadNotFound(namespace, name);
    return { state, workload: entry.value, modRevision: entry.modRevision };
  }

  /**
   * Creates or changes a workload from a parsed spec. A dry run checks the same (quotas
   * included) and answers what it would be, writing nothing.
   */
  async apply(
    doc: WorkloadSpecDocument,
    options: { dryRun: boolean; actor: string },
  ): Promise<WorkloadChange & { action: ApplyAction }> {
    const { store, clock, events } = this.deps;
    const { name, namespace } = doc.metadata;
    const key = workloadKey(namespace, name);
    const now = clock.nowMs();
    // The replicas this change makes are placed and started in this request's trace.
    const traceparent = injectTraceparent();
    // The configs it mounts as they are now: a new revision carries the stamps of those it
    // restarts for (ADR 0056); a config updated after this read rolls it once more.
    const mounted = await readConfigStamps(store, namespace, mountedConfigNames(doc));
    const configVersions = stampsOf(mounted, restartConfigNames(doc));
    type Applied = {
      existing: WorkloadRecord | undefined;
      record: WorkloadRecord;
      action: ApplyAction;
    };
    const outcome = await compareAndSwap<
      { done: WorkloadChange & { action: ApplyAction } } | Applied
    >(
      store,
      key,
      async (existingKv) => {
        const existing = existingKv
          ? decodeRecord(workloadRecordSchema, key, existingKv.value)
          : undefined;
        // Quotas are checked against the cluster as it is, a dry run included, before
        // anything is written. Two concurrent creates may both pass: the bounds are soft
        // by the number of requests in flight.
        const current = await this.state();
        checkQuotas(current, namespace, name, existing, doc.spec.replicas);
        // Workloads of one service share its VIP: a port name has one number (REQ-041).
        const clash = servicePortConflict(
          doc,
          [...current.workloads.values()].map((entry) => entry.value),
        );
        if (clash) throw CloudlessError.failedPrecondition(`spec.service: ${clash}`);
        const hash = templateHash(doc);
        const ops: Op[] = [];
        let action: ApplyAction;
        let record: WorkloadRecord;
        if (!existing) {
          action = "created";
          record = {
            // A dry run makes up no identity: its workload has no uid and no times yet.
            uid: options.dryRun ? "" : this.deps.rng.uuid(),
            namespace,
            name,
            revision: 1,
            templateHash: hash,
            spec: doc,
            replicas: doc.spec.replicas,
            minAvailable: doc.spec.minAvailable,
            createdAtMs: options.dryRun ? 0 : now,
            updatedAtMs: options.dryRun ? 0 : now,
            traceparent,
            ...configVersions,
          };
        } else if (existing.templateHash === hash) {
          const same =
            canonicalSpecJson(existing.spec as WorkloadSpecDocument) === canonicalSpecJson(doc);
          if (same && existing.replicas === doc.spec.replicas) {
            return {
              result: {
                done: { record: existing, state: await this.state(), action: "unchanged" },
              },
            };
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
          const { configVersions: _stale, ...kept } = existing;
          record = {
            ...kept,
            revision: existing.revision + 1,
            templateHash: hash,
            spec: doc,
            replicas: doc.spec.replicas,
            minAvailable: doc.spec.minAvailable,
            updatedAtMs: now,
            traceparent,
            ...configVersions,
          };
        }
        if (options.dryRun) {
          // What it would be, with the times it has now: nothing was updated.
          const preview = existing ? { ...record, updatedAtMs: existing.updatedAtMs } : record;
          return { result: { done: { record: preview, state: await this.state(), action } } };
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
              ...configVersions,
            }),
          });
          const expired = record.revision - revisionHistoryLimit;
          if (expired >= 1)
            ops.push({ type: "delete", key: revisionKey(namespace, name, expired) });
        }
        return { write: ops, result: { existing, record, action } };
      },
      {
        clock,
        rng: this.deps.rng,
        maxAttempts: writeAttempts,
        conflictMessage: concurrentChange(name),
      },
    );
    if ("done" in outcome) return outcome.done;
    const { existing, record, action } = outcome;
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
        action === "updated" && existing?.revision !== record.revision ? "NewRevision" : "Applied",
      message:
        action === "created"
          ? `created with ${record.replicas} replica${record.replicas === 1 ? "" : "s"}`
          : action === "scaled"
            ? `scaled to ${record.replicas}`
            : existing?.revision !== record.revision
              ? `rolling out revision ${record.revision}`
              : "settings updated",
      actor: options.actor,
    });
    await this.reportMissingConfigs(namespace, name, mounted);
    this.deps.controller.trigger();
    return { record, state: await this.state(), action };
  }

  /**
   * Says which configs a workload mounts that do not exist (yet): like Kubernetes, the
   * apply succeeds and the replicas wait for them (the agent's side); this names them.
   */
  private async reportMissingConfigs(
    namespace: string,
    name: string,
    mounted: ConfigStamps,
  ): Promise<void> {
    const missing = Object.entries(mounted)
      .filter(([, stamp]) => stamp.modRevision === 0)
      .map(([config]) => config);
    if (missing.length === 0) return;
    await this.deps.events.record({
      type: "ConfigMissing",
      category: "operations",
      subject: `workload/${namespace}/${name}`,
      reason: "ConfigNotFound",
      message: `mounts config${missing.length === 1 ? "" : "s"} ${missing.join(", ")}, which do${missing.length === 1 ? "es" : ""} not exist in namespace ${namespace}; create ${missing.length === 1 ? "it" : "them"} with \`cloudless config create\``,
      actor: "coordinator",
    });
  }

  /**
   * onChange: restart (ADR 0056): when a config the workload mounts with `onChange:
   * restart` changed since its current revision was made, makes a new revision with the
   * same template and the configs' new stamps, so the rollout controller replaces every
   * replica, never below minAvailable. Decided again on the record as read inside the
   * compare-and-swap, so two passes (or a new leader after failover) make one revision
   * per change; undefined when nothing changed.
   */
  async restartForConfigs(
    namespace: string,
    name: string,
    actor: string,
  ): Promise<(ConfigRestart & { revision: number }) | undefined> {
    const { store, clock, events } = this.deps;
    const key = workloadKey(namespace, name);
    const outcome = await compareAndSwap<(ConfigRestart & { revision: number }) | undefined>(
      store,
      key,
      async (current) => {
        if (!current) return { result: undefined };
        const workload = decodeRecord(workloadRecordSchema, key, current.value);
        const names = restartConfigNames(workload.spec);
        if (names.length === 0) return { result: undefined };
        const restart = decideConfigRestart(
          workload,
          await readConfigStamps(store, namespace, names),
        );
        if (!restart) return { result: undefined };
        const now = clock.nowMs();
        const revision = workload.revision + 1;
        const cause = `config changed: ${restart.changed.join(", ")}`;
        const updated: WorkloadRecord = {
          ...workload,
          revision,
          configVersions: restart.stamps,
          updatedAtMs: now,
          traceparent: injectTraceparent(),
        };
        const ops: Op[] = [
          { type: "put", key, value: JSON.stringify(updated) },
          {
            type: "put",
            key: revisionKey(namespace, name, revision),
            value: JSON.stringify({
              revision,
              templateHash: workload.templateHash,
              spec: workload.spec,
              createdAtMs: now,
              configVersions: restart.stamps,
              cause,
            }),
          },
        ];
        const expired = revision - revisionHistoryLimit;
        if (expired >= 1) ops.push({ type: "delete", key: revisionKey(namespace, name, expired) });
        return { write: ops, result: { ...restart, revision } };
      },
      {
        clock,
        rng: this.deps.rng,
        maxAttempts: writeAttempts,
        conflictMessage: concurrentChange(name),
      },
    );
    if (!outcome) return undefined;
    await events.record({
      type: "WorkloadRestarted",
      category: "scheduling",
      subject: `workload/${namespace}/${name}`,
      reason: "ConfigChanged",
      message: `rolling out revision ${outcome.revision}: config changed (${outcome.changed.join(", ")}), onChange: restart`,
      actor,
    });
    this.deps.controller.trigger();
    return outcome;
  }

  /** Sets the replica count (capping minAvailable to it); the caller checked its range. */
  async scale(
    namespace: string,
    name: string,
    replicas: number,
    actor: string,
  ): Promise<WorkloadChange> {
    const { store, clock, events } = this.deps;
    const key = workloadKey(namespace, name);
    const { state, workload, updated } = await compareAndSwap(
      store,
      key,
      async (current) => {
        if (!current) throw workloadNotFound(namespace, name);
        const workload = decodeRecord(workloadRecordSchema, key, current.value);
        const state = await this.state();
        checkQuotas(state, namespace, name, workload, replicas);
        const doc = workload.spec as WorkloadSpecDocument;
        const minAvailable = Math.min(workload.minAvailable, replicas);
        const updated: WorkloadRecord = {
          ...workload,
          replicas,
          minAvailable,
          spec: { ...doc, spec: { ...doc.spec, replicas, minAvailable } },
          updatedAtMs: clock.nowMs(),
          traceparent: injectTraceparent(),
        };
        return {
          write: [{ type: "put", key, value: JSON.stringify(updated) }],
          result: { state, workload, updated },
        };
      },
      {
        clock,
        rng: this.deps.rng,
        maxAttempts: writeAttempts,
        conflictMessage: concurrentChange(name),
      },
    );
    await events.record({
      type: "WorkloadScaled",
      category: "scheduling",
      subject: `workload/${namespace}/${name}`,
      reason: "Scaled",
      message: `scaled from ${workload.replicas} to ${replicas}`,
      actor,
    });
    this.deps.controller.trigger();
    return { record: updated, state };
  }

  /**
   * Rolls back to the newest earlier revision with another template, as a new revision
   * (the replica count stays). One try: a change meanwhile is a conflict to retry.
   */
  async undo(
    namespace: string,
    name: string,
    actor: string,
  ): Promise<WorkloadChange & { fromRevision: number; toRevision: number }> {
    const { store, clock, events } = this.deps;
    const { workload, modRevision } = await this.load(namespace, name);
    const history = await store.range(revisionListPrefix(namespace, name));
    const previous = history.kvs
      .map((kv) => decodeRecord(workloadRevisionRecordSchema, kv.key, kv.value))
      .filter((r) => r.revision < workload.revision && r.templateHash !== workload.templateHash)
      .sort((a, b) => b.revision - a.revision)[0];
    if (!previous) {
      throw CloudlessError.invalid(
        `workload "${name}" has no previous revision to roll back to (current revision ${workload.revision})`,
      );
    }
    const now = clock.nowMs();
    const revision = workload.revision + 1;
    // The old spec is checked again (it may predate a limit that holds now), so the
    // stored document is read as the parser's input, not trusted as a parsed one.
    const previousSpec = previous.spec as WorkloadSpecDocument;
    const restored = parseWorkloadValue({
      ...previousSpec,
      spec: {
        ...previousSpec.spec,
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
    // The replicas restart anyway: they read the configs as they are now.
    const configVersions = stampsOf(
      await readConfigStamps(store, namespace, restartConfigNames(doc)),
      restartConfigNames(doc),
    );
    const { configVersions: _stale, ...kept } = workload;
    const updated: WorkloadRecord = {
      ...kept,
      revision,
      templateHash: previous.templateHash,
      spec: doc,
      updatedAtMs: now,
      traceparent: injectTraceparent(),
      ...configVersions,
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
            ...configVersions,
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
      actor,
    });
    this.deps.controller.trigger();
    return {
      record: updated,
      state: await this.state(),
      fromRevision: workload.revision,
      toRevision: previous.revision,
    };
  }

  /** Deletes a workload and its revision history; its replicas are stopped by the controller. */
  async delete(namespace: string, name: string, actor: string): Promise<void> {
    const key = workloadKey(namespace, name);
    const result = await this.deps.store.txn({
      compare: [{ key, target: "version", op: ">", version: 0 }],
      success: [
        { type: "delete", key },
        { type: "deletePrefix", prefix: revisionListPrefix(namespace, name) },
      ],
    });
    if (!result.succeeded) throw workloadNotFound(namespace, name);
    await this.deps.events.record({
      type: "WorkloadDeleted",
      category: "scheduling",
      subject: `workload/${namespace}/${name}`,
      reason: "Deleted",
      message: "workload deleted; its replicas are being stopped",
      actor,
    });
    this.deps.controller.trigger();
  }
}

/** `{configVersions}` of the named configs, or nothing when the spec restarts for none. */
function stampsOf(
  stamps: ConfigStamps,
  names: readonly string[],
): { configVersions?: ConfigStamps } {
  if (names.length === 0) return {};
  return { configVersions: Object.fromEntries(names.map((name) => [name, stamps[name]!])) };
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

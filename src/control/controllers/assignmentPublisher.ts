/**
 * Publishes each node's desired set to its agent (through the AssignmentHub): the replicas
 * placed on it that should run, each with the spec of its revision serialized once per
 * revision record, so an unchanged node costs a fingerprint compare.
 */
import { createHash } from "node:crypto";
import type { AssignmentEntry, AssignmentHub } from "./assignmentHub.js";
import type { ClusterCache } from "./clusterCache.js";
import type { ClusterState } from "./clusterState.js";
import { type WorkloadRecord, workloadId } from "./records.js";
import { asSpecView } from "./specView.js";

/** A spec document serialized once per parsed revision record, with a digest of it. */
interface SerializedSpec {
  json: string;
  digest: string;
}

export class AssignmentPublisher {
  /** Spec documents serialized once per parsed object (a revision record or workload). */
  private readonly serializedSpecs = new WeakMap<object, SerializedSpec>();

  constructor(
    private readonly cache: ClusterCache,
    private readonly assignments: AssignmentHub,
  ) {}

  /**
   * Pushes each node's desired set: of `only` (every known node when undefined). Reads
   * the cache as it is now — the newest committed state.
   */
  publish(state: ClusterState, only: ReadonlySet<string> | undefined): void {
    let nodes: Iterable<string>;
    if (only) {
      nodes = only;
    } else {
      const all = new Set(state.nodes.keys());
      for (const node of this.cache.nodeNames()) all.add(node);
      for (const node of this.assignments.knownNodes()) all.add(node);
      nodes = all;
    }
    for (const node of nodes) {
      const entries: AssignmentEntry[] = [];
      for (const { value: replica } of this.cache.replicasOnNode(node).values()) {
        if (replica.desired !== "Running") continue;
        const workload = this.cache.workload(workloadId(replica.namespace, replica.workload));
        if (!workload) continue;
        const spec = this.serializedSpec(workload.value, replica.revision);
        entries.push({
          replicaId: replica.id,
          namespace: replica.namespace,
          workload: replica.workload,
          revision: replica.revision,
          specJson: spec.json,
          specDigest: spec.digest,
          ...(replica.traceparent ? { traceparent: replica.traceparent } : {}),
        });
      }
      // A node never heard of (no record, no replicas, never published) needs no message.
      if (entries.length === 0 && !this.cache.node(node) && !this.assignments.has(node)) {
        continue;
      }
      this.assignments.publish(node, entries);
    }
  }

  /** The spec of a workload's revision as sent to agents, serialized once per record. */
  private serializedSpec(workload: WorkloadRecord, revision: number): SerializedSpec {
    const record = this.cache.revisionRecord(`${workload.namespace}/${workload.name}/${revision}`);
    const source = (record?.spec ?? workload.spec) as object;
    let serialized = this.serializedSpecs.get(source);
    if (!serialized) {
      const json = JSON.stringify(asSpecView(source));
      serialized = { json, digest: createHash("sha256").update(json).digest("base64") };
      this.serializedSpecs.set(source, serialized);
    }
    return serialized;
  }
}

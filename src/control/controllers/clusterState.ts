import { decodeRecord } from "../../lib/recordCodec.js";
import { type NodeRecord, nodeKeyPrefix, nodeRecordSchema } from "../nodes/nodeRecord.js";
import type { KeyValue, Store } from "../store/store.js";
import {
  type ReplicaRecord,
  replicaPrefix,
  replicaRecordSchema,
  revisionPrefix,
  type WorkloadRecord,
  type WorkloadRevisionRecord,
  workloadId,
  workloadPrefix,
  workloadRecordSchema,
  workloadRevisionRecordSchema,
} from "./records.js";

export interface Versioned<T> {
  value: T;
  modRevision: number;
}

/** One consistent read of everything the controllers reason about, at one revision. */
export interface ClusterState {
  revision: number;
  nodes: Map<string, NodeRecord>;
  workloads: Map<string, Versioned<WorkloadRecord>>;
  /** By "namespace/workload", including replicas whose workload is gone. */
  replicasByWorkload: Map<string, Versioned<ReplicaRecord>[]>;
  /** "namespace/name/revision" → spec document of that revision. */
  revisions: Map<string, WorkloadRevisionRecord>;
}

/** The keys readClusterState reads, in one read-only transaction (one revision). */
const statePrefixes = [nodeKeyPrefix, workloadPrefix, replicaPrefix, revisionPrefix] as const;

async function readRanges(store: Store): Promise<{ revision: number; ranges: KeyValue[][] }> {
  // One read-only transaction: all ranges see the same revision.
  const result = await store.txn({
    compare: [],
    success: statePrefixes.map((prefix) => ({ type: "range" as const, prefix })),
  });
  return {
    revision: result.revision,
    ranges: result.results.map((r) => (r.type === "range" ? r.kvs : [])),
  };
}

/** Every key readClusterState reads, unparsed, with the revision they were read at. */
export async function readClusterStateKvs(
  store: Store,
): Promise<{ revision: number; kvs: KeyValue[] }> {
  const { revision, ranges } = await readRanges(store);
  return { revision, kvs: ranges.flat() };
}

/**
 * Every node, workload, replica and revision record at one revision, each decoded by its
 * codec: a malformed record fails the read with a MalformedRecordError naming its key.
 */
export async function readClusterState(store: Store): Promise<ClusterState> {
  const result = await readRanges(store);
  const ranges = result.ranges;
  const nodes = new Map<string, NodeRecord>();
  for (const kv of ranges[0] ?? []) {
    const node = decodeRecord(nodeRecordSchema, kv.key, kv.value);
    nodes.set(node.name, node);
  }
  const workloads = new Map<string, Versioned<WorkloadRecord>>();
  for (const kv of ranges[1] ?? []) {
    const workload = decodeRecord(workloadRecordSchema, kv.key, kv.value);
    workloads.set(workloadId(workload.namespace, workload.name), {
      value: workload,
      modRevision: kv.modRevision,
    });
  }
  const replicasByWorkload = new Map<string, Versioned<ReplicaRecord>[]>();
  for (const kv of ranges[2] ?? []) {
    const replica = decodeRecord(replicaRecordSchema, kv.key, kv.value);
    const key = workloadId(replica.namespace, replica.workload);
    let list = replicasByWorkload.get(key);
    if (!list) {
      list = [];
      replicasByWorkload.set(key, list);
    }
    list.push({ value: replica, modRevision: kv.modRevision });
  }
  const revisions = new Map<string, WorkloadRevisionRecord>();
  for (const kv of ranges[3] ?? []) {
    const revision = decodeRecord(workloadRevisionRecordSchema, kv.key, kv.value);
    // Key: /workloadrevisions/<ns>/<name>/<rev padded>
    const [namespace, name] = kv.key.slice(revisionPrefix.length).split("/");
    revisions.set(`${namespace}/${name}/${revision.revision}`, revision);
  }
  return { revision: result.revision, nodes, workloads, replicasByWorkload, revisions };
}

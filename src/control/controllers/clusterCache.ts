import { decodeRecord, MalformedRecordError } from "../../lib/recordCodec.js";
import type { Logger } from "../../observe/logger.js";
import { type NodeRecord, nodeKeyPrefix, nodeRecordSchema } from "../nodes/nodeRecord.js";
import type { KeyValue, Store, Watch, WatchEnd, WatchEvent } from "../store/store.js";
import {
  type ClusterState,
  readClusterState,
  readClusterStateKvs,
  type Versioned,
} from "./clusterState.js";
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

/** What one applied revision changed, for consumers that work incrementally. */
export interface CacheChange {
  revision: number;
  /** Nodes whose record was written or deleted. */
  nodes: ReadonlySet<string>;
  /** Workloads ("namespace/name") whose record, revisions or replicas changed. */
  workloads: ReadonlySet<string>;
  /**
   * Nodes whose desired set may have changed: a replica placed on or removed from them,
   * or one of theirs changed in what an assignment carries (not a status report).
   */
  replicaNodes: ReadonlySet<string>;
  /** True when the whole cache was rebuilt (start, or a resync after the watch ended). */
  reset: boolean;
}

export type CacheListener = (change: CacheChange) => void;

export interface ClusterCacheOptions {
  logger?: Logger;
  /** Waiting for a revision gives up after this long (the caller then works on what it has). */
  waitTimeoutMs?: number;
  /** Pause before re-reading after the watch ended, so a failing store is not hammered. */
  resyncDelayMs?: number;
}

interface Waiter {
  revision: number;
  resolve: (caughtUp: boolean) => void;
  timer: NodeJS.Timeout;
}

/**
 * The leader's in-memory copy of everything the controllers reason about (nodes,
 * workloads, their revisions and replicas), parsed once and kept current by one store
 * watch that starts at the revision of the initial read. Every key under the watched
 * prefix advances the cache one revision at a time, so between two deliveries the cache
 * is exactly the store at `revision` — the same view readClusterState gives, without
 * re-reading and re-parsing the store on every pass and every agent report.
 *
 * Reads stay safe without a fresh read: writers commit with compare-and-swap on the mod
 * revisions the cache showed them, so a stale cache only costs a failed compare and a
 * retry, never a wrong write. Records are never mutated in place — a change replaces the
 * Versioned entry — so a snapshot handed out stays the state at its revision.
 */
export class ClusterCache {
  private nodes = new Map<string, NodeRecord>();
  private workloads = new Map<string, Versioned<WorkloadRecord>>();
  /** By store key, so deletes (which carry only the key) find what they remove. */
  private replicas = new Map<string, Versioned<ReplicaRecord>>();
  private byWorkload = new Map<string, Map<string, Versioned<ReplicaRecord>>>();
  private byNode = new Map<string, Map<string, Versioned<ReplicaRecord>>>();
  /** "namespace/name/revision" → the revision's record; keyed by store key in revisionKeys. */
  private revisions = new Map<string, WorkloadRevisionRecord>();
  private revisionKeys = new Map<string, string>();
  /** Per-workload replica arrays handed out by snapshot(), rebuilt only when changed. */
  private arrays = new Map<string, Versioned<ReplicaRecord>[]>();
  private currentRevision = 0;
  private watch: Watch | undefined;
  private running = false;
  /** Bumped by every start/stop/resync, so callbacks of an older watch are ignored. */
  private generation = 0;
  private readyPromise: Promise<void> | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private readonly listeners = new Set<CacheListener>();
  private waiters: Waiter[] = [];

  constructor(
    private readonly store: Store,
    private readonly options: ClusterCacheOptions = {},
  ) {}

  /** The store revision the cache reflects (0 before the first read). */
  get revision(): number {
    return this.currentRevision;
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Reads everything and starts following the store; callable again after stop(). */
  async start(): Promise<void> {
    if (this.running) return this.ready();
    this.running = true;
    this.readyPromise = this.load(++this.generation);
    return this.readyPromise;
  }

  /** Stops following the store and drops what was cached. */
  stop(): void {
    if (!this.running) return;
    this.running = false;
    this.generation++;
    this.watch?.cancel();
    this.watch = undefined;
    if (this.resyncTimer) clearTimeout(this.resyncTimer);
    this.resyncTimer = undefined;
    this.clear();
    this.currentRevision = 0;
    this.readyPromise = undefined;
    for (const waiter of this.waiters) {
      clearTimeout(waiter.timer);
      waiter.resolve(false);
    }
    this.waiters = [];
  }

  /** Resolves once the cache holds a full read (after start() or a resync). */
  async ready(): Promise<void> {
    if (!this.readyPromise) throw new Error("cluster cache is not started");
    await this.readyPromise;
  }

  /**
   * Resolves true once the cache has applied every change up to `revision` (e.g. the
   * revision a transaction returned), false if that took longer than the wait timeout
   * or the cache stopped.
   */
  waitFor(revision: number): Promise<boolean> {
    if (this.currentRevision >= revision) return Promise.resolve(true);
    if (!this.running) return Promise.resolve(false);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        revision,
        resolve,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve(false);
        }, this.options.waitTimeoutMs ?? 5_000),
      };
      this.waiters.push(waiter);
    });
  }

  /** Called after every applied revision (and with reset after a full read). */
  onChange(listener: CacheListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * The state at the current revision. The maps are copies and the replica arrays are
   * not touched again by the cache, so the snapshot stays consistent across awaits.
   */
  snapshot(): ClusterState {
    const replicasByWorkload = new Map<string, Versioned<ReplicaRecord>[]>();
    for (const [key, replicas] of this.byWorkload) {
      let array = this.arrays.get(key);
      if (!array) {
        array = [...replicas.values()];
        this.arrays.set(key, array);
      }
      replicasByWorkload.set(key, array);
    }
    return {
      revision: this.currentRevision,
      nodes: new Map(this.nodes),
      workloads: new Map(this.workloads),
      replicasByWorkload,
      revisions: new Map(this.revisions),
    };
  }

  node(name: string): NodeRecord | undefined {
    return this.nodes.get(name);
  }

  nodeNames(): IterableIterator<string> {
    return this.nodes.keys();
  }

  workload(id: string): Versioned<WorkloadRecord> | undefined {
    return this.workloads.get(id);
  }

  /** A revision record by "namespace/name/revision". */
  revisionRecord(id: string): WorkloadRevisionRecord | undefined {
    return this.revisions.get(id);
  }

  /** The replicas placed on a node, keyed by store key (a live view: do not hold across awaits). */
  replicasOnNode(name: string): ReadonlyMap<string, Versioned<ReplicaRecord>> {
    return this.byNode.get(name) ?? emptyMap;
  }

  replica(key: string): Versioned<ReplicaRecord> | undefined {
    return this.replicas.get(key);
  }

  // --- loading and following -------------------------------------------------------

  private async load(generation: number): Promise<void> {
    const state = await readClusterStateKvs(this.store);
    if (generation !== this.generation) return;
    this.clear();
    for (const kv of state.kvs) this.putDecoded(kv, undefined);
    this.currentRevision = state.revision;
    this.watch = this.store.watch(
      "",
      { fromRevision: state.revision + 1 },
      {
        onEvents: (events, revision) => {
          if (generation === this.generation) this.applyRevision(events, revision);
        },
        onEnd: (end) => {
          if (generation === this.generation) this.resync(end);
        },
      },
    );
    this.emit({
      revision: this.currentRevision,
      nodes: new Set(),
      workloads: new Set(),
      replicaNodes: new Set(),
      reset: true,
    });
    this.release();
  }

  /** The watch ended (history compacted, store closed): read everything again. */
  private resync(end: WatchEnd): void {
    this.options.logger?.warn(
      { reason: end.reason, message: end.message },
      "cluster cache watch ended; reading the state again",
    );
    const generation = ++this.generation;
    this.watch = undefined;
    this.resyncTimer = setTimeout(() => {
      this.resyncTimer = undefined;
      if (generation !== this.generation) return;
      this.readyPromise = this.load(generation).catch((error: unknown) => {
        this.options.logger?.error({ err: error }, "cluster cache could not read the state");
        if (generation === this.generation)
          this.resync({ reason: "closed", message: "read failed" });
      });
    }, this.options.resyncDelayMs ?? 100);
  }

  private applyRevision(events: WatchEvent[], revision: number): void {
    const change = {
      revision,
      nodes: new Set<string>(),
      workloads: new Set<string>(),
      replicaNodes: new Set<string>(),
      reset: false,
    };
    let relevant = false;
    for (const event of events) {
      if (event.type === "put") relevant = this.putDecoded(event.kv, change) || relevant;
      else relevant = this.delete(event.kv.key, change) || relevant;
    }
    this.currentRevision = revision;
    if (relevant) this.emit(change);
    this.release();
  }

  /**
   * Applies one put, refusing a malformed record: it is logged with its key and not
   * applied (the previous value, if any, stays), so one bad record neither stops the
   * leader's control loop nor wedges the watch.
   */
  private putDecoded(kv: KeyValue, change: MutableChange | undefined): boolean {
    try {
      return this.put(kv, change);
    } catch (error) {
      if (!(error instanceof MalformedRecordError)) throw error;
      this.options.logger?.error(
        { key: error.key, detail: error.detail },
        "cluster cache refused a malformed store record",
      );
      return false;
    }
  }

  /** Applies one put (decoding first: nothing changes if it is malformed); returns whether the key is one the cache keeps. */
  private put(kv: KeyValue, change: MutableChange | undefined): boolean {
    const key = kv.key;
    if (key.startsWith(replicaPrefix)) {
      const value = decodeRecord(replicaRecordSchema, key, kv.value);
      const entry = { value, modRevision: kv.modRevision };
      const previous = this.replicas.get(key);
      const assignmentChanged = !previous || !sameAssignment(previous.value, value);
      if (previous) this.unindexReplica(key, previous, change, assignmentChanged);
      this.replicas.set(key, entry);
      const workload = workloadId(value.namespace, value.workload);
      indexInto(this.byWorkload, workload, key, entry);
      this.arrays.delete(workload);
      if (value.node !== "") indexInto(this.byNode, value.node, key, entry);
      change?.workloads.add(workload);
      if (value.node !== "" && assignmentChanged) change?.replicaNodes.add(value.node);
      return true;
    }
    if (key.startsWith(nodeKeyPrefix)) {
      const node = decodeRecord(nodeRecordSchema, key, kv.value);
      this.nodes.set(node.name, node);
      change?.nodes.add(node.name);
      return true;
    }
    if (key.startsWith(workloadPrefix)) {
      const workload = decodeRecord(workloadRecordSchema, key, kv.value);
      const id = workloadId(workload.namespace, workload.name);
      this.workloads.set(id, { value: workload, modRevision: kv.modRevision });
      change?.workloads.add(id);
      return true;
    }
    if (key.startsWith(revisionPrefix)) {
      const record = decodeRecord(workloadRevisionRecordSchema, key, kv.value);
      // Key: /workloadrevisions/<ns>/<name>/<rev padded>
      const [namespace, name] = key.slice(revisionPrefix.length).split("/");
      const id = `${namespace}/${name}/${record.revision}`;
      this.revisions.set(id, record);
      this.revisionKeys.set(key, id);
      change?.workloads.add(`${namespace}/${name}`);
      return true;
    }
    return false;
  }

  private delete(key: string, change: MutableChange): boolean {
    if (key.startsWith(replicaPrefix)) {
      const previous = this.replicas.get(key);
      if (!previous) return false;
      this.replicas.delete(key);
      this.unindexReplica(key, previous, change);
      return true;
    }
    if (key.startsWith(nodeKeyPrefix)) {
      const name = key.slice(nodeKeyPrefix.length);
      this.nodes.delete(name);
      change.nodes.add(name);
      return true;
    }
    if (key.startsWith(workloadPrefix)) {
      const id = key.slice(workloadPrefix.length);
      this.workloads.delete(id);
      change.workloads.add(id);
      return true;
    }
    if (key.startsWith(revisionPrefix)) {
      const id = this.revisionKeys.get(key);
      if (id === undefined) return false;
      this.revisionKeys.delete(key);
      this.revisions.delete(id);
      change.workloads.add(id.slice(0, id.lastIndexOf("/")));
      return true;
    }
    return false;
  }

  private unindexReplica(
    key: string,
    previous: Versioned<ReplicaRecord>,
    change: MutableChange | undefined,
    assignmentChanged = true,
  ): void {
    const workload = workloadId(previous.value.namespace, previous.value.workload);
    unindexFrom(this.byWorkload, workload, key);
    this.arrays.delete(workload);
    change?.workloads.add(workload);
    if (previous.value.node !== "") {
      unindexFrom(this.byNode, previous.value.node, key);
      if (assignmentChanged) change?.replicaNodes.add(previous.value.node);
    }
  }

  private clear(): void {
    this.nodes = new Map();
    this.workloads = new Map();
    this.replicas = new Map();
    this.byWorkload = new Map();
    this.byNode = new Map();
    this.revisions = new Map();
    this.revisionKeys = new Map();
    this.arrays = new Map();
  }

  private emit(change: CacheChange): void {
    for (const listener of this.listeners) {
      try {
        listener(change);
      } catch (error) {
        this.options.logger?.error({ err: error }, "cluster cache listener failed");
      }
    }
  }

  private release(): void {
    if (this.waiters.length === 0) return;
    const still: Waiter[] = [];
    for (const waiter of this.waiters) {
      if (waiter.revision <= this.currentRevision) {
        clearTimeout(waiter.timer);
        waiter.resolve(true);
      } else {
        still.push(waiter);
      }
    }
    this.waiters = still;
  }
}

interface MutableChange {
  nodes: Set<string>;
  workloads: Set<string>;
  replicaNodes: Set<string>;
}

const emptyMap: ReadonlyMap<string, Versioned<ReplicaRecord>> = new Map();

/**
 * Whether two versions of a replica put the same entry in their node's desired set
 * (what publishAssignments reads): status reports, the most frequent write, do not.
 */
function sameAssignment(a: ReplicaRecord, b: ReplicaRecord): boolean {
  return (
    a.node === b.node &&
    a.desired === b.desired &&
    a.revision === b.revision &&
    a.traceparent === b.traceparent &&
    a.namespace === b.namespace &&
    a.workload === b.workload
  );
}

function indexInto(
  index: Map<string, Map<string, Versioned<ReplicaRecord>>>,
  group: string,
  key: string,
  entry: Versioned<ReplicaRecord>,
): void {
  let map = index.get(group);
  if (!map) {
    map = new Map();
    index.set(group, map);
  }
  map.set(key, entry);
}

function unindexFrom(
  index: Map<string, Map<string, Versioned<ReplicaRecord>>>,
  group: string,
  key: string,
): void {
  const map = index.get(group);
  if (!map) return;
  map.delete(key);
  if (map.size === 0) index.delete(group);
}

/**
 * The cluster state as fresh as a store read — at least the store's revision when called
 * — from the leader's cache when it runs (no full read and parse), else from the store
 * (a follower, or a leader between terms).
 */
export async function readFreshClusterState(
  store: Store,
  cache: ClusterCache | undefined,
): Promise<ClusterState> {
  if (cache?.isRunning) {
    const revision = await store.currentRevision();
    if (await cache.waitFor(revision)) return cache.snapshot();
  }
  return readClusterState(store);
}

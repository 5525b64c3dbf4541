import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import { replicaPhaseOr } from "../../lib/replicaPhase.js";
import { type Rng, systemRng } from "../../lib/rng.js";
import {
  CompareAndSwapConflict,
  type ConflictAttempt,
  retryOnConflict,
} from "../store/compareAndSwap.js";
import type { Store } from "../store/store.js";
import { commitPacked, type TxnItem } from "../store/txnBatches.js";
import type { ClusterCache } from "./clusterCache.js";
import { type ReplicaStatusRecord, replicaPrefix, replicaRecordSchema } from "./records.js";

export interface ReportedReplica {
  replicaId: string;
  phase: string;
  ready: boolean;
  restarts: number;
  reason: string;
  message: string;
  exitCode?: number;
  startedAtMs?: number;
  hostPorts: Record<string, number>;
  driver: string;
}

export interface ReplicaStatusWriterOptions {
  /** Reports arriving within this window share one flush (one commit per chunk). */
  windowMs?: number;
  /** Nodes with reports waiting at most; a report for another node waits for room. */
  maxQueuedNodes?: number;
  /** Writes per flush at most (in chunks of maxTxnOps); the rest goes in the next flush. */
  maxWritesPerFlush?: number;
  /** Attempts per report before it is given up (the agent resends a full report). */
  maxAttempts?: number;
  /** Jitters the wait between attempts (the system's by default). */
  rng?: Rng;
}

/** Reports of one node waiting to be written, merged (newest wins per replica). */
interface QueuedReports {
  reports: Map<string, ReportedReplica>;
  full: boolean;
  fingerprint: string;
  attempts: number;
  /** Settles the callers' promises: with an error when the write failed outright. */
  done: ((error?: unknown) => void)[];
}

/**
 * Writes what agents report about their replicas into the replica records (the
 * coordinator is the only writer of the store). A full report also confirms which
 * stopped replicas are gone, so their records can be removed.
 *
 * With the leader's cluster cache (the usual path), a node's replicas come from the
 * cache's per-node index instead of a read of every replica, and reports from many
 * nodes are coalesced for a short window into a few transactions, each write guarded by
 * the mod revision the cache showed: a stale cache costs a retry, never a lost update.
 */
export class ReplicaStatusWriter {
  private readonly windowMs: number;
  private readonly maxQueuedNodes: number;
  private readonly maxWritesPerFlush: number;
  private readonly maxAttempts: number;
  private readonly rng: Rng;
  private queue = new Map<string, QueuedReports>();
  /** Callers waiting for room in the queue. */
  private roomWaiters: (() => void)[] = [];
  private cancelFlush: (() => void) | undefined;
  private flushing = false;
  private cache: ClusterCache | undefined;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    options: ReplicaStatusWriterOptions = {},
  ) {
    this.windowMs = options.windowMs ?? 20;
    this.maxQueuedNodes = options.maxQueuedNodes ?? 20_000;
    this.maxWritesPerFlush = options.maxWritesPerFlush ?? 2_000;
    this.maxAttempts = options.maxAttempts ?? 5;
    this.rng = options.rng ?? systemRng;
  }

  /** The last report applied per node: agents resend unchanged full reports every 10 s. */
  private readonly lastApplied = new Map<string, string>();

  /**
   * Records a node's report; resolves once it is written (or given up). With a running
   * `cache` the write is batched with other nodes' reports.
   */
  async apply(
    nodeName: string,
    reports: ReportedReplica[],
    full: boolean,
    cache?: ClusterCache,
  ): Promise<void> {
    // An identical report changes nothing the previous one did not already write, so
    // it is not worth looking at the replicas again (the dominant cost at scale).
    const fingerprint = JSON.stringify([full, reports]);
    if (this.lastApplied.get(nodeName) === fingerprint) return;
    this.lastApplied.delete(nodeName);
    if (cache?.isRunning) {
      this.cache = cache;
      return this.enqueue(nodeName, reports, full, fingerprint);
    }
    try {
      await retryOnConflict(
        `the replicas of node "${nodeName}"`,
        async (): Promise<ConflictAttempt<undefined>> =>
          (await this.tryApply(nodeName, reports, full))
            ? { committed: true, result: undefined }
            : { committed: false },
        { clock: this.clock, rng: this.rng, maxAttempts: this.maxAttempts },
      );
      this.remember(nodeName, fingerprint);
    } catch (error) {
      // Given up after maxAttempts lost races: the agent's next full report retries it.
      if (!(error instanceof CompareAndSwapConflict)) throw error;
    }
  }

  /** Forget what a node last reported (its stream reconnected, or it was deleted). */
  forget(nodeName: string): void {
    this.lastApplied.delete(nodeName);
  }

  private remember(nodeName: string, fingerprint: string): void {
    if (this.lastApplied.size > 100_000) this.lastApplied.clear();
    this.lastApplied.set(nodeName, fingerprint);
  }

  private async enqueue(
    nodeName: string,
    reports: ReportedReplica[],
    full: boolean,
    fingerprint: string,
  ): Promise<void> {
    while (!this.queue.has(nodeName) && this.queue.size >= this.maxQueuedNodes) {
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
    const done = new Promise<void>((resolve, reject) => {
      const fresh: QueuedReports = {
        reports: new Map(reports.map((r) => [r.replicaId, r])),
        full,
        fingerprint,
        attempts: 0,
        done: [(error) => (error === undefined ? resolve() : reject(error))],
      };
      this.queue.set(nodeName, merge(this.queue.get(nodeName), fresh));
    });
    this.scheduleFlush(this.windowMs);
    return done;
  }

  private scheduleFlush(delayMs: number): void {
    if (this.cancelFlush || this.flushing) return;
    this.cancelFlush = this.clock.setTimeout(() => {
      this.cancelFlush = undefined;
      void this.flush();
    }, delayMs);
  }

  /** Writes queued reports: one group of writes per node, packed into few transactions. */
  private async flush(): Promise<void> {
    this.flushing = true;
    const taken = new Map<string, QueuedReports>();
    try {
      const cache = this.cache;
      if (!cache?.isRunning) {
        // The term ended: drop what waits; agents resend full reports to the next leader.
        for (const entry of this.queue.values()) for (const done of entry.done) done();
        this.queue.clear();
        return;
      }
      const groups: TxnItem<string>[][] = [];
      let writes = 0;
      for (const [node, entry] of this.queue) {
        if (writes >= this.maxWritesPerFlush) break;
        this.queue.delete(node);
        taken.set(node, entry);
        const group = this.writesFor(cache, node, entry);
        writes += group.length;
        if (group.length > 0) groups.push(group);
      }
      this.releaseRoom();
      const failed = new Set<string>();
      let waitFor = 0;
      for (const outcome of await commitPacked(this.store, groups)) {
        waitFor = Math.max(waitFor, outcome.revision);
        if (outcome.succeeded) continue;
        for (const item of outcome.items) failed.add(item.tag);
      }
      for (const [node, entry] of taken) {
        if (!failed.has(node)) {
          this.remember(node, entry.fingerprint);
          for (const done of entry.done) done();
          continue;
        }
        entry.attempts++;
        if (entry.attempts >= this.maxAttempts) {
          for (const done of entry.done) done();
          continue;
        }
        // Newer reports that arrived meanwhile win over the failed ones.
        this.queue.set(node, merge(entry, this.queue.get(node)));
      }
      taken.clear();
      // The next flush must see these writes (or the newer state a failed compare met).
      if (waitFor > 0) await cache.waitFor(waitFor);
    } catch (error) {
      // A store error fails what was taken (its callers log it); the agent's next full
      // report retries it.
      for (const entry of taken.values()) for (const done of entry.done) done(error);
    } finally {
      this.flushing = false;
      if (this.queue.size > 0) this.scheduleFlush(this.windowMs);
    }
  }

  private releaseRoom(): void {
    while (this.roomWaiters.length > 0 && this.queue.size < this.maxQueuedNodes) {
      this.roomWaiters.shift()?.();
    }
  }

  /** The writes that bring a node's replica records in line with its reports. */
  private writesFor(cache: ClusterCache, node: string, entry: QueuedReports): TxnItem<string>[] {
    const items: TxnItem<string>[] = [];
    const now = this.clock.nowMs();
    for (const [key, { value: record, modRevision }] of cache.replicasOnNode(node)) {
      const compare = { key, target: "modRevision" as const, op: "==" as const, modRevision };
      const report = entry.reports.get(record.id);
      if (!report) {
        if (entry.full && record.desired === "Stopped") {
          items.push({ op: { type: "delete", key }, compare, tag: node });
        }
        continue;
      }
      const status = statusOf(report, now);
      if (sameStatus(record.status, status)) continue;
      items.push({
        op: { type: "put", key, value: JSON.stringify({ ...record, status }) },
        compare,
        tag: node,
      });
    }
    return items;
  }

  private async tryApply(
    nodeName: string,
    reports: ReportedReplica[],
    full: boolean,
  ): Promise<boolean> {
    const all = await this.store.range(replicaPrefix);
    const onNode = all.kvs
      .map((kv) => ({ kv, record: decodeRecord(replicaRecordSchema, kv.key, kv.value) }))
      .filter(({ record }) => record.node === nodeName);
    const reported = new Map(reports.map((r) => [r.replicaId, r]));
    const items: TxnItem<string>[] = [];
    const now = this.clock.nowMs();
    for (const { kv, record } of onNode) {
      const compare = {
        key: kv.key,
        target: "modRevision" as const,
        op: "==" as const,
        modRevision: kv.modRevision,
      };
      const report = reported.get(record.id);
      if (!report) {
        if (full && record.desired === "Stopped") {
          items.push({ op: { type: "delete", key: kv.key }, compare, tag: nodeName });
        }
        continue;
      }
      const status = statusOf(report, now);
      if (sameStatus(record.status, status)) continue;
      items.push({
        op: { type: "put", key: kv.key, value: JSON.stringify({ ...record, status }) },
        compare,
        tag: nodeName,
      });
    }
    if (items.length === 0) return true;
    const outcomes = await commitPacked(this.store, [items]);
    return outcomes.every((outcome) => outcome.succeeded);
  }
}

/** Later reports win per replica; a full report replaces everything before it. */
function merge(older: QueuedReports | undefined, newer: QueuedReports | undefined): QueuedReports {
  if (!older) return newer as QueuedReports;
  if (!newer) return older;
  const done = [...older.done, ...newer.done];
  if (newer.full) return { ...newer, attempts: Math.max(older.attempts, newer.attempts), done };
  const reports = new Map(older.reports);
  for (const [id, report] of newer.reports) reports.set(id, report);
  return {
    reports,
    full: older.full,
    // A merged report is not what either message said: nothing to dedupe against.
    fingerprint: "",
    attempts: Math.max(older.attempts, newer.attempts),
    done,
  };
}

function statusOf(report: ReportedReplica, now: number): ReplicaStatusRecord {
  return {
    phase: replicaPhaseOr(report.phase, "Pending"),
    ready: report.ready,
    restarts: report.restarts,
    reason: report.reason,
    message: report.message,
    ...(report.exitCode !== undefined ? { exitCode: report.exitCode } : {}),
    ...(report.startedAtMs ? { startedAtMs: report.startedAtMs } : {}),
    hostPorts: report.hostPorts,
    driver: report.driver,
    reportedAtMs: now,
  };
}

function sameStatus(a: ReplicaStatusRecord | undefined, b: ReplicaStatusRecord): boolean {
  if (!a) return false;
  const { reportedAtMs: _a, ...restA } = a;
  const { reportedAtMs: _b, ...restB } = b;
  return JSON.stringify(restA) === JSON.stringify(restB);
}

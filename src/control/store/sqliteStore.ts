/**
 * The embedded store backend: one SQLite file (better-sqlite3, WAL), owned by one
 * coordinator process at a time (DESIGN.md decision 1, REQ-012).
 *
 * This module is the contract (store.ts) over that file: reads, transactions at one
 * revision each, leases and compaction. The file format — tables, statements, opening
 * and refusing files — is sqliteSchema.ts; watches (replay of the log, then changes from
 * memory as they commit) are sqliteWatch.ts.
 */

import Database from "better-sqlite3";
import { type Clock, systemClock } from "../../lib/clock.js";
import { ensurePrivateFile, type TightenedFile, tightenFileMode } from "../../lib/privateFiles.js";
import { leaseNotFound, requireKey, requirePrefix, validateTxn } from "./requestValidation.js";
import {
  corrupt,
  deletedKv,
  errorMessage,
  eventFromLogRow,
  type KvRow,
  kvFromRow,
  type LeaseRow,
  type LogRow,
  type MetaRow,
  openError,
  prefixEnd,
  prepareDatabase,
  prepareStatements,
  type Statements,
  sqliteCode,
} from "./sqliteSchema.js";
import { type RevisionEvents, SqliteWatchers } from "./sqliteWatch.js";
import {
  type Compare,
  type KeyValue,
  type Lease,
  type Op,
  type OpResult,
  type RangeOptions,
  type RangeResult,
  type Store,
  StoreError,
  type TxnRequest,
  type TxnResult,
  type Watch,
  type WatchEvent,
  type WatchHandlers,
  type WatchOptions,
} from "./store.js";

/** Bounds prefixes in key order; exported here too for the store's own tests. */
export { prefixEnd } from "./sqliteSchema.js";

const DEFAULT_HISTORY_LIMIT = 10_000;
const DEFAULT_LEASE_CHECK_INTERVAL_MS = 250;
const DEFAULT_MAX_PENDING_REVISIONS = 10_000;
/** Leases revoked per expiry check, so one check never stalls the event loop for long. */
const EXPIRY_BATCH = 1_000;
/**
 * A lease check later than its interval by more than this means this process stalled.
 * Every holder of a lease on this store lives in this process and could not renew
 * meanwhile, so the stall is added to every lease's deadline instead of expiring them:
 * a single coordinator that stalled for a few seconds under load had lost its own
 * leadership lease and restarted its controllers (ADR 0024).
 */
const LEASE_STALL_TOLERANCE_MS = 1_000;

export interface SqliteStoreOptions {
  /** The database file; created when absent, never recreated when present. */
  path: string;
  clock?: Clock;
  /** Revisions of history kept for watches (default 10,000); older ones are compacted. */
  historyLimit?: number;
  /**
   * When set, automatic compaction runs on this interval instead of inside writes.
   * Absent: a write compacts (in the same transaction) once history exceeds the limit
   * by a tenth, so the cost is amortised and no extra fsync is paid.
   */
  compactIntervalMs?: number;
  /** How often expired leases are looked for (default 250 ms). */
  leaseCheckIntervalMs?: number;
  /** Revisions a watcher may have pending before it is closed (default 10,000). */
  maxPendingRevisions?: number;
  /** Told of each store file (database, WAL) that was open to other users and is now 0600. */
  onFileTightened?: (tightened: TightenedFile) => void;
}

export interface SqliteStore extends Store {
  readonly backend: "sqlite";
  readonly path: string;
}

/** Opens (or creates) the store at `options.path`, taking an OS-level exclusive lock. */
export async function openSqliteStore(options: SqliteStoreOptions): Promise<SqliteStore> {
  const historyLimit = options.historyLimit ?? DEFAULT_HISTORY_LIMIT;
  const leaseCheckIntervalMs = options.leaseCheckIntervalMs ?? DEFAULT_LEASE_CHECK_INTERVAL_MS;
  const maxPendingRevisions = options.maxPendingRevisions ?? DEFAULT_MAX_PENDING_REVISIONS;
  requirePositiveInteger("historyLimit", historyLimit);
  requirePositiveInteger("leaseCheckIntervalMs", leaseCheckIntervalMs);
  requirePositiveInteger("maxPendingRevisions", maxPendingRevisions);
  if (options.compactIntervalMs !== undefined) {
    requirePositiveInteger("compactIntervalMs", options.compactIntervalMs);
  }
  if (options.path === "" || options.path === ":memory:") {
    throw new StoreError(
      `store path ${JSON.stringify(options.path)} is not a file; give a file path`,
      "invalid",
    );
  }

  const path = options.path;
  let db: Database.Database;
  try {
    // The store holds workload specs (with their env values), nodes and token hashes:
    // 0600 whatever the umask and whoever made the directory. SQLite would create the
    // file 0644; it gives the WAL (and a rollback journal) the database file's mode.
    for (const file of [path, `${path}-wal`, `${path}-shm`, `${path}-journal`]) {
      const tightened = file === path ? await ensurePrivateFile(file) : await tightenFileMode(file);
      if (tightened) options.onFileTightened?.(tightened);
    }
    // timeout 0: a store held by another process must fail now, not after a wait.
    db = new Database(path, { timeout: 0 });
  } catch (err) {
    throw openError(path, err);
  }
  try {
    const meta = prepareDatabase(db, path);
    return new SqliteStoreImpl(db, path, meta, {
      clock: options.clock ?? systemClock,
      historyLimit,
      leaseCheckIntervalMs,
      maxPendingRevisions,
      compactIntervalMs: options.compactIntervalMs,
    });
  } catch (err) {
    try {
      db.close();
    } catch {
      // The open already failed; that error is the one worth reporting.
    }
    throw openError(path, err);
  }
}

interface StoreSettings {
  clock: Clock;
  historyLimit: number;
  leaseCheckIntervalMs: number;
  maxPendingRevisions: number;
  compactIntervalMs: number | undefined;
}

/** The revision being written and the events it produced, in order. */
interface WriteBatch {
  revision: number;
  events: WatchEvent[];
}

class SqliteStoreImpl implements SqliteStore {
  readonly backend = "sqlite" as const;
  private revision: number;
  private compactRevision: number;
  private closed = false;
  private readonly watches: SqliteWatchers;
  private readonly stmts: Statements;
  private readonly inTransaction: (fn: () => unknown) => unknown;
  private readonly compactSlack: number;
  private cancelLeaseTimer: (() => void) | undefined;
  /** When leases were last checked for expiry (or their deadlines caught up with a stall). */
  private lastLeaseCheckMs = 0;
  private cancelCompactTimer: (() => void) | undefined;

  constructor(
    private readonly db: Database.Database,
    readonly path: string,
    meta: MetaRow,
    private readonly settings: StoreSettings,
  ) {
    this.revision = meta.revision;
    this.compactRevision = meta.compact_revision;
    this.stmts = prepareStatements(db, path);
    this.watches = new SqliteWatchers({
      path,
      maxPendingRevisions: settings.maxPendingRevisions,
      compactRevision: () => this.compactRevision,
      isClosed: () => this.closed,
      readLog: (prefix, from, to) => this.readLog(prefix, from, to),
    });
    this.inTransaction = db.transaction((fn: () => unknown) => fn());
    // Compacting in batches of a tenth of the history keeps each write's share small.
    this.compactSlack = Math.max(1, Math.min(1_000, Math.floor(settings.historyLimit / 10)));
    // Nobody could keep a lease alive while the store was down, so every lease gets a
    // full TTL from now (etcd does the same when a leader takes over).
    this.stmts.extendAllLeases.run(settings.clock.nowMs());
    this.lastLeaseCheckMs = settings.clock.nowMs();
    this.scheduleLeaseCheck();
    this.scheduleCompaction();
  }

  async get(key: string): Promise<KeyValue | undefined> {
    this.assertOpen();
    requireKey(key);
    return this.guard(() => this.readKv(key));
  }

  async range(prefix: string, options?: RangeOptions): Promise<RangeResult> {
    this.assertOpen();
    requirePrefix(prefix);
    return this.guard(() => ({ ...this.readRange(prefix, options), revision: this.revision }));
  }

  async put(key: string, value: string, options?: { lease?: number }): Promise<number> {
    const result = await this.txn({
      compare: [],
      success: [{ type: "put", key, value, lease: options?.lease }],
    });
    return result.revision;
  }

  async delete(key: string): Promise<number> {
    const result = await this.txn({ compare: [], success: [{ type: "delete", key }] });
    const first = result.results[0];
    return first?.type === "delete" ? first.deleted : 0;
  }

  async txn(request: TxnRequest): Promise<TxnResult> {
    this.assertOpen();
    validateTxn(request);
    return this.guard(() => {
      let succeeded = false;
      let results: OpResult[] = [];
      const revision = this.write((batch) => {
        succeeded = request.compare.every((c) => this.evaluate(c));
        const ops = succeeded ? request.success : (request.failure ?? []);
        results = ops.map((op) => this.apply(op, batch));
      });
      return { succeeded, revision, results };
    });
  }

  watch(prefix: string, options: WatchOptions, handlers: WatchHandlers): Watch {
    this.assertOpen();
    requirePrefix(prefix);
    const requested = options.fromRevision;
    if (requested !== undefined && !Number.isSafeInteger(requested)) {
      throw new StoreError(`watch fromRevision must be an integer, got ${requested}`, "invalid");
    }
    // Opened synchronously with the revision read here: writes after it arrive through
    // notify(), everything up to it through the replay, so the switch from replay to
    // live has neither a gap nor an overlap.
    return this.watches.open(prefix, requested, this.revision, handlers);
  }

  async currentRevision(): Promise<number> {
    this.assertOpen();
    return this.revision;
  }

  async compactedRevision(): Promise<number> {
    this.assertOpen();
    return this.compactRevision;
  }

  async compact(revision: number): Promise<void> {
    this.assertOpen();
    if (!Number.isSafeInteger(revision) || revision < 0) {
      throw new StoreError(`compact revision must be a non-negative integer`, "invalid");
    }
    if (revision > this.revision) {
      throw new StoreError(
        `cannot compact to revision ${revision}: the current revision is ${this.revision}`,
        "invalid",
      );
    }
    if (revision <= this.compactRevision) return;
    this.guard(() => {
      this.inTransaction(() => this.compactLog(revision));
      this.compactRevision = revision;
    });
  }

  async grantLease(ttlMs: number): Promise<Lease> {
    this.assertOpen();
    if (!Number.isFinite(ttlMs) || ttlMs <= 0) {
      throw new StoreError(`lease ttlMs must be a positive number, got ${ttlMs}`, "invalid");
    }
    const ttl = Math.ceil(ttlMs);
    return this.guard(() => {
      const id = this.inTransaction(() => {
        const next = this.stmts.nextLeaseId.get() as number;
        this.stmts.setNextLeaseId.run(next + 1);
        this.stmts.insertLease.run(next, ttl, this.settings.clock.nowMs() + ttl);
        return next;
      }) as number;
      return { id, ttlMs: ttl };
    });
  }

  async keepAlive(leaseId: number): Promise<void> {
    this.assertOpen();
    this.guard(() => {
      const now = this.settings.clock.nowMs();
      // A renewal that runs before the late check after a stall must not find its lease
      // expired by the stall.
      this.absorbOwnStall(now);
      const renewed = this.stmts.renewLease.run(now, leaseId, now).changes > 0;
      if (renewed) return;
      // Expired but not yet collected: revoke now, so its keys go as promised.
      if (this.stmts.getLease.get(leaseId) !== undefined) this.revoke(leaseId);
      throw leaseNotFound(leaseId);
    });
  }

  async revokeLease(leaseId: number): Promise<void> {
    this.assertOpen();
    this.guard(() => {
      if (this.stmts.getLease.get(leaseId) === undefined) throw leaseNotFound(leaseId);
      this.revoke(leaseId);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cancelLeaseTimer?.();
    this.cancelCompactTimer?.();
    this.watches.closeAll();
    this.db.close();
  }

  // --- writes -------------------------------------------------------------------

  /**
   * Runs `body` in one SQLite transaction at revision current + 1. The revision only
   * advances (and watchers only hear of it) if the body changed something and the
   * transaction committed.
   */
  private write(body: (batch: WriteBatch) => void): number {
    const batch: WriteBatch = { revision: this.revision + 1, events: [] };
    let compactTo = 0;
    this.inTransaction(() => {
      body(batch);
      if (batch.events.length === 0) return;
      this.stmts.setRevision.run(batch.revision);
      if (
        this.settings.compactIntervalMs === undefined &&
        batch.revision - this.compactRevision > this.settings.historyLimit + this.compactSlack
      ) {
        compactTo = batch.revision - this.settings.historyLimit;
        this.compactLog(compactTo);
      }
    });
    if (batch.events.length === 0) return this.revision;
    this.revision = batch.revision;
    if (compactTo > 0) this.compactRevision = compactTo;
    this.watches.notify(batch.revision, batch.events);
    return this.revision;
  }

  private apply(op: Op, batch: WriteBatch): OpResult {
    switch (op.type) {
      case "put": {
        const prev = this.putKey(op.key, op.value, op.lease ?? 0, batch);
        return prev ? { type: "put", prev } : { type: "put" };
      }
      case "delete":
        return { type: "delete", deleted: this.deleteKey(op.key, batch) ? 1 : 0 };
      case "deletePrefix": {
        const { kvs } = this.readRange(op.prefix, undefined);
        for (const kv of kvs) this.deleteKey(kv.key, batch);
        return { type: "delete", deleted: kvs.length };
      }
      case "get": {
        const kv = this.readKv(op.key);
        return kv ? { type: "get", kv } : { type: "get" };
      }
      case "range":
        return { type: "range", ...this.readRange(op.prefix, op.options) };
    }
  }

  private putKey(key: string, value: string, lease: number, batch: WriteBatch) {
    if (lease !== 0) {
      const row = this.stmts.getLease.get(lease) as LeaseRow | undefined;
      if (!row || row.expires_at_ms <= this.settings.clock.nowMs()) throw leaseNotFound(lease);
    }
    const prev = this.readKv(key);
    const kv: KeyValue = {
      key,
      value,
      createRevision: prev ? prev.createRevision : batch.revision,
      modRevision: batch.revision,
      version: (prev?.version ?? 0) + 1,
      lease,
    };
    this.stmts.upsertKv.run(key, value, kv.createRevision, kv.modRevision, kv.version, lease);
    this.stmts.insertLog.run(
      batch.revision,
      batch.events.length,
      key,
      value,
      kv.createRevision,
      kv.version,
      lease,
      prev?.value ?? null,
      prev?.createRevision ?? null,
      prev?.modRevision ?? null,
      prev?.version ?? null,
      prev?.lease ?? null,
    );
    batch.events.push(prev ? { type: "put", kv, prevKv: prev } : { type: "put", kv });
    return prev;
  }

  private deleteKey(key: string, batch: WriteBatch): boolean {
    const prev = this.readKv(key);
    if (!prev) return false;
    this.stmts.deleteKv.run(key);
    this.stmts.insertLog.run(
      batch.revision,
      batch.events.length,
      key,
      null,
      0,
      0,
      0,
      prev.value,
      prev.createRevision,
      prev.modRevision,
      prev.version,
      prev.lease,
    );
    batch.events.push({ type: "delete", kv: deletedKv(key, batch.revision), prevKv: prev });
    return true;
  }

  /** Deletes the lease and its keys; the deletes share one revision. */
  private revoke(leaseId: number): void {
    this.write((batch) => {
      const keys = this.stmts.keysByLease.all(leaseId) as string[];
      for (const key of keys) this.deleteKey(key, batch);
      this.stmts.deleteLease.run(leaseId);
    });
  }

  private compactLog(revision: number): void {
    this.stmts.deleteLogUpTo.run(revision);
    this.stmts.setCompactRevision.run(revision);
  }

  // --- reads --------------------------------------------------------------------

  private readKv(key: string): KeyValue | undefined {
    const row = this.stmts.getKv.get(key) as KvRow | undefined;
    return row ? kvFromRow(row) : undefined;
  }

  private readRange(
    prefix: string,
    options: RangeOptions | undefined,
  ): { kvs: KeyValue[]; more: boolean } {
    const limit = options?.limit ?? 0;
    const from = options?.fromKey ?? prefix;
    const end = prefixEnd(prefix);
    // One row past the limit tells whether more exist; -1 is SQLite's "no limit".
    const sqlLimit = limit > 0 ? limit + 1 : -1;
    const keysOnly = options?.keysOnly === true;
    const rows = (
      end === undefined
        ? (keysOnly ? this.stmts.rangeFromKeysOnly : this.stmts.rangeFrom).all(
            prefix,
            from,
            sqlLimit,
          )
        : (keysOnly ? this.stmts.rangeKeysOnly : this.stmts.range).all(prefix, from, end, sqlLimit)
    ) as KvRow[];
    const more = limit > 0 && rows.length > limit;
    if (more) rows.length = limit;
    return { kvs: rows.map(kvFromRow), more };
  }

  private evaluate(compare: Compare): boolean {
    const kv = this.readKv(compare.key);
    if (compare.target === "value") {
      // As in etcd: a value comparison against a missing key is false, whatever the op.
      if (!kv) return false;
      return compare.op === "==" ? kv.value === compare.value : kv.value !== compare.value;
    }
    let actual: number;
    let expected: number;
    switch (compare.target) {
      case "modRevision":
        actual = kv?.modRevision ?? 0;
        expected = compare.modRevision;
        break;
      case "createRevision":
        actual = kv?.createRevision ?? 0;
        expected = compare.createRevision;
        break;
      case "version":
        actual = kv?.version ?? 0;
        expected = compare.version;
        break;
    }
    switch (compare.op) {
      case "==":
        return actual === expected;
      case "!=":
        return actual !== expected;
      case "<":
        return actual < expected;
      case ">":
        return actual > expected;
    }
  }

  // --- the log, for watches ----------------------------------------------------

  /** The log between two revisions (inclusive), filtered by prefix, grouped by revision. */
  private readLog(prefix: string, fromRevision: number, toRevision: number): RevisionEvents[] {
    const end = prefixEnd(prefix);
    const rows = (
      end === undefined
        ? this.stmts.logFrom.all(fromRevision, toRevision, prefix)
        : this.stmts.logRange.all(fromRevision, toRevision, prefix, end)
    ) as LogRow[];
    const groups: RevisionEvents[] = [];
    let current: RevisionEvents | undefined;
    for (const row of rows) {
      if (!current || current.revision !== row.revision) {
        current = { revision: row.revision, events: [] };
        groups.push(current);
      }
      current.events.push(eventFromLogRow(row));
    }
    return groups;
  }

  // --- timers -------------------------------------------------------------------

  private scheduleLeaseCheck(): void {
    this.cancelLeaseTimer = this.settings.clock.setTimeout(() => {
      if (this.closed) return;
      this.expireLeases();
      if (!this.closed) this.scheduleLeaseCheck();
    }, this.settings.leaseCheckIntervalMs);
  }

  /** Adds a stall of this process since the last lease check to every lease's deadline. */
  private absorbOwnStall(nowMs: number): void {
    const lateMs = nowMs - this.lastLeaseCheckMs - this.settings.leaseCheckIntervalMs;
    if (lateMs > LEASE_STALL_TOLERANCE_MS) this.stmts.delayLeases.run(lateMs);
    this.lastLeaseCheckMs = Math.max(this.lastLeaseCheckMs, nowMs);
  }

  private expireLeases(): void {
    try {
      const now = this.settings.clock.nowMs();
      this.absorbOwnStall(now);
      const expired = this.stmts.expiredLeases.all(now, EXPIRY_BATCH) as number[];
      for (const id of expired) this.revoke(id);
    } catch {
      // Nobody to report to from a timer; a failing database also fails the next call
      // made through the API, which does report. The next check retries.
    }
  }

  private scheduleCompaction(): void {
    const intervalMs = this.settings.compactIntervalMs;
    if (intervalMs === undefined) return;
    this.cancelCompactTimer = this.settings.clock.setTimeout(() => {
      if (this.closed) return;
      const target = this.revision - this.settings.historyLimit;
      if (target > this.compactRevision) {
        try {
          this.inTransaction(() => this.compactLog(target));
          this.compactRevision = target;
        } catch {
          // As for lease expiry: retried on the next tick, reported by the next API call.
        }
      }
      this.scheduleCompaction();
    }, intervalMs);
  }

  // --- helpers ------------------------------------------------------------------

  private assertOpen(): void {
    if (this.closed) {
      throw new StoreError(`store ${this.path} is closed; open it again to use it`, "closed");
    }
  }

  /** Maps SQLite failures to StoreError; lets StoreError and programming errors through. */
  private guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof StoreError) throw err;
      const code = sqliteCode(err);
      if (code === undefined) throw err;
      if (code.startsWith("SQLITE_CORRUPT") || code.startsWith("SQLITE_NOTADB")) {
        throw corrupt(this.path, errorMessage(err), err);
      }
      if (code.startsWith("SQLITE_FULL")) {
        throw new StoreError(
          `store ${this.path} cannot write: the disk is full; free space and retry`,
          "unavailable",
          { cause: err, brief: "sqlite: the disk is full" },
        );
      }
      throw new StoreError(
        `store ${this.path} failed (${code}: ${errorMessage(err)}); check the disk and retry`,
        "unavailable",
        { cause: err, brief: `sqlite: ${code}` },
      );
    }
  }
}

function requirePositiveInteger(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new StoreError(`${name} must be a positive integer, got ${value}`, "invalid");
  }
}

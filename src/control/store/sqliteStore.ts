/**
 * The embedded store backend: one SQLite file (better-sqlite3, WAL), owned by one
 * coordinator process at a time (DESIGN.md decision 1, REQ-012).
 *
 * Layout, after kine: `kv` holds current values, `log` holds every change (one row per
 * key changed, all rows of a transaction sharing its revision), `meta` holds the
 * revision counters and the schema version, `leases` holds lease deadlines. Watches
 * replay `log` and then switch to changes delivered from memory as they commit.
 */

import Database from "better-sqlite3";
import { type Clock, systemClock } from "../../lib/clock.js";
import { ensurePrivateFile, type TightenedFile, tightenFileMode } from "../../lib/privateFiles.js";
import { leaseNotFound, requireKey, requirePrefix, validateTxn } from "./requestValidation.js";
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
  type WatchEnd,
  type WatchEvent,
  type WatchHandlers,
  type WatchOptions,
} from "./store.js";

const SCHEMA_VERSION = 1;
const DEFAULT_HISTORY_LIMIT = 10_000;
const DEFAULT_LEASE_CHECK_INTERVAL_MS = 250;
const DEFAULT_MAX_PENDING_REVISIONS = 10_000;
/** Revisions read from the log per replay step; bounds memory and event-loop stalls. */
const REPLAY_CHUNK_REVISIONS = 512;
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

interface KvRow {
  key: string;
  value: string;
  create_revision: number;
  mod_revision: number;
  version: number;
  lease: number;
}

interface LogRow {
  revision: number;
  key: string;
  /** NULL: the key was deleted at this revision. */
  value: string | null;
  create_revision: number;
  version: number;
  lease: number;
  prev_value: string | null;
  prev_create_revision: number | null;
  prev_mod_revision: number | null;
  prev_version: number | null;
  prev_lease: number | null;
}

interface MetaRow {
  schema_version: number;
  revision: number;
  compact_revision: number;
  next_lease_id: number;
}

interface LeaseRow {
  id: number;
  ttl_ms: number;
  expires_at_ms: number;
}

const SCHEMA_SQL = `
CREATE TABLE meta (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  schema_version INTEGER NOT NULL,
  revision INTEGER NOT NULL,
  compact_revision INTEGER NOT NULL,
  next_lease_id INTEGER NOT NULL
);
CREATE TABLE kv (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  create_revision INTEGER NOT NULL,
  mod_revision INTEGER NOT NULL,
  version INTEGER NOT NULL,
  lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX kv_lease ON kv (lease);
CREATE TABLE log (
  revision INTEGER NOT NULL,
  sub INTEGER NOT NULL,
  key TEXT NOT NULL,
  value TEXT,
  create_revision INTEGER NOT NULL,
  version INTEGER NOT NULL,
  lease INTEGER NOT NULL,
  prev_value TEXT,
  prev_create_revision INTEGER,
  prev_mod_revision INTEGER,
  prev_version INTEGER,
  prev_lease INTEGER,
  PRIMARY KEY (revision, sub)
) WITHOUT ROWID;
CREATE TABLE leases (
  id INTEGER PRIMARY KEY,
  ttl_ms INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL
);
CREATE INDEX leases_expiry ON leases (expires_at_ms);
`;

const REQUIRED_TABLES = ["meta", "kv", "log", "leases"];

const KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease";
const KV_KEYS_ONLY_COLUMNS = "key, '' AS value, create_revision, mod_revision, version, lease";
const LOG_COLUMNS =
  "revision, key, value, create_revision, version, lease, prev_value, prev_create_revision, " +
  "prev_mod_revision, prev_version, prev_lease";

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

/** Checks the file, takes the lock, creates the schema when the file is new. */
function prepareDatabase(db: Database.Database, path: string): MetaRow {
  // Set before the first access: in WAL mode this keeps the wal-index in heap memory
  // (no -shm file) and holds the file lock until close, so a second process fails.
  db.pragma("locking_mode = EXCLUSIVE");
  // Only read until the file is known to be ours, so a foreign or damaged file is
  // left exactly as it was.
  const objects = db.prepare("SELECT type, name FROM sqlite_master").all() as {
    type: string;
    name: string;
  }[];
  const fresh = objects.length === 0;
  if (!fresh) {
    const tables = new Set(objects.filter((o) => o.type === "table").map((o) => o.name));
    const missing = REQUIRED_TABLES.filter((t) => !tables.has(t));
    if (missing.length > 0) {
      throw corrupt(path, `not a Cloudless store: missing table(s) ${missing.join(", ")}`);
    }
    readMeta(db, path);
  }
  const mode = db.pragma("journal_mode = WAL", { simple: true });
  if (mode !== "wal") {
    throw new StoreError(
      `store ${path} could not switch to WAL mode (got ${String(mode)}); ` +
        "put the data directory on a local filesystem",
      "unavailable",
    );
  }
  db.pragma("synchronous = FULL");
  // Take the exclusive lock now rather than at the first write.
  db.exec("BEGIN EXCLUSIVE; COMMIT");
  if (fresh) {
    db.transaction(() => {
      db.exec(SCHEMA_SQL);
      db.prepare(
        "INSERT INTO meta (id, schema_version, revision, compact_revision, next_lease_id) " +
          "VALUES (1, ?, 0, 0, 1)",
      ).run(SCHEMA_VERSION);
    })();
  }
  return readMeta(db, path);
}

function readMeta(db: Database.Database, path: string): MetaRow {
  let meta: MetaRow | undefined;
  try {
    meta = db
      .prepare(
        "SELECT schema_version, revision, compact_revision, next_lease_id FROM meta WHERE id = 1",
      )
      .get() as MetaRow | undefined;
  } catch (err) {
    if (sqliteCode(err)?.startsWith("SQLITE_ERROR")) {
      throw corrupt(path, `meta table unreadable: ${errorMessage(err)}`, err);
    }
    throw err;
  }
  if (!meta) throw corrupt(path, "meta row missing");
  if (meta.schema_version !== SCHEMA_VERSION) {
    throw new StoreError(
      `store ${path} has schema version ${String(meta.schema_version)}, but this Cloudless ` +
        `only reads version ${SCHEMA_VERSION}; run the Cloudless release that wrote it, or ` +
        "restore a backup — Cloudless will not reinitialise it",
      "corrupt",
    );
  }
  for (const field of ["revision", "compact_revision", "next_lease_id"] as const) {
    if (!Number.isSafeInteger(meta[field]) || meta[field] < 0) {
      throw corrupt(path, `meta.${field} is ${String(meta[field])}`);
    }
  }
  if (meta.compact_revision > meta.revision) {
    throw corrupt(path, "compact revision is ahead of the revision");
  }
  return meta;
}

interface StoreSettings {
  clock: Clock;
  historyLimit: number;
  leaseCheckIntervalMs: number;
  maxPendingRevisions: number;
  compactIntervalMs: number | undefined;
}

/** The changes of one revision, as delivered to one watcher. */
interface RevisionEvents {
  revision: number;
  events: WatchEvent[];
}

interface Watcher {
  prefix: string;
  handlers: WatchHandlers;
  /** Next revision to read from the log; replay is done once it passes replayEnd. */
  replayNext: number;
  replayEnd: number;
  /** Live changes below this revision are covered by the replay (or were asked to skip). */
  liveFrom: number;
  /** The revision a consumer should resume from if this watch ends now. */
  resumeFrom: number;
  pending: RevisionEvents[];
  scheduled: boolean;
  /** The store is closing: deliver what is in memory, then end. */
  closing: boolean;
  done: boolean;
  cancelled: boolean;
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
  private readonly watchers = new Set<Watcher>();
  private readonly stmts: ReturnType<typeof prepareStatements>;
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
    try {
      this.stmts = prepareStatements(db);
    } catch (err) {
      throw corrupt(path, `schema check failed: ${errorMessage(err)}`, err);
    }
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
    const current = this.revision;
    // Revision 0 never holds a change, so "from 0" and "from 1" ask for the same thing.
    const from = requested === undefined ? current + 1 : Math.max(1, requested);
    const watcher: Watcher = {
      prefix,
      handlers,
      replayNext: from,
      replayEnd: current,
      liveFrom: Math.max(from, current + 1),
      resumeFrom: from,
      pending: [],
      scheduled: false,
      closing: false,
      done: false,
      cancelled: false,
    };
    const cancel = () => {
      watcher.cancelled = true;
      watcher.done = true;
      watcher.pending = [];
      this.watchers.delete(watcher);
    };
    if (from <= this.compactRevision) {
      this.endWatch(watcher, this.compactedEnd(watcher, from));
      return { cancel };
    }
    // Registered synchronously with the revision read above: writes after `current`
    // arrive through notify(), everything up to it through the replay, so the switch
    // from replay to live has neither a gap nor an overlap.
    this.watchers.add(watcher);
    if (watcher.replayNext <= watcher.replayEnd) this.schedule(watcher, false);
    return { cancel };
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
    for (const watcher of this.watchers) {
      if (watcher.replayNext > watcher.replayEnd) {
        // Changes already in memory were committed; hand them over before ending.
        watcher.closing = true;
        this.schedule(watcher, false);
      } else {
        this.endWatch(watcher, this.closedEnd(watcher));
      }
    }
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
    this.notify(batch.revision, batch.events);
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

  // --- watches ------------------------------------------------------------------

  /** Hands the changes of a committed revision to every watcher that wants them. */
  private notify(revision: number, events: WatchEvent[]): void {
    for (const watcher of this.watchers) {
      if (revision < watcher.liveFrom) continue;
      const matched =
        watcher.prefix === "" ? events : events.filter((e) => e.kv.key.startsWith(watcher.prefix));
      if (matched.length === 0) continue;
      if (watcher.pending.length >= this.settings.maxPendingRevisions) {
        this.endWatch(watcher, {
          reason: "closed",
          message:
            `watch on prefix ${JSON.stringify(watcher.prefix)} fell more than ` +
            `${this.settings.maxPendingRevisions} revisions behind and was closed; ` +
            `watch again with fromRevision ${watcher.resumeFrom}`,
        });
        continue;
      }
      watcher.pending.push({ revision, events: matched });
      this.schedule(watcher, false);
    }
  }

  /**
   * Delivery always runs later, never inside the writer's call stack. A microtask keeps
   * live latency low; replay steps use setImmediate so a long replay lets I/O through.
   */
  private schedule(watcher: Watcher, yieldToIo: boolean): void {
    if (watcher.scheduled || watcher.done) return;
    watcher.scheduled = true;
    const run = () => {
      watcher.scheduled = false;
      this.pump(watcher);
    };
    if (yieldToIo) setImmediate(run);
    else queueMicrotask(run);
  }

  private pump(watcher: Watcher): void {
    if (watcher.done) return;
    if (watcher.replayNext <= watcher.replayEnd) {
      if (this.closed) {
        this.endWatch(watcher, this.closedEnd(watcher));
        return;
      }
      if (watcher.replayNext <= this.compactRevision) {
        this.endWatch(watcher, this.compactedEnd(watcher, watcher.replayNext));
        return;
      }
      const to = Math.min(watcher.replayEnd, watcher.replayNext + REPLAY_CHUNK_REVISIONS - 1);
      let groups: RevisionEvents[];
      try {
        groups = this.readLog(watcher.prefix, watcher.replayNext, to);
      } catch (err) {
        this.endWatch(watcher, {
          reason: "closed",
          message:
            `watch replay failed (${errorMessage(err)}); ` +
            `watch again with fromRevision ${watcher.resumeFrom}`,
        });
        return;
      }
      watcher.replayNext = to + 1;
      for (const group of groups) {
        if (!this.deliver(watcher, group)) return;
      }
      watcher.resumeFrom = Math.max(watcher.resumeFrom, to + 1);
      if (watcher.replayNext <= watcher.replayEnd) {
        this.schedule(watcher, true);
        return;
      }
    }
    while (watcher.pending.length > 0 && !watcher.done) {
      const batch = watcher.pending;
      watcher.pending = [];
      for (const group of batch) {
        if (!this.deliver(watcher, group)) return;
      }
    }
    if (watcher.closing && !watcher.done) this.endWatch(watcher, this.closedEnd(watcher));
  }

  private deliver(watcher: Watcher, group: RevisionEvents): boolean {
    try {
      watcher.handlers.onEvents(group.events, group.revision);
    } catch (err) {
      // A throwing handler must not take the store down; end its watch instead and say
      // where to pick up (this revision again, since its handling failed).
      this.endWatch(watcher, {
        reason: "closed",
        message:
          `watch handler failed at revision ${group.revision} (${errorMessage(err)}); ` +
          `watch again with fromRevision ${group.revision}`,
      });
      return false;
    }
    watcher.resumeFrom = group.revision + 1;
    return !watcher.done;
  }

  private endWatch(watcher: Watcher, end: WatchEnd): void {
    watcher.done = true;
    watcher.pending = [];
    this.watchers.delete(watcher);
    queueMicrotask(() => {
      if (!watcher.cancelled) watcher.handlers.onEnd?.(end);
    });
  }

  private compactedEnd(watcher: Watcher, from: number): WatchEnd {
    return {
      reason: "compacted",
      compactRevision: this.compactRevision,
      message:
        `cannot watch ${JSON.stringify(watcher.prefix)} from revision ${from}: history up to ` +
        `revision ${this.compactRevision} was compacted; read the current state with range() ` +
        "and watch from its revision + 1",
    };
  }

  private closedEnd(watcher: Watcher): WatchEnd {
    return {
      reason: "closed",
      message:
        `store ${this.path} closed; watch again with fromRevision ${watcher.resumeFrom} ` +
        "once a store is open",
    };
  }

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
          { cause: err },
        );
      }
      throw new StoreError(
        `store ${this.path} failed (${code}: ${errorMessage(err)}); check the disk and retry`,
        "unavailable",
        { cause: err },
      );
    }
  }
}

function prepareStatements(db: Database.Database) {
  return {
    getKv: db.prepare(`SELECT ${KV_COLUMNS} FROM kv WHERE key = ?`),
    upsertKv: db.prepare(`INSERT OR REPLACE INTO kv (${KV_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)`),
    deleteKv: db.prepare("DELETE FROM kv WHERE key = ?"),
    // max() of two texts compares them with BINARY collation, i.e. in byte order, and
    // keeps the lower bound a constant so the primary key index is used.
    range: db.prepare(
      `SELECT ${KV_COLUMNS} FROM kv WHERE key >= max(?, ?) AND key < ? ORDER BY key LIMIT ?`,
    ),
    rangeKeysOnly: db.prepare(
      `SELECT ${KV_KEYS_ONLY_COLUMNS} FROM kv WHERE key >= max(?, ?) AND key < ? ` +
        "ORDER BY key LIMIT ?",
    ),
    rangeFrom: db.prepare(
      `SELECT ${KV_COLUMNS} FROM kv WHERE key >= max(?, ?) ORDER BY key LIMIT ?`,
    ),
    rangeFromKeysOnly: db.prepare(
      `SELECT ${KV_KEYS_ONLY_COLUMNS} FROM kv WHERE key >= max(?, ?) ORDER BY key LIMIT ?`,
    ),
    insertLog: db.prepare(
      "INSERT INTO log (revision, sub, key, value, create_revision, version, lease, " +
        "prev_value, prev_create_revision, prev_mod_revision, prev_version, prev_lease) " +
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    logRange: db.prepare(
      `SELECT ${LOG_COLUMNS} FROM log WHERE revision >= ? AND revision <= ? ` +
        "AND key >= ? AND key < ? ORDER BY revision, sub",
    ),
    logFrom: db.prepare(
      `SELECT ${LOG_COLUMNS} FROM log WHERE revision >= ? AND revision <= ? ` +
        "AND key >= ? ORDER BY revision, sub",
    ),
    deleteLogUpTo: db.prepare("DELETE FROM log WHERE revision <= ?"),
    setRevision: db.prepare("UPDATE meta SET revision = ? WHERE id = 1"),
    setCompactRevision: db.prepare("UPDATE meta SET compact_revision = ? WHERE id = 1"),
    nextLeaseId: db.prepare("SELECT next_lease_id FROM meta WHERE id = 1").pluck(),
    setNextLeaseId: db.prepare("UPDATE meta SET next_lease_id = ? WHERE id = 1"),
    insertLease: db.prepare("INSERT INTO leases (id, ttl_ms, expires_at_ms) VALUES (?, ?, ?)"),
    getLease: db.prepare("SELECT id, ttl_ms, expires_at_ms FROM leases WHERE id = ?"),
    renewLease: db.prepare(
      "UPDATE leases SET expires_at_ms = ? + ttl_ms WHERE id = ? AND expires_at_ms > ?",
    ),
    deleteLease: db.prepare("DELETE FROM leases WHERE id = ?"),
    keysByLease: db.prepare("SELECT key FROM kv WHERE lease = ? ORDER BY key").pluck(),
    expiredLeases: db
      .prepare("SELECT id FROM leases WHERE expires_at_ms <= ? ORDER BY expires_at_ms, id LIMIT ?")
      .pluck(),
    extendAllLeases: db.prepare("UPDATE leases SET expires_at_ms = max(expires_at_ms, ? + ttl_ms)"),
    delayLeases: db.prepare("UPDATE leases SET expires_at_ms = expires_at_ms + ?"),
  };
}

function kvFromRow(row: KvRow): KeyValue {
  return {
    key: row.key,
    value: row.value,
    createRevision: row.create_revision,
    modRevision: row.mod_revision,
    version: row.version,
    lease: row.lease,
  };
}

function deletedKv(key: string, revision: number): KeyValue {
  return { key, value: "", createRevision: 0, modRevision: revision, version: 0, lease: 0 };
}

function eventFromLogRow(row: LogRow): WatchEvent {
  const prevKv: KeyValue | undefined =
    row.prev_mod_revision === null
      ? undefined
      : {
          key: row.key,
          value: row.prev_value ?? "",
          createRevision: row.prev_create_revision ?? 0,
          modRevision: row.prev_mod_revision,
          version: row.prev_version ?? 0,
          lease: row.prev_lease ?? 0,
        };
  const kv: KeyValue =
    row.value === null
      ? deletedKv(row.key, row.revision)
      : {
          key: row.key,
          value: row.value,
          createRevision: row.create_revision,
          modRevision: row.revision,
          version: row.version,
          lease: row.lease,
        };
  const type = row.value === null ? "delete" : "put";
  return prevKv ? { type, kv, prevKv } : { type, kv };
}

/**
 * The smallest string greater than every string that starts with `prefix`, in code
 * point order (which is UTF-8 byte order, SQLite's BINARY collation); undefined when
 * there is none ("" or all U+10FFFF). Avoids LIKE, whose `%` and `_` are wildcards.
 */
export function prefixEnd(prefix: string): string | undefined {
  const codePoints = Array.from(prefix, (c) => c.codePointAt(0) ?? 0);
  while (codePoints.length > 0) {
    const last = codePoints.pop() ?? 0;
    if (last < 0x10ffff) {
      // Skip the surrogate block: those code points cannot appear in a valid key.
      codePoints.push(last + 1 === 0xd800 ? 0xe000 : last + 1);
      return String.fromCodePoint(...codePoints);
    }
  }
  return undefined;
}

function corrupt(path: string, detail: string, cause?: unknown): StoreError {
  return new StoreError(
    `store ${path} is corrupt (${detail}); restore it from a backup or move it aside — ` +
      "Cloudless will not reinitialise it",
    "corrupt",
    { cause },
  );
}

function openError(path: string, err: unknown): StoreError {
  if (err instanceof StoreError) return err;
  const code = sqliteCode(err) ?? "";
  if (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED")) {
    return new StoreError(
      `store ${path} is locked by another process; stop the other coordinator or use a ` +
        "different --data-dir",
      "locked",
      { cause: err },
    );
  }
  if (code.startsWith("SQLITE_NOTADB") || code.startsWith("SQLITE_CORRUPT")) {
    return corrupt(path, errorMessage(err), err);
  }
  return new StoreError(
    `cannot open store ${path} (${errorMessage(err)}); check that its directory exists and ` +
      "is writable, or use a different --data-dir",
    "unavailable",
    { cause: err },
  );
}

function sqliteCode(err: unknown): string | undefined {
  if (err instanceof Database.SqliteError) return err.code;
  return undefined;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function requirePositiveInteger(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new StoreError(`${name} must be a positive integer, got ${value}`, "invalid");
  }
}

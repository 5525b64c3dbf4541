/**
 * How the embedded store lives in its SQLite file (DESIGN.md decision 1, REQ-012): the
 * tables, the statements that read and write them, how rows map to the contract's
 * shapes, and opening a file — take the lock, switch to WAL, create the schema when the
 * file is new, and refuse a file that is not a Cloudless store (or of another schema
 * version) without writing to it.
 *
 * Layout, after kine: `kv` holds current values, `log` holds every change (one row per
 * key changed, all rows of a transaction sharing its revision), `meta` holds the
 * revision counters and the schema version, `leases` holds lease deadlines. There are
 * no migrations yet: version 1 is the only one, and any other is refused.
 */

import Database from "better-sqlite3";
import { type KeyValue, StoreError, type WatchEvent } from "./store.js";

export const SCHEMA_VERSION = 1;

export interface KvRow {
  key: string;
  value: string;
  create_revision: number;
  mod_revision: number;
  version: number;
  lease: number;
}

export interface LogRow {
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

export interface MetaRow {
  schema_version: number;
  revision: number;
  compact_revision: number;
  next_lease_id: number;
}

export interface LeaseRow {
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

/** Checks the file, takes the lock, creates the schema when the file is new. */
export function prepareDatabase(db: Database.Database, path: string): MetaRow {
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
export type Statements = ReturnType<typeof buildStatements>;

/**
 * Prepares every statement the store runs. A table without the expected columns fails
 * here, so the file is refused as corrupt before anything is written to it.
 */
export function prepareStatements(db: Database.Database, path: string): Statements {
  try {
    return buildStatements(db);
  } catch (err) {
    throw corrupt(path, `schema check failed: ${errorMessage(err)}`, err);
  }
}

function buildStatements(db: Database.Database) {
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

export function kvFromRow(row: KvRow): KeyValue {
  return {
    key: row.key,
    value: row.value,
    createRevision: row.create_revision,
    modRevision: row.mod_revision,
    version: row.version,
    lease: row.lease,
  };
}

export function deletedKv(key: string, revision: number): KeyValue {
  return { key, value: "", createRevision: 0, modRevision: revision, version: 0, lease: 0 };
}

export function eventFromLogRow(row: LogRow): WatchEvent {
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

/** The error for a file that cannot be (or is not) a readable Cloudless store. */
export function corrupt(path: string, detail: string, cause?: unknown): StoreError {
  return new StoreError(
    `store ${path} is corrupt (${detail}); restore it from a backup or move it aside — ` +
      "Cloudless will not reinitialise it",
    "corrupt",
    { cause },
  );
}

/** What went wrong opening the file, in terms of what the operator can do about it. */
export function openError(path: string, err: unknown): StoreError {
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

/** SQLite's error code (e.g. "SQLITE_BUSY"), or undefined for any other error. */
export function sqliteCode(err: unknown): string | undefined {
  if (err instanceof Database.SqliteError) return err.code;
  return undefined;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * better-sqlite3 against Node's built-in node:sqlite (Node ≥ 22.13; no warning from 24)
 * on what the coordinator's SQLite store does (src/control/store/sqliteStore.ts): one
 * file in WAL mode with EXCLUSIVE locking and synchronous=FULL, prepared statements,
 * a transaction per write (read the key, upsert it, append to the log, bump the
 * revision), batched writes (ADR 0018), point reads and prefix ranges. For ADR 0036.
 *
 *   npx tsx bench/sqliteDrivers.ts [rounds]     (on Node ≥ 22.13, better-sqlite3 built for it)
 *
 * Each round runs both drivers, in alternating order, on fresh files in one temp dir;
 * the table shows the median of the rounds in operations per second.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import Database from "better-sqlite3";

/** The statement surface both drivers share. */
interface Statement {
  run(...params: unknown[]): unknown;
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
}
interface Driver {
  name: string;
  open(file: string): { exec(sql: string): void; prepare(sql: string): Statement; close(): void };
}

const schema = `
CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL);
CREATE TABLE kv (
  key TEXT PRIMARY KEY, value TEXT NOT NULL, create_revision INTEGER NOT NULL,
  mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX kv_lease ON kv (lease);
CREATE TABLE log (
  revision INTEGER NOT NULL, sub INTEGER NOT NULL, key TEXT NOT NULL, value TEXT,
  create_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL,
  prev_value TEXT, PRIMARY KEY (revision, sub)
) WITHOUT ROWID;
INSERT INTO meta (id, revision) VALUES (1, 0);
`;

/** A replica record's size in the store, roughly. */
const value = JSON.stringify({
  spec: { image: "localhost/web:1", env: { A: "x".repeat(200) }, ports: [{ port: 8080 }] },
  status: { phase: "Running", node: "node-0042", hostPorts: { http: 31_000 } },
});

interface Result {
  [operation: string]: number;
}

function runWorkload(driver: Driver, file: string): Result {
  const db = driver.open(file);
  db.exec("PRAGMA locking_mode = EXCLUSIVE");
  const mode = db.prepare("PRAGMA journal_mode = WAL").get() as { journal_mode: string };
  if (mode.journal_mode !== "wal") throw new Error(`${driver.name}: not in WAL mode`);
  db.exec("PRAGMA synchronous = FULL");
  db.exec(schema);
  const getKv = db.prepare("SELECT * FROM kv WHERE key = ?");
  const upsertKv = db.prepare("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)");
  const insertLog = db.prepare("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  const setRevision = db.prepare("UPDATE meta SET revision = ? WHERE id = 1");
  const range = db.prepare("SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key");
  let revision = 0;
  const put = (key: string) => {
    const previous = getKv.get(key) as { version: number; create_revision: number } | undefined;
    revision++;
    const created = previous?.create_revision ?? revision;
    upsertKv.run(key, value, created, revision, (previous?.version ?? 0) + 1, 0);
    insertLog.run(revision, 0, key, value, created, 1, 0, null);
    setRevision.run(revision);
  };
  const timed = (count: number, work: () => void) => {
    const startedMs = performance.now();
    work();
    return Math.round(count / ((performance.now() - startedMs) / 1000));
  };
  const result: Result = {};
  const keys = 2_000;
  // One transaction (and one fsync) per write, as an API call that is not batched.
  result["put, own transaction"] = timed(500, () => {
    for (let i = 0; i < 500; i++) {
      db.exec("BEGIN IMMEDIATE");
      put(`/replicas/default/web/${i % keys}`);
      db.exec("COMMIT");
    }
  });
  // Batched: 100 writes per transaction (replica reports of many nodes, plans).
  result["put, 100 per transaction"] = timed(20_000, () => {
    for (let batch = 0; batch < 200; batch++) {
      db.exec("BEGIN IMMEDIATE");
      for (let i = 0; i < 100; i++) put(`/replicas/default/web/${(batch * 100 + i) % keys}`);
      db.exec("COMMIT");
    }
  });
  result["get one key"] = timed(100_000, () => {
    for (let i = 0; i < 100_000; i++) getKv.get(`/replicas/default/web/${i % keys}`);
  });
  result["range of 2,000 keys"] = timed(100, () => {
    for (let i = 0; i < 100; i++) {
      const rows = range.all("/replicas/", "/replicas0");
      if (rows.length !== keys) throw new Error(`${driver.name}: range found ${rows.length}`);
    }
  });
  db.close();
  return result;
}

const require = createRequire(import.meta.url);

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 3);
  // Loaded at run time: the type definitions of the oldest Node line we build with may
  // lack it, and Node 22 warns that it is experimental.
  const { DatabaseSync } = require("node:sqlite") as {
    DatabaseSync: new (
      file: string,
    ) => { exec(sql: string): void; prepare(sql: string): Statement; close(): void };
  };
  const drivers: Driver[] = [
    {
      name: "better-sqlite3",
      open: (file) => {
        const db = new Database(file);
        return {
          exec: (sql) => void db.exec(sql),
          prepare: (sql) => db.prepare(sql) as unknown as Statement,
          close: () => db.close(),
        };
      },
    },
    { name: "node:sqlite", open: (file) => new DatabaseSync(file) },
  ];
  const dir = await mkdtemp(path.join(tmpdir(), "cloudless-sqlite-drivers-"));
  const results = new Map<string, Result[]>(drivers.map((d) => [d.name, []]));
  try {
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? drivers : [...drivers].reverse();
      for (const driver of order) {
        const file = path.join(dir, `${driver.name.replace(/\W/g, "-")}-${round}.db`);
        results.get(driver.name)?.push(runWorkload(driver, file));
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1] ?? 0;
  const operations = Object.keys(results.get("better-sqlite3")?.[0] ?? {});
  const sqliteVersion = new Database(":memory:").prepare("SELECT sqlite_version() AS v").get() as {
    v: string;
  };
  const builtIn = new DatabaseSync(":memory:").prepare("SELECT sqlite_version() AS v").get() as {
    v: string;
  };
  console.log(
    `Node ${process.version}, ${rounds} rounds, median ops/s; SQLite ${sqliteVersion.v} (better-sqlite3) and ${builtIn.v} (node:sqlite)`,
  );
  console.log("| operation | better-sqlite3 | node:sqlite | node:sqlite / better-sqlite3 |");
  console.log("| --- | ---: | ---: | ---: |");
  for (const operation of operations) {
    const a = median((results.get("better-sqlite3") ?? []).map((r) => r[operation] ?? 0));
    const b = median((results.get("node:sqlite") ?? []).map((r) => r[operation] ?? 0));
    console.log(`| ${operation} | ${a} | ${b} | ${(b / a).toFixed(2)} |`);
  }
}

await main();

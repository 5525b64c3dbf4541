import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { openSqliteStore, prefixEnd, type SqliteStore } from "./sqliteStore.js";
import { StoreError, type WatchEnd } from "./store.js";
import { runStoreContract } from "./storeContract.js";

const SQLITE_STORE_MODULE = fileURLToPath(new URL("./sqliteStore.ts", import.meta.url));

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), "cloudless-store-"));
}

runStoreContract("sqlite", async () => {
  const dir = await tempDir();
  const path = join(dir, "store.db");
  const clock = new ManualClock();
  let current = await openSqliteStore({ path, clock });
  return {
    store: current,
    clock,
    reopen: async () => {
      current = await openSqliteStore({ path, clock });
      return current;
    },
    cleanup: async () => {
      try {
        await current.close();
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
});

async function openError(options: Parameters<typeof openSqliteStore>[0]): Promise<StoreError> {
  try {
    const store = await openSqliteStore(options);
    await store.close();
  } catch (err) {
    expect(err).toBeInstanceOf(StoreError);
    return err as StoreError;
  }
  throw new Error(`opening ${options.path} unexpectedly succeeded`);
}

/** Runs a child process that opens the store and holds it until its stdin closes. */
async function holdInChild(path: string): Promise<ChildProcess> {
  const script = `
    const { openSqliteStore } = await import(${JSON.stringify(SQLITE_STORE_MODULE)});
    const store = await openSqliteStore({ path: ${JSON.stringify(path)} });
    process.stdout.write("ready\\n");
    process.stdin.resume();
    process.stdin.on("end", async () => { await store.close(); process.exit(0); });
  `;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  try {
    await new Promise<void>((resolve, reject) => {
      const deadline = setTimeout(() => reject(new Error(`child not ready: ${stderr}`)), 20_000);
      child.stdout?.on("data", (chunk: Buffer) => {
        if (chunk.toString().includes("ready")) {
          clearTimeout(deadline);
          resolve();
        }
      });
      child.on("exit", (code) => {
        clearTimeout(deadline);
        reject(new Error(`child exited with ${code}: ${stderr}`));
      });
    });
  } catch (err) {
    child.kill();
    throw err;
  }
  return child;
}

describe("sqlite store", () => {
  let dir: string;
  const toClose: SqliteStore[] = [];

  beforeEach(async () => {
    dir = await tempDir();
  });

  afterEach(async () => {
    for (const store of toClose.splice(0)) await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function open(options: Partial<Parameters<typeof openSqliteStore>[0]> = {}) {
    const store = await openSqliteStore({ path: join(dir, "store.db"), ...options });
    toClose.push(store);
    return store;
  }

  it("REQ-012 a second process cannot open a store that is open, and is told why", async () => {
    const path = join(dir, "store.db");
    const child = await holdInChild(path);
    try {
      const error = await openError({ path });
      expect(error.kind).toBe("locked");
      expect(error.message).toBe(
        `store ${path} is locked by another process; stop the other coordinator or use a ` +
          "different --data-dir",
      );
    } finally {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.stdin?.end();
      await exited;
    }
    // Once the holder is gone the store opens again, with its data intact.
    const store = await open({ path });
    expect(await store.currentRevision()).toBe(0);
  });

  it("REQ-012 a second open in the same process is refused as locked too", async () => {
    const path = join(dir, "store.db");
    const store = await open({ path });
    await store.put("/k", "v");
    const error = await openError({ path });
    expect(error.kind).toBe("locked");
    expect(await store.get("/k")).toMatchObject({ value: "v" });
  });

  it("REQ-012 a garbage file is reported corrupt and left byte-for-byte untouched", async () => {
    const path = join(dir, "store.db");
    const garbage = Buffer.alloc(16_384);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 7919 + 13) % 251;
    await writeFile(path, garbage);
    const error = await openError({ path });
    expect(error.kind).toBe("corrupt");
    expect(error.message).toMatch(
      new RegExp(`^store ${path} is corrupt \\(.+\\); restore it from a backup or move it aside`),
    );
    expect(Buffer.compare(await readFile(path), garbage)).toBe(0);
    expect(await readdir(dir)).toEqual(["store.db"]);
  });

  it("REQ-012 a SQLite file that is not a Cloudless store is refused and left untouched", async () => {
    const path = join(dir, "store.db");
    const other = new Database(path);
    other.exec("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)");
    other.close();
    const before = await readFile(path);
    const error = await openError({ path });
    expect(error.kind).toBe("corrupt");
    expect(error.message).toContain("not a Cloudless store");
    expect(Buffer.compare(await readFile(path), before)).toBe(0);
  });

  it("REQ-012 a store written by an unknown schema version is refused", async () => {
    const path = join(dir, "store.db");
    const store = await openSqliteStore({ path });
    await store.put("/k", "v");
    await store.close();
    const raw = new Database(path);
    raw.prepare("UPDATE meta SET schema_version = 99").run();
    raw.close();
    const error = await openError({ path });
    expect(error.kind).toBe("corrupt");
    expect(error.message).toContain("schema version 99");
  });

  it("REQ-012 a missing data directory is reported as unavailable", async () => {
    const error = await openError({ path: join(dir, "no-such-dir", "store.db") });
    expect(error.kind).toBe("unavailable");
    expect(error.message).toContain("--data-dir");
  });

  it("REQ-012 history is bounded: old revisions are compacted automatically", async () => {
    const store = await open({ historyLimit: 5 });
    for (let i = 0; i < 40; i++) await store.put(`/k${i % 3}`, `${i}`);
    const current = await store.currentRevision();
    const compacted = await store.compactedRevision();
    expect(current).toBe(40);
    expect(compacted).toBeGreaterThan(0);
    // At least historyLimit revisions are kept, and at most a small batch more.
    expect(current - compacted).toBeGreaterThanOrEqual(5);
    expect(current - compacted).toBeLessThanOrEqual(6);
    const ends: WatchEnd[] = [];
    store.watch("", { fromRevision: 1 }, { onEvents: () => undefined, onEnd: (e) => ends.push(e) });
    await vi.waitFor(() => expect(ends).toHaveLength(1));
    expect(ends[0]).toMatchObject({ reason: "compacted", compactRevision: compacted });
    expect((await store.range("")).kvs).toHaveLength(3);
  });

  it("REQ-012 history is compacted on an interval when compactIntervalMs is set", async () => {
    const clock = new ManualClock();
    const store = await open({ historyLimit: 5, compactIntervalMs: 1_000, clock });
    for (let i = 0; i < 20; i++) await store.put("/k", `${i}`);
    expect(await store.compactedRevision()).toBe(0);
    clock.advance(1_000);
    expect(await store.compactedRevision()).toBe(15);
  });

  it("REQ-012 a stall of this process does not expire its leases; time after it does", async () => {
    const clock = new ManualClock();
    const store = await open({ clock });
    const lease = await store.grantLease(5_000);
    await store.put("/held", "1", { lease: lease.id });
    clock.advance(3_000);
    // The event loop is blocked for 8 s: nobody in this process could renew.
    clock.stall(8_000);
    clock.advance(0);
    expect(await store.get("/held")).toMatchObject({ value: "1" });
    // A renewal that comes first after a stall finds its lease alive too.
    const second = await store.grantLease(5_000);
    clock.stall(9_000);
    await store.keepAlive(second.id);
    await store.keepAlive(lease.id);
    // Time that passes with the process running expires a lease nobody renews.
    clock.advance(5_000);
    expect(await store.get("/held")).toBeUndefined();
    await expect(store.keepAlive(lease.id)).rejects.toMatchObject({ kind: "leaseNotFound" });
  });

  it("REQ-012 data survives close and reopen", async () => {
    const path = join(dir, "store.db");
    const clock = new ManualClock();
    const first = await openSqliteStore({ path, clock });
    const lease = await first.grantLease(5_000);
    await first.put("/a", "1");
    await first.put("/b", "2", { lease: lease.id });
    await first.delete("/a");
    await first.close();
    const second = await open({ path, clock });
    expect(await second.currentRevision()).toBe(3);
    expect(await second.get("/a")).toBeUndefined();
    expect(await second.get("/b")).toMatchObject({ value: "2", lease: lease.id });
    expect((await second.grantLease(1_000)).id).toBe(lease.id + 1);
    // The lease got a fresh TTL at reopen, then expires on schedule.
    clock.advance(6_000);
    expect(await second.get("/b")).toBeUndefined();
  });

  it("REQ-012 a long replay spans several log reads and hands over to live changes", async () => {
    const store = await open();
    const expected: number[] = [];
    for (let i = 0; i < 1_500; i++) {
      const revision = await store.put(i % 3 === 0 ? `/other/${i}` : `/mine/${i % 50}`, `${i}`);
      if (i % 3 !== 0) expected.push(revision);
    }
    const seen: number[] = [];
    const writes: Promise<number>[] = [];
    store.watch(
      "/mine/",
      { fromRevision: 1 },
      {
        onEvents: (events, revision) => {
          expect(events.every((e) => e.kv.key.startsWith("/mine/"))).toBe(true);
          seen.push(revision);
          // Writes made while the replay is under way arrive after it, once each.
          if (seen.length % 200 === 0) writes.push(store.put(`/mine/live${seen.length}`, "v"));
        },
      },
    );
    await vi.waitFor(() => expect(seen.length).toBe(expected.length + writes.length), {
      timeout: 15_000,
    });
    expected.push(...(await Promise.all(writes)));
    expect(writes.length).toBeGreaterThan(0);
    expect(seen).toEqual(expected);
  });

  it("REQ-012 a watcher that falls too far behind is closed and told where to resume", async () => {
    const store = await open({ maxPendingRevisions: 5 });
    const seen: number[] = [];
    const ends: WatchEnd[] = [];
    store.watch("", {}, { onEvents: (_e, rev) => seen.push(rev), onEnd: (e) => ends.push(e) });
    // Twenty writes in one tick: the watcher has no chance to drain in between.
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.put(`/k${i}`, "v")));
    await vi.waitFor(() => expect(ends).toHaveLength(1));
    expect(ends[0]?.reason).toBe("closed");
    expect(ends[0]?.message).toContain("fromRevision 1");
    expect(seen).toEqual([]);
  });

  it("REQ-012 a throwing watch handler ends only its own watch", async () => {
    const store = await open();
    const ends: WatchEnd[] = [];
    const healthy: number[] = [];
    store.watch(
      "",
      {},
      {
        onEvents: () => {
          throw new Error("handler bug");
        },
        onEnd: (e) => ends.push(e),
      },
    );
    store.watch("", {}, { onEvents: (_e, rev) => healthy.push(rev) });
    await store.put("/a", "1");
    await store.put("/b", "2");
    await vi.waitFor(() => expect(healthy).toEqual([1, 2]));
    expect(ends).toHaveLength(1);
    expect(ends[0]?.message).toContain("handler bug");
    expect(ends[0]?.message).toContain("fromRevision 1");
  });

  it("REQ-012 prefixEnd bounds prefixes in code point order", () => {
    expect(prefixEnd("")).toBeUndefined();
    expect(prefixEnd("a/")).toBe("a0");
    expect(prefixEnd("ab")).toBe("ac");
    expect(prefixEnd("a\u{10FFFF}")).toBe("b");
    expect(prefixEnd("\u{10FFFF}")).toBeUndefined();
    expect(prefixEnd("a\uD7FF")).toBe("a\uE000");
    expect(prefixEnd("a😀")).toBe("a😁");
  });
});

/**
 * The store contract suite (REQ-012): every backend runs these same tests, written only
 * against the Store interface, so SQLite and etcd behave alike for the code above them.
 *
 * Rules the suite keeps so it can run against a shared server: every test works under
 * its own key prefix, asserts revisions only relative to ones it observed, and assumes
 * nobody else writes while a test runs. It never sleeps for a fixed time: it advances the
 * factory's ManualClock when there is one, or waits for a condition with a deadline.
 */

import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { ManualClock } from "../../lib/clock.js";
import {
  type KeyValue,
  type Store,
  StoreError,
  type Watch,
  type WatchEnd,
  type WatchEvent,
} from "./store.js";

export interface StoreFixture {
  store: Store;
  /** Opens the same data again; the suite has closed `store` (or the last reopened one). */
  reopen?: () => Promise<Store>;
  /** Closes whatever store is still open and removes its data. Runs even after failures. */
  cleanup: () => Promise<void>;
  /** The clock the store uses for leases, when the backend takes one. */
  clock?: ManualClock;
}

interface RevisionEvents {
  revision: number;
  events: WatchEvent[];
}

interface Collector {
  groups: RevisionEvents[];
  ends: WatchEnd[];
  watch: Watch;
  lastRevision(): number;
}

const WAIT_TIMEOUT_MS = 15_000;
/** Real-time leases (no ManualClock) are slow by nature; etcd rounds TTLs up to seconds. */
const REAL_LEASE_TTL_MS = 2_000;
const REAL_LEASE_WAIT_MS = 30_000;

let prefixCounter = 0;

/** A key prefix no other test (or earlier run against a shared server) uses. */
function uniquePrefix(label: string): string {
  prefixCounter += 1;
  return `/contract/${label}/${Date.now().toString(36)}-${prefixCounter}/`;
}

function collect(store: Store, prefix: string, fromRevision?: number): Collector {
  const groups: RevisionEvents[] = [];
  const ends: WatchEnd[] = [];
  const watch = store.watch(prefix, fromRevision === undefined ? {} : { fromRevision }, {
    onEvents(events, revision) {
      groups.push({ revision, events });
    },
    onEnd(end) {
      ends.push(end);
    },
  });
  return { groups, ends, watch, lastRevision: () => groups.at(-1)?.revision ?? 0 };
}

async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = WAIT_TIMEOUT_MS,
): Promise<void> {
  await vi.waitFor(
    async () => {
      if (!(await condition())) throw new Error(`timed out waiting for ${what}`);
    },
    { timeout: timeoutMs, interval: 5 },
  );
}

async function expectStoreError(
  action: Promise<unknown> | (() => unknown),
  kind: StoreError["kind"],
): Promise<StoreError> {
  let caught: unknown;
  try {
    await (typeof action === "function" ? action() : action);
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected a StoreError of kind ${kind}`).toBeInstanceOf(StoreError);
  const error = caught as StoreError;
  expect(error.kind).toBe(kind);
  expect(error.message.length).toBeGreaterThan(0);
  return error;
}

function putEvent(key: string, value: string, revision: number, prev?: KeyValue): WatchEvent {
  const kv: KeyValue = {
    key,
    value,
    createRevision: prev ? prev.createRevision : revision,
    modRevision: revision,
    version: (prev?.version ?? 0) + 1,
    lease: 0,
  };
  return prev ? { type: "put", kv, prevKv: prev } : { type: "put", kv };
}

function deleteEvent(prev: KeyValue, revision: number): WatchEvent {
  return {
    type: "delete",
    kv: {
      key: prev.key,
      value: "",
      createRevision: 0,
      modRevision: revision,
      version: 0,
      lease: 0,
    },
    prevKv: prev,
  };
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

/** Registers the contract suite for one backend. */
export function runStoreContract(name: string, factory: () => Promise<StoreFixture>): void {
  describe(`store contract: ${name}`, () => {
    let fixture: StoreFixture | undefined;
    let store: Store;

    beforeEach(async () => {
      fixture = await factory();
      store = fixture.store;
    });

    afterEach(async () => {
      const current = fixture;
      fixture = undefined;
      await current?.cleanup();
    });

    describe("keys and revisions", () => {
      it("REQ-012 put then get returns the value, revisions and version 1", async () => {
        const p = uniquePrefix("put-get");
        const before = await store.currentRevision();
        const revision = await store.put(`${p}k`, "v1");
        expect(revision).toBe(before + 1);
        expect(await store.currentRevision()).toBe(revision);
        expect(await store.get(`${p}k`)).toEqual({
          key: `${p}k`,
          value: "v1",
          createRevision: revision,
          modRevision: revision,
          version: 1,
          lease: 0,
        });
      });

      it("REQ-012 a second put keeps createRevision and bumps modRevision and version", async () => {
        const p = uniquePrefix("put-twice");
        const first = await store.put(`${p}k`, "v1");
        const second = await store.put(`${p}k`, "v2");
        expect(second).toBe(first + 1);
        expect(await store.get(`${p}k`)).toMatchObject({
          value: "v2",
          createRevision: first,
          modRevision: second,
          version: 2,
        });
      });

      it("REQ-012 get of a missing key returns undefined", async () => {
        const p = uniquePrefix("missing");
        expect(await store.get(`${p}nothing`)).toBeUndefined();
      });

      it("REQ-012 delete removes a key at a new revision; a missing key costs no revision", async () => {
        const p = uniquePrefix("delete");
        await store.put(`${p}k`, "v");
        const before = await store.currentRevision();
        expect(await store.delete(`${p}k`)).toBe(1);
        expect(await store.currentRevision()).toBe(before + 1);
        expect(await store.get(`${p}k`)).toBeUndefined();
        expect(await store.delete(`${p}k`)).toBe(0);
        expect(await store.currentRevision()).toBe(before + 1);
      });

      it("REQ-012 a key re-created after delete has a new createRevision and version 1", async () => {
        const p = uniquePrefix("recreate");
        await store.put(`${p}k`, "a");
        await store.put(`${p}k`, "b");
        await store.delete(`${p}k`);
        const revision = await store.put(`${p}k`, "c");
        expect(await store.get(`${p}k`)).toMatchObject({
          value: "c",
          createRevision: revision,
          modRevision: revision,
          version: 1,
        });
      });

      it("REQ-012 values round-trip exactly: empty, unicode, quotes, large", async () => {
        const p = uniquePrefix("values");
        const values = ["", "héllo wörld ✓ 😀", "'\"\\%_\n\t", "x".repeat(256 * 1024)];
        for (const [i, value] of values.entries()) {
          await store.put(`${p}${i}`, value);
          expect((await store.get(`${p}${i}`))?.value).toBe(value);
        }
      });

      it("REQ-012 an empty key is rejected as invalid", async () => {
        await expectStoreError(store.put("", "v"), "invalid");
      });
    });

    describe("range", () => {
      it("REQ-012 range returns exactly the keys under the prefix, sorted", async () => {
        const p = uniquePrefix("range");
        const keys = ["a", "a/b", "a/b/c", "a/b0", "a/bc", "a/a", "a0", "b", "a/b/"];
        for (const key of keys) await store.put(`${p}${key}`, key);
        const under = async (sub: string) =>
          (await store.range(`${p}${sub}`)).kvs.map((kv) => kv.key.slice(p.length));
        expect(await under("a/b")).toEqual(["a/b", "a/b/", "a/b/c", "a/b0", "a/bc"]);
        expect(await under("a/b/")).toEqual(["a/b/", "a/b/c"]);
        expect(await under("a/")).toEqual(["a/a", "a/b", "a/b/", "a/b/c", "a/b0", "a/bc"]);
        expect(await under("")).toEqual([...keys].sort(byteOrder));
        expect(await under("c")).toEqual([]);
      });

      it("REQ-012 range treats % and _ literally and sorts in byte order", async () => {
        const p = uniquePrefix("range-special");
        const keys = ["%", "%a", "_", "_a", "a", "é", "😀", "\uffff", "z"];
        for (const key of keys) await store.put(`${p}${key}`, "v");
        const under = async (sub: string) =>
          (await store.range(`${p}${sub}`)).kvs.map((kv) => kv.key.slice(p.length));
        expect(await under("%")).toEqual(["%", "%a"]);
        expect(await under("_")).toEqual(["_", "_a"]);
        expect(await under("é")).toEqual(["é"]);
        // UTF-8 byte order puts U+FFFF before U+1F600 (JS string order would not).
        expect(await under("")).toEqual([...keys].sort(byteOrder));
        expect((await under("")).indexOf("\uffff")).toBeLessThan((await under("")).indexOf("😀"));
      });

      it("REQ-012 range limit sets more, and fromKey pages through the prefix", async () => {
        const p = uniquePrefix("paging");
        const keys = ["k1", "k2", "k3", "k4", "k5"].map((k) => `${p}${k}`);
        for (const key of keys) await store.put(key, "v");
        await store.put(`${p.slice(0, -1)}~outside`, "v");

        const first = await store.range(p, { limit: 2 });
        expect(first.kvs.map((kv) => kv.key)).toEqual(keys.slice(0, 2));
        expect(first.more).toBe(true);

        const seen: string[] = [];
        let fromKey: string | undefined;
        for (let page = 0; page < 10; page++) {
          const result = await store.range(p, { limit: 2, fromKey });
          seen.push(...result.kvs.map((kv) => kv.key));
          if (!result.more) break;
          // fromKey is inclusive: the smallest key after the last one seen.
          fromKey = `${result.kvs.at(-1)?.key}\u0000`;
        }
        expect(seen).toEqual(keys);

        expect((await store.range(p, { limit: 5 })).more).toBe(false);
        expect((await store.range(p, { limit: 0 })).kvs).toHaveLength(5);
        expect((await store.range(p, { fromKey: `${p}k3` })).kvs.map((kv) => kv.key)).toEqual(
          keys.slice(2),
        );
      });

      it("REQ-012 range keysOnly returns keys with empty values", async () => {
        const p = uniquePrefix("keys-only");
        await store.put(`${p}a`, "value-a");
        const revision = await store.put(`${p}b`, "value-b");
        const result = await store.range(p, { keysOnly: true });
        expect(result.kvs.map((kv) => [kv.key, kv.value])).toEqual([
          [`${p}a`, ""],
          [`${p}b`, ""],
        ]);
        expect(result.kvs[1]?.modRevision).toBe(revision);
      });

      it("REQ-012 range reports the store's current revision", async () => {
        const p = uniquePrefix("range-rev");
        await store.put(`${p}a`, "v");
        const revision = await store.put(`${uniquePrefix("elsewhere")}b`, "v");
        const result = await store.range(p);
        expect(result.revision).toBe(revision);
        expect(result.kvs[0]?.modRevision).toBe(revision - 1);
      });
    });

    describe("transactions", () => {
      it("REQ-012 txn compare on modRevision rejects a stale write", async () => {
        const p = uniquePrefix("cas");
        const read = await store.put(`${p}k`, "v1");
        await store.put(`${p}k`, "v2"); // someone else writes after our read
        const stale = await store.txn({
          compare: [{ key: `${p}k`, target: "modRevision", op: "==", modRevision: read }],
          success: [{ type: "put", key: `${p}k`, value: "mine" }],
          failure: [{ type: "get", key: `${p}k` }],
        });
        expect(stale.succeeded).toBe(false);
        expect(stale.results).toEqual([
          { type: "get", kv: expect.objectContaining({ value: "v2" }) },
        ]);
        expect((await store.get(`${p}k`))?.value).toBe("v2");

        const fresh = (await store.get(`${p}k`))?.modRevision ?? -1;
        const ok = await store.txn({
          compare: [{ key: `${p}k`, target: "modRevision", op: "==", modRevision: fresh }],
          success: [{ type: "put", key: `${p}k`, value: "mine" }],
        });
        expect(ok.succeeded).toBe(true);
        expect(ok.revision).toBe(fresh + 1);
        expect((await store.get(`${p}k`))?.value).toBe("mine");
      });

      it("REQ-012 txn create-if-absent: a missing key has revisions and version 0", async () => {
        const p = uniquePrefix("create");
        const targets = [
          { key: `${p}k`, target: "modRevision", op: "==", modRevision: 0 },
          { key: `${p}k`, target: "createRevision", op: "==", createRevision: 0 },
          { key: `${p}k`, target: "version", op: "==", version: 0 },
        ] as const;
        for (const compare of targets) {
          const dry = await store.txn({ compare: [compare], success: [] });
          expect(dry.succeeded).toBe(true);
        }
        const create = () =>
          store.txn({
            compare: [{ key: `${p}k`, target: "createRevision", op: "==", createRevision: 0 }],
            success: [{ type: "put", key: `${p}k`, value: "first" }],
          });
        expect((await create()).succeeded).toBe(true);
        expect((await create()).succeeded).toBe(false);
        expect((await store.get(`${p}k`))?.value).toBe("first");
      });

      it("REQ-012 txn compare ops ==, !=, <, > on modRevision, createRevision and version", async () => {
        const p = uniquePrefix("compare-ops");
        const created = await store.put(`${p}k`, "a");
        const modified = await store.put(`${p}k`, "b");
        const actual = { modRevision: modified, createRevision: created, version: 2 };
        const ops = ["==", "!=", "<", ">"] as const;
        const holds = (a: number, op: (typeof ops)[number], b: number) =>
          op === "==" ? a === b : op === "!=" ? a !== b : op === "<" ? a < b : a > b;
        const before = await store.currentRevision();
        for (const target of ["modRevision", "createRevision", "version"] as const) {
          for (const op of ops) {
            for (const delta of [-1, 0, 1]) {
              const operand = actual[target] + delta;
              const compare =
                target === "modRevision"
                  ? { key: `${p}k`, target, op, modRevision: operand }
                  : target === "createRevision"
                    ? { key: `${p}k`, target, op, createRevision: operand }
                    : { key: `${p}k`, target, op, version: operand };
              const result = await store.txn({ compare: [compare], success: [] });
              expect(result.succeeded, `${target} ${actual[target]} ${op} ${operand}`).toBe(
                holds(actual[target], op, operand),
              );
            }
          }
        }
        expect(await store.currentRevision()).toBe(before);
      });

      it("REQ-012 txn compare on value; a missing key matches no value compare", async () => {
        const p = uniquePrefix("compare-value");
        await store.put(`${p}k`, "blue");
        // Each check writes when it holds, as every compare the coordinator relies on does
        // (the leader fence guards writes): etcd serves a compare-only transaction as a
        // read, and a member paused on a loaded machine has answered such a read stale
        // (etcd-io/etcd#20418, fixed after the 3.4.23 installed here; seen once in CI, 3
        // members, 500 ms elections).
        const check = async (key: string, op: "==" | "!=", value: string) =>
          (
            await store.txn({
              compare: [{ key, target: "value", op, value }],
              success: [{ type: "put", key: `${p}held`, value: `${op} ${value}` }],
            })
          ).succeeded;
        expect(await check(`${p}k`, "==", "blue")).toBe(true);
        expect(await check(`${p}k`, "==", "red")).toBe(false);
        expect(await check(`${p}k`, "!=", "red")).toBe(true);
        expect(await check(`${p}k`, "!=", "blue")).toBe(false);
        expect(await check(`${p}missing`, "==", "")).toBe(false);
        expect(await check(`${p}missing`, "!=", "x")).toBe(false);
      });

      it("REQ-012 txn needs every compare to hold, and runs the failure branch otherwise", async () => {
        const p = uniquePrefix("branches");
        const a = await store.put(`${p}a`, "1");
        const both = (bRevision: number) =>
          store.txn({
            compare: [
              { key: `${p}a`, target: "modRevision", op: "==", modRevision: a },
              { key: `${p}b`, target: "modRevision", op: "==", modRevision: bRevision },
            ],
            success: [{ type: "put", key: `${p}result`, value: "success" }],
            failure: [{ type: "put", key: `${p}result`, value: "failure" }],
          });
        expect((await both(999_999_999)).succeeded).toBe(false);
        expect((await store.get(`${p}result`))?.value).toBe("failure");
        expect((await both(0)).succeeded).toBe(true);
        expect((await store.get(`${p}result`))?.value).toBe("success");
      });

      it("REQ-012 a txn's writes all share one new revision", async () => {
        const p = uniquePrefix("one-rev");
        await store.put(`${p}c`, "old");
        const before = await store.currentRevision();
        const watcher = collect(store, p);
        const result = await store.txn({
          compare: [],
          success: [
            { type: "put", key: `${p}a`, value: "1" },
            { type: "put", key: `${p}b`, value: "2" },
            { type: "delete", key: `${p}c` },
          ],
        });
        expect(result.succeeded).toBe(true);
        expect(result.revision).toBe(before + 1);
        expect(await store.currentRevision()).toBe(before + 1);
        expect((await store.get(`${p}a`))?.modRevision).toBe(before + 1);
        expect((await store.get(`${p}b`))?.modRevision).toBe(before + 1);
        await until(() => watcher.groups.length >= 1, "the txn's events");
        watcher.watch.cancel();
        expect(watcher.groups).toHaveLength(1);
        expect(watcher.groups[0]?.revision).toBe(before + 1);
        expect(watcher.groups[0]?.events.map((e) => [e.type, e.kv.key])).toEqual([
          ["put", `${p}a`],
          ["put", `${p}b`],
          ["delete", `${p}c`],
        ]);
      });

      it("REQ-012 a txn is atomic: when one op fails nothing is written", async () => {
        const p = uniquePrefix("atomic");
        const before = await store.currentRevision();
        await expectStoreError(
          store.txn({
            compare: [],
            success: [
              { type: "put", key: `${p}a`, value: "1" },
              { type: "put", key: `${p}b`, value: "2", lease: 987_654_321 },
            ],
          }),
          "leaseNotFound",
        );
        expect(await store.get(`${p}a`)).toBeUndefined();
        expect(await store.currentRevision()).toBe(before);
      });

      it("REQ-012 read-only txns and txns that change nothing keep the revision", async () => {
        const p = uniquePrefix("no-bump");
        await store.put(`${p}a`, "1");
        const before = await store.currentRevision();
        const readOnly = await store.txn({
          compare: [],
          success: [
            { type: "get", key: `${p}a` },
            { type: "range", prefix: p },
          ],
        });
        expect(readOnly.revision).toBe(before);
        const failed = await store.txn({
          compare: [{ key: `${p}a`, target: "value", op: "==", value: "nope" }],
          success: [{ type: "put", key: `${p}a`, value: "2" }],
        });
        expect(failed).toEqual({ succeeded: false, revision: before, results: [] });
        const deletesNothing = await store.txn({
          compare: [],
          success: [
            { type: "delete", key: `${p}missing` },
            { type: "deletePrefix", prefix: `${p}none/` },
          ],
        });
        expect(deletesNothing.revision).toBe(before);
        expect(await store.currentRevision()).toBe(before);
      });

      it("REQ-012 txn op results: put returns prev, deletes count, get and range read", async () => {
        const p = uniquePrefix("results");
        const first = await store.put(`${p}a`, "old");
        await store.put(`${p}d/1`, "x");
        await store.put(`${p}d/2`, "y");
        const result = await store.txn({
          compare: [],
          success: [
            { type: "put", key: `${p}a`, value: "new" },
            { type: "put", key: `${p}b`, value: "fresh" },
            { type: "delete", key: `${p}missing` },
            { type: "deletePrefix", prefix: `${p}d/` },
            { type: "get", key: `${p}a` },
            { type: "get", key: `${p}nothing` },
            { type: "range", prefix: p, options: { limit: 1 } },
          ],
        });
        const revision = first + 3;
        expect(result.revision).toBe(revision);
        expect(result.results).toEqual([
          {
            type: "put",
            prev: {
              key: `${p}a`,
              value: "old",
              createRevision: first,
              modRevision: first,
              version: 1,
              lease: 0,
            },
          },
          { type: "put" },
          { type: "delete", deleted: 0 },
          { type: "delete", deleted: 2 },
          {
            type: "get",
            kv: {
              key: `${p}a`,
              value: "new",
              createRevision: first,
              modRevision: revision,
              version: 2,
              lease: 0,
            },
          },
          { type: "get" },
          {
            type: "range",
            kvs: [expect.objectContaining({ key: `${p}a`, value: "new" })],
            more: true,
          },
        ]);
      });

      it("REQ-012 deletePrefix deletes only keys under the prefix, at one revision", async () => {
        const p = uniquePrefix("delete-prefix");
        for (const key of ["x/1", "x/2", "x/2/deep", "x0", "y"]) await store.put(`${p}${key}`, "v");
        const before = await store.currentRevision();
        const result = await store.txn({
          compare: [],
          success: [{ type: "deletePrefix", prefix: `${p}x/` }],
        });
        expect(result.results).toEqual([{ type: "delete", deleted: 3 }]);
        expect(result.revision).toBe(before + 1);
        expect((await store.range(p)).kvs.map((kv) => kv.key)).toEqual([`${p}x0`, `${p}y`]);
      });

      it("REQ-012 a txn may not write the same key twice", async () => {
        const p = uniquePrefix("duplicate");
        const before = await store.currentRevision();
        await expectStoreError(
          store.txn({
            compare: [],
            success: [
              { type: "put", key: `${p}a`, value: "1" },
              { type: "put", key: `${p}a`, value: "2" },
            ],
          }),
          "invalid",
        );
        await expectStoreError(
          store.txn({
            compare: [],
            success: [
              { type: "put", key: `${p}a/1`, value: "1" },
              { type: "deletePrefix", prefix: `${p}a/` },
            ],
          }),
          "invalid",
        );
        expect(await store.currentRevision()).toBe(before);
      });
    });

    describe("watch", () => {
      it("REQ-012 watch delivers puts and deletes with prevKv, one revision per call", async () => {
        const p = uniquePrefix("watch-basic");
        const watcher = collect(store, p);
        const r1 = await store.put(`${p}a`, "1");
        const r2 = await store.put(`${p}a`, "2");
        await store.delete(`${p}a`);
        const r3 = await store.currentRevision();
        await until(() => watcher.lastRevision() >= r3, "three revisions");
        watcher.watch.cancel();
        const v1: KeyValue = {
          key: `${p}a`,
          value: "1",
          createRevision: r1,
          modRevision: r1,
          version: 1,
          lease: 0,
        };
        const v2: KeyValue = { ...v1, value: "2", modRevision: r2, version: 2 };
        expect(watcher.groups).toEqual([
          { revision: r1, events: [putEvent(`${p}a`, "1", r1)] },
          { revision: r2, events: [putEvent(`${p}a`, "2", r2, v1)] },
          { revision: r3, events: [deleteEvent(v2, r3)] },
        ]);
        expect(watcher.ends).toEqual([]);
      });

      it("REQ-012 watch delivery is asynchronous, never inside the writer's call", async () => {
        const p = uniquePrefix("watch-async");
        let deliveredDuringPut = false;
        let inPut = false;
        let delivered = 0;
        const watch = store.watch(
          p,
          {},
          {
            onEvents() {
              if (inPut) deliveredDuringPut = true;
              delivered += 1;
            },
          },
        );
        inPut = true;
        const pending = store.put(`${p}a`, "1");
        inPut = false;
        expect(delivered).toBe(0);
        await pending;
        await until(() => delivered === 1, "the put event");
        watch.cancel();
        expect(deliveredDuringPut).toBe(false);
      });

      it("REQ-012 watch sees only keys under its prefix", async () => {
        const p = uniquePrefix("watch-prefix");
        const watcher = collect(store, `${p}a/`);
        await store.put(`${p}a`, "no");
        await store.put(`${p}a/1`, "yes");
        await store.put(`${p}ab`, "no");
        await store.txn({
          compare: [],
          success: [
            { type: "put", key: `${p}b`, value: "no" },
            { type: "put", key: `${p}a/2`, value: "yes" },
          ],
        });
        const last = await store.currentRevision();
        await until(() => watcher.lastRevision() === last, "the txn");
        watcher.watch.cancel();
        expect(watcher.groups.flatMap((g) => g.events.map((e) => e.kv.key))).toEqual([
          `${p}a/1`,
          `${p}a/2`,
        ]);
      });

      it("REQ-012 property: watchers see exactly the changes made, in revision order", async () => {
        const KEYS = ["a", "a/b", "a/c", "ab", "b", "b/a"];
        const PREFIXES = ["a", "a/", "b", ""];
        const value = fc.oneof(
          fc.string({ maxLength: 6 }),
          fc.string({ unit: "grapheme", maxLength: 3 }),
        );
        const keyIndex = fc.nat({ max: KEYS.length - 1 });
        type ModelOp =
          | { kind: "put"; key: number; value: string }
          | { kind: "delete"; key: number }
          | { kind: "deletePrefix"; prefix: number }
          | { kind: "txn"; writes: { key: number; value: string | null }[] };
        const op: fc.Arbitrary<ModelOp> = fc.oneof(
          { weight: 4, arbitrary: fc.record({ kind: fc.constant("put"), key: keyIndex, value }) },
          { weight: 2, arbitrary: fc.record({ kind: fc.constant("delete"), key: keyIndex }) },
          {
            weight: 1,
            arbitrary: fc.record({
              kind: fc.constant("deletePrefix"),
              prefix: fc.nat({ max: PREFIXES.length - 1 }),
            }),
          },
          {
            weight: 2,
            arbitrary: fc.record({
              kind: fc.constant("txn"),
              writes: fc.uniqueArray(fc.record({ key: keyIndex, value: fc.option(value) }), {
                minLength: 1,
                maxLength: 4,
                selector: (w) => w.key,
              }),
            }),
          },
        ) as fc.Arbitrary<ModelOp>;

        await fc.assert(
          fc.asyncProperty(fc.array(op, { maxLength: 20 }), async (ops) => {
            const p = uniquePrefix("property");
            const sub = `${p}a`;
            const start = (await store.currentRevision()) + 1;
            const live = collect(store, p);
            const liveSub = collect(store, sub);
            const model = new Map<string, KeyValue>();
            const expected: RevisionEvents[] = [];
            let revision = start - 1;

            const commit = (events: WatchEvent[]) => {
              if (events.length === 0) return;
              expected.push({ revision, events });
              for (const event of events) {
                if (event.type === "put") model.set(event.kv.key, event.kv);
                else model.delete(event.kv.key);
              }
            };
            const modelPut = (key: string, v: string) => putEvent(key, v, revision, model.get(key));
            try {
              for (const o of ops) {
                const before = revision;
                revision = before + 1;
                let events: WatchEvent[] = [];
                if (o.kind === "put") {
                  const key = `${p}${KEYS[o.key]}`;
                  events = [modelPut(key, o.value)];
                  expect(await store.put(key, o.value)).toBe(revision);
                } else if (o.kind === "delete") {
                  const key = `${p}${KEYS[o.key]}`;
                  const prev = model.get(key);
                  events = prev ? [deleteEvent(prev, revision)] : [];
                  expect(await store.delete(key)).toBe(events.length);
                } else if (o.kind === "deletePrefix") {
                  const prefix = `${p}${PREFIXES[o.prefix]}`;
                  events = [...model.values()]
                    .filter((kv) => kv.key.startsWith(prefix))
                    .sort((a, b) => byteOrder(a.key, b.key))
                    .map((kv) => deleteEvent(kv, revision));
                  const result = await store.txn({
                    compare: [],
                    success: [{ type: "deletePrefix", prefix }],
                  });
                  expect(result.results).toEqual([{ type: "delete", deleted: events.length }]);
                } else {
                  for (const w of o.writes) {
                    const key = `${p}${KEYS[w.key]}`;
                    const prev = model.get(key);
                    if (w.value !== null) events.push(modelPut(key, w.value));
                    else if (prev) events.push(deleteEvent(prev, revision));
                  }
                  await store.txn({
                    compare: [],
                    success: o.writes.map((w) => {
                      const key = `${p}${KEYS[w.key]}`;
                      return w.value === null
                        ? { type: "delete" as const, key }
                        : { type: "put" as const, key, value: w.value };
                    }),
                  });
                }
                if (events.length === 0) revision = before;
                expect(await store.currentRevision()).toBe(revision);
                commit(events);
              }
              // A last write every watcher sees, so "nothing more arrives" is observable.
              revision += 1;
              const endKey = `${sub}~end`;
              commit([modelPut(endKey, "end")]);
              expect(await store.put(endKey, "end")).toBe(revision);

              const replay = collect(store, p, start);
              const replaySub = collect(store, sub, start);
              const watchers = [live, liveSub, replay, replaySub];
              await until(
                () => watchers.every((w) => w.lastRevision() >= revision || w.ends.length > 0),
                "every watcher to reach the last revision",
              );
              const onlySub = expected
                .map((g) => ({ ...g, events: g.events.filter((e) => e.kv.key.startsWith(sub)) }))
                .filter((g) => g.events.length > 0);
              expect(live.groups).toEqual(expected);
              expect(replay.groups).toEqual(expected);
              expect(liveSub.groups).toEqual(onlySub);
              expect(replaySub.groups).toEqual(onlySub);
              for (const w of watchers) expect(w.ends).toEqual([]);
              const range = await store.range(p);
              expect(range.kvs).toEqual(
                [...model.values()].sort((a, b) => byteOrder(a.key, b.key)),
              );
            } finally {
              live.watch.cancel();
              liveSub.watch.cancel();
            }
          }),
          { numRuns: 25 },
        );
      });

      it("REQ-012 watch resumed after cancel from the last revision + 1 has no gap and no duplicate", async () => {
        const p = uniquePrefix("resume");
        const start = (await store.currentRevision()) + 1;
        const reference = collect(store, p);
        const first = collect(store, p);
        for (let i = 0; i < 5; i++) await store.put(`${p}k${i % 2}`, `v${i}`);
        const mid = await store.currentRevision();
        await until(() => first.lastRevision() === mid, "the first five revisions");
        first.watch.cancel();
        const resumeFrom = first.lastRevision() + 1;
        for (let i = 5; i < 10; i++) {
          if (i === 7) await store.delete(`${p}k0`);
          else await store.put(`${p}k${i % 3}`, `v${i}`);
        }
        const second = collect(store, p, resumeFrom);
        for (let i = 10; i < 13; i++) await store.put(`${p}k${i % 2}`, `v${i}`);
        const last = await store.currentRevision();
        await until(
          () => second.lastRevision() === last && reference.lastRevision() === last,
          "the resumed watch to catch up",
        );
        second.watch.cancel();
        reference.watch.cancel();
        const stitched = [...first.groups, ...second.groups];
        expect(stitched).toEqual(reference.groups);
        expect(stitched.map((g) => g.revision)).toEqual(
          Array.from({ length: last - start + 1 }, (_, i) => start + i),
        );
      });

      it("REQ-012 a watch replaying history switches to live changes without gap or duplicate", async () => {
        const p = uniquePrefix("replay-live");
        const revisions: number[] = [];
        for (let i = 0; i < 30; i++) revisions.push(await store.put(`${p}k${i % 4}`, `${i}`));
        const watcher = collect(store, p, revisions[0]);
        // Written while the replay is still pending, before this test yields once.
        const concurrent = Array.from({ length: 10 }, (_, i) => store.put(`${p}c${i}`, `${i}`));
        revisions.push(...(await Promise.all(concurrent)));
        revisions.push(await store.put(`${p}last`, "x"));
        const last = Math.max(...revisions);
        await until(() => watcher.lastRevision() === last, "the last write");
        watcher.watch.cancel();
        expect(watcher.groups.map((g) => g.revision)).toEqual([...revisions].sort((a, b) => a - b));
        expect(watcher.ends).toEqual([]);
      });

      it("REQ-012 a watch from a future revision starts delivering at that revision", async () => {
        const p = uniquePrefix("future");
        const now = await store.currentRevision();
        const watcher = collect(store, p, now + 3);
        const revisions: number[] = [];
        for (let i = 0; i < 4; i++) revisions.push(await store.put(`${p}k`, `${i}`));
        await until(() => watcher.lastRevision() === revisions[3], "revision now + 4");
        watcher.watch.cancel();
        expect(watcher.groups.map((g) => g.revision)).toEqual([now + 3, now + 4]);
      });

      it("REQ-012 cancel stops delivery and does not call onEnd", async () => {
        const p = uniquePrefix("cancel");
        const watcher = collect(store, p);
        const observer = collect(store, p);
        await store.put(`${p}a`, "1");
        await until(() => watcher.groups.length === 1, "the first event");
        watcher.watch.cancel();
        const last = await store.put(`${p}a`, "2");
        await until(() => observer.lastRevision() === last, "the observer to see the second put");
        observer.watch.cancel();
        expect(watcher.groups).toHaveLength(1);
        expect(watcher.ends).toEqual([]);
      });

      it("REQ-012 a watch from a compacted revision ends with reason compacted", async () => {
        const p = uniquePrefix("compacted");
        const r1 = await store.put(`${p}a`, "1");
        const r2 = await store.put(`${p}a`, "2");
        const r3 = await store.put(`${p}a`, "3");
        await store.compact(r2);
        expect(await store.compactedRevision()).toBe(r2);
        for (const from of [r1, r2]) {
          const watcher = collect(store, p, from);
          await until(() => watcher.ends.length === 1, "the compacted end");
          expect(watcher.ends[0]).toMatchObject({ reason: "compacted", compactRevision: r2 });
          expect(watcher.ends[0]?.message).toBeTruthy();
          expect(watcher.groups).toEqual([]);
        }
        const remaining = collect(store, p, r2 + 1);
        await until(() => remaining.lastRevision() === r3, "the history kept after compaction");
        remaining.watch.cancel();
        expect(remaining.groups.map((g) => g.revision)).toEqual([r3]);
      });

      it("REQ-012 close ends open watches with reason closed", async () => {
        const p = uniquePrefix("close-watch");
        const watcher = collect(store, p);
        const revision = await store.put(`${p}a`, "1");
        await store.close();
        await until(() => watcher.ends.length === 1, "the watch to end");
        expect(watcher.ends[0]?.reason).toBe("closed");
        // Whatever arrived came before the end and in order; nothing after it.
        expect(watcher.groups.map((g) => g.revision)).toEqual(
          watcher.groups.length > 0 ? [revision] : [],
        );
      });
    });

    describe("compaction", () => {
      it("REQ-012 compact drops history but keeps current values", async () => {
        const p = uniquePrefix("compact");
        await store.put(`${p}a`, "1");
        const r2 = await store.put(`${p}a`, "2");
        const r3 = await store.put(`${p}b`, "1");
        await store.compact(r3);
        expect(await store.compactedRevision()).toBe(r3);
        expect(await store.get(`${p}a`)).toMatchObject({ value: "2", modRevision: r2 });
        expect((await store.range(p)).kvs).toHaveLength(2);
        // Compacting to an older revision again changes nothing; the future is refused.
        await store.compact(r2);
        expect(await store.compactedRevision()).toBe(r3);
        await expectStoreError(store.compact(r3 + 1_000), "invalid");
        expect(await store.put(`${p}c`, "1")).toBe(r3 + 1);
      });
    });

    describe("leases", () => {
      it("REQ-012 lease ids are unique positive integers", async () => {
        const leases = await Promise.all([1, 2, 3].map(() => store.grantLease(5_000)));
        try {
          const ids = leases.map((l) => l.id);
          for (const id of ids) expect(Number.isSafeInteger(id) && id > 0).toBe(true);
          expect(new Set(ids).size).toBe(3);
          expect(leases[0]?.ttlMs).toBeGreaterThanOrEqual(5_000);
        } finally {
          for (const lease of leases) await store.revokeLease(lease.id);
        }
      });

      it("REQ-012 an expired lease deletes its keys, with delete events", async () => {
        const p = uniquePrefix("lease-expiry");
        const clock = fixture?.clock;
        const ttlMs = clock ? 10_000 : REAL_LEASE_TTL_MS;
        const lease = await store.grantLease(ttlMs);
        await store.put(`${p}a`, "1", { lease: lease.id });
        await store.put(`${p}b`, "2", { lease: lease.id });
        await store.put(`${p}kept`, "3");
        expect((await store.get(`${p}a`))?.lease).toBe(lease.id);
        const watcher = collect(store, p);
        if (clock) {
          clock.advance(ttlMs / 2);
          expect(await store.get(`${p}a`)).toBeDefined();
          clock.advance(ttlMs * 2);
        }
        await until(
          async () => (await store.range(p)).kvs.length === 1,
          "the leased keys to be deleted",
          REAL_LEASE_WAIT_MS,
        );
        expect((await store.range(p)).kvs.map((kv) => kv.key)).toEqual([`${p}kept`]);
        await until(() => watcher.groups.flatMap((g) => g.events).length === 2, "delete events");
        watcher.watch.cancel();
        const events = watcher.groups.flatMap((g) => g.events);
        expect(events.map((e) => [e.type, e.kv.key]).sort()).toEqual([
          ["delete", `${p}a`],
          ["delete", `${p}b`],
        ]);
        expect(events.map((e) => e.prevKv?.lease)).toEqual([lease.id, lease.id]);
        await expectStoreError(store.keepAlive(lease.id), "leaseNotFound");
      });

      it("REQ-012 keepAlive extends a lease beyond its first deadline", async () => {
        const p = uniquePrefix("keepalive");
        const clock = fixture?.clock;
        const ttlMs = clock ? 10_000 : REAL_LEASE_TTL_MS;
        const lease = await store.grantLease(ttlMs);
        await store.put(`${p}a`, "1", { lease: lease.id });
        if (clock) {
          for (let i = 0; i < 5; i++) {
            clock.advance(ttlMs * 0.6);
            await store.keepAlive(lease.id);
          }
          // Three TTLs have passed since the grant.
          expect(await store.get(`${p}a`)).toBeDefined();
          clock.advance(ttlMs * 3);
          await until(async () => (await store.get(`${p}a`)) === undefined, "expiry");
        } else {
          const grantedAt = Date.now();
          await until(
            async () => {
              await store.keepAlive(lease.id);
              return Date.now() - grantedAt > ttlMs * 2;
            },
            "two TTLs of keepAlive",
            REAL_LEASE_WAIT_MS,
          );
          expect(await store.get(`${p}a`)).toBeDefined();
          await store.revokeLease(lease.id);
        }
      });

      it("REQ-012 revokeLease deletes its keys at one revision", async () => {
        const p = uniquePrefix("revoke");
        const lease = await store.grantLease(60_000);
        await store.put(`${p}a`, "1", { lease: lease.id });
        await store.put(`${p}b`, "2", { lease: lease.id });
        const before = await store.currentRevision();
        const watcher = collect(store, p);
        await store.revokeLease(lease.id);
        expect(await store.currentRevision()).toBe(before + 1);
        expect((await store.range(p)).kvs).toEqual([]);
        await until(() => watcher.lastRevision() === before + 1, "the revoke's deletes");
        watcher.watch.cancel();
        expect(watcher.groups).toHaveLength(1);
        expect(watcher.groups[0]?.events.map((e) => e.type)).toEqual(["delete", "delete"]);
        await expectStoreError(store.keepAlive(lease.id), "leaseNotFound");
        await expectStoreError(store.put(`${p}c`, "3", { lease: lease.id }), "leaseNotFound");
      });

      it("REQ-012 unknown leases fail with leaseNotFound", async () => {
        const p = uniquePrefix("unknown-lease");
        const unknown = 2 ** 40 + 17;
        await expectStoreError(store.put(`${p}a`, "1", { lease: unknown }), "leaseNotFound");
        await expectStoreError(store.keepAlive(unknown), "leaseNotFound");
        await expectStoreError(store.revokeLease(unknown), "leaseNotFound");
        expect(await store.get(`${p}a`)).toBeUndefined();
      });

      it("REQ-012 a put without a lease detaches the key from its lease", async () => {
        const p = uniquePrefix("detach");
        const lease = await store.grantLease(60_000);
        await store.put(`${p}a`, "1", { lease: lease.id });
        await store.put(`${p}a`, "2");
        expect((await store.get(`${p}a`))?.lease).toBe(0);
        await store.revokeLease(lease.id);
        expect((await store.get(`${p}a`))?.value).toBe("2");
      });
    });

    describe("lifecycle", () => {
      it("REQ-012 keys, revision, compaction point and leases survive reopen", async (context) => {
        if (!fixture?.reopen) {
          context.skip("this backend's fixture cannot reopen its store");
          return;
        }
        const p = uniquePrefix("reopen");
        const a = await store.put(`${p}a`, "1");
        await store.put(`${p}b`, "2");
        await store.compact(a);
        const lease = await store.grantLease(60_000);
        const leased = await store.put(`${p}leased`, "3", { lease: lease.id });
        await store.close();
        store = await fixture.reopen();
        expect(await store.currentRevision()).toBe(leased);
        expect(await store.compactedRevision()).toBe(a);
        expect((await store.range(p)).kvs.map((kv) => [kv.key, kv.value])).toEqual([
          [`${p}a`, "1"],
          [`${p}b`, "2"],
          [`${p}leased`, "3"],
        ]);
        await store.keepAlive(lease.id);
        const another = await store.grantLease(60_000);
        expect(another.id).not.toBe(lease.id);
        expect(await store.put(`${p}c`, "4")).toBe(leased + 1);
        // History after the compaction point is still there for watches.
        const watcher = collect(store, p, a + 1);
        await until(() => watcher.lastRevision() === leased + 1, "replay after reopen");
        watcher.watch.cancel();
        expect(watcher.groups.map((g) => g.revision)).toEqual([a + 1, leased, leased + 1]);
        await store.revokeLease(lease.id);
        expect(await store.get(`${p}leased`)).toBeUndefined();
        await store.revokeLease(another.id);
      });

      it("REQ-012 after close, calls fail with kind closed", async () => {
        await store.close();
        await expectStoreError(store.get("/contract/closed"), "closed");
        await expectStoreError(store.put("/contract/closed", "v"), "closed");
        await expectStoreError(store.range(""), "closed");
        await expectStoreError(store.txn({ compare: [], success: [] }), "closed");
        await expectStoreError(store.grantLease(1_000), "closed");
        await expectStoreError(store.currentRevision(), "closed");
        await expectStoreError(() => store.watch("", {}, { onEvents: () => undefined }), "closed");
        await store.close(); // closing twice is harmless
      });
    });
  });
}

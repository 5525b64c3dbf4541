import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CloudlessError, toConnectError } from "../../api/errors.js";
import { type Clock, ManualClock } from "../../lib/clock.js";
import { seededRng } from "../../lib/rng.js";
import {
  CompareAndSwapConflict,
  compareAndSwap,
  conflictBackoffMs,
  retryOnConflict,
} from "./compareAndSwap.js";
import { openSqliteStore, type SqliteStore } from "./sqliteStore.js";
import { StoreError, type TxnRequest } from "./store.js";

let dir: string;
let store: SqliteStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cloudless-cas-"));
  store = await openSqliteStore({ path: join(dir, "store.db"), clock: new ManualClock() });
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

/** A clock that runs every timer at once and remembers the waits asked for. */
function recordingClock(): Clock & { delays: number[] } {
  const delays: number[] = [];
  return {
    delays,
    nowMs: () => 0,
    setTimeout(fn, delayMs) {
      delays.push(delayMs);
      queueMicrotask(fn);
      return () => undefined;
    },
  };
}

/**
 * The store, with another writer that puts `key` between our read and our commit on the
 * first `times` commits (every commit when Infinity): a real lost race, on real SQLite.
 */
function withConflictingWriter(key: string, times: number) {
  const txns: TxnRequest[] = [];
  let interfered = 0;
  const racing = new Proxy(store, {
    get(target, property, receiver) {
      if (property === "txn") {
        return async (request: TxnRequest) => {
          txns.push(request);
          if (interfered < times) {
            interfered++;
            await target.put(key, `other-${interfered}`);
          }
          return target.txn(request);
        };
      }
      return Reflect.get(target, property, receiver);
    },
  });
  return { racing, txns };
}

const append = (suffix: string) => (current: { value: string } | undefined) => ({
  write: [{ type: "put" as const, key: "/k", value: `${current?.value ?? ""}${suffix}` }],
  result: `${current?.value ?? ""}${suffix}`,
});

describe("compareAndSwap (issue 13: one loop for read, decide, write if unchanged)", () => {
  it("writes what decide returns, guarded by the mod revision it read, and returns its result", async () => {
    await store.put("/k", "a");
    const { racing, txns } = withConflictingWriter("/k", 0);
    const clock = recordingClock();
    const result = await compareAndSwap(racing, "/k", append("b"), { clock, rng: seededRng(1) });
    expect(result).toBe("ab");
    expect((await store.get("/k"))?.value).toBe("ab");
    const read = 1; // the put above was revision 1
    expect(txns[0]?.compare).toEqual([
      { key: "/k", target: "modRevision", op: "==", modRevision: read },
    ]);
    expect(clock.delays).toEqual([]);
  });

  it("loses no update to a conflicting writer: decides again on what that writer wrote", async () => {
    await store.put("/k", "a");
    const { racing, txns } = withConflictingWriter("/k", 2);
    const clock = recordingClock();
    const seen: (string | undefined)[] = [];
    const result = await compareAndSwap(
      racing,
      "/k",
      (current, attempt) => {
        seen.push(`${attempt}:${current?.value}`);
        return append("+")(current);
      },
      { clock, rng: seededRng(7) },
    );
    expect(seen).toEqual(["1:a", "2:other-1", "3:other-2"]);
    expect(result).toBe("other-2+");
    expect((await store.get("/k"))?.value).toBe("other-2+");
    expect(txns).toHaveLength(3);
    // Two waits, jittered from the injected rng under caps of 5 and 10 ms.
    const rng = seededRng(7);
    expect(clock.delays).toEqual([conflictBackoffMs(1, rng), conflictBackoffMs(2, rng)]);
    expect(clock.delays[0]).toBeLessThanOrEqual(5);
    expect(clock.delays[1]).toBeLessThanOrEqual(10);
  });

  it("after the last attempt fails with Aborted naming the key, having written nothing", async () => {
    await store.put("/nodes/a", "a");
    const { racing, txns } = withConflictingWriter("/nodes/a", Number.POSITIVE_INFINITY);
    const clock = recordingClock();
    const failure = await compareAndSwap(
      racing,
      "/nodes/a",
      () => ({
        write: [{ type: "put" as const, key: "/nodes/a", value: "mine" }],
        result: "mine",
      }),
      { clock, rng: seededRng(3), maxAttempts: 4 },
    ).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(CompareAndSwapConflict);
    expect(failure).toBeInstanceOf(StoreError);
    expect(failure).toMatchObject({ kind: "conflict", key: '"/nodes/a"', attempts: 4 });
    expect(txns).toHaveLength(4);
    expect(clock.delays).toHaveLength(3);
    expect((await store.get("/nodes/a"))?.value).toBe("other-4");
    const wire = toConnectError(failure);
    expect(wire.code).toBe(Code.Aborted);
    expect(wire.rawMessage).toBe(
      '"/nodes/a" was changed by another writer during each of 4 attempts; try again',
    );
  });

  it("uses the caller's conflict message when given one", async () => {
    await store.put("/k", "a");
    const { racing } = withConflictingWriter("/k", Number.POSITIVE_INFINITY);
    await expect(
      compareAndSwap(racing, "/k", append("x"), {
        clock: recordingClock(),
        rng: seededRng(1),
        maxAttempts: 2,
        conflictMessage: 'node "a" is being changed concurrently; try again',
      }),
    ).rejects.toThrow(/^node "a" is being changed concurrently; try again$/);
  });

  it("creates an absent key only while it is still absent (a concurrent create wins)", async () => {
    const { racing, txns } = withConflictingWriter("/new", 1);
    const result = await compareAndSwap(
      racing,
      "/new",
      (current) =>
        current
          ? { result: `kept ${current.value}` }
          : { write: [{ type: "put" as const, key: "/new", value: "created" }], result: "created" },
      { clock: recordingClock(), rng: seededRng(1) },
    );
    expect(txns[0]?.compare[0]).toMatchObject({ target: "modRevision", modRevision: 0 });
    expect(result).toBe("kept other-1");
    expect((await store.get("/new"))?.value).toBe("other-1");
  });

  it("writes nothing when decide says so, and passes extra compares and ops through", async () => {
    await store.put("/k", "a");
    await store.put("/guard", "g");
    const { racing, txns } = withConflictingWriter("/k", 0);
    const options = { clock: recordingClock(), rng: seededRng(1) };
    expect(await compareAndSwap(racing, "/k", () => ({ result: "as is" }), options)).toBe("as is");
    expect(txns).toHaveLength(0);

    // An extra compare that fails is a lost race too: decided again, then given up.
    const failure = await compareAndSwap(
      racing,
      "/k",
      (current) => ({
        write: [
          { type: "put" as const, key: "/k", value: "b" },
          { type: "put" as const, key: "/history/2", value: current?.value ?? "" },
        ],
        compare: [{ key: "/guard", target: "value" as const, op: "==" as const, value: "other" }],
        result: "b",
      }),
      { ...options, maxAttempts: 2 },
    ).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(CompareAndSwapConflict);
    expect(await store.get("/history/2")).toBeUndefined();
    const written = await compareAndSwap(
      racing,
      "/k",
      (current) => ({
        write: [
          { type: "put" as const, key: "/k", value: "b" },
          { type: "put" as const, key: "/history/2", value: current?.value ?? "" },
        ],
        compare: [{ key: "/guard", target: "value" as const, op: "==" as const, value: "g" }],
        result: "b",
      }),
      options,
    );
    expect(written).toBe("b");
    expect((await store.get("/history/2"))?.value).toBe("a");
  });

  it("ends at once when decide throws, without retrying", async () => {
    let calls = 0;
    await expect(
      compareAndSwap(
        store,
        "/nodes/gone",
        (current) => {
          calls++;
          if (!current) throw CloudlessError.notFound('node "gone" not found');
          return { result: current.value };
        },
        { clock: recordingClock(), rng: seededRng(1) },
      ),
    ).rejects.toMatchObject({ code: "NotFound" });
    expect(calls).toBe(1);
  });

  it("waits on the injected clock: nothing is retried until it advances", async () => {
    await store.put("/k", "a");
    const { racing, txns } = withConflictingWriter("/k", 1);
    const clock = new ManualClock();
    const done = compareAndSwap(racing, "/k", append("b"), { clock, rng: seededRng(1) });
    await waitUntil(() => txns.length === 1);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(txns).toHaveLength(1);
    clock.advance(5);
    expect(await done).toBe("other-1b");
    expect(txns).toHaveLength(2);
  });
});

describe("retryOnConflict and the back-off", () => {
  it("refuses attempts outside 1..100", async () => {
    const options = { clock: recordingClock(), rng: seededRng(1) };
    for (const maxAttempts of [0, -1, 1.5, 101]) {
      await expect(
        retryOnConflict("x", async () => ({ committed: true, result: 1 }), {
          ...options,
          maxAttempts,
        }),
      ).rejects.toMatchObject({ kind: "invalid" });
    }
  });

  it("jitters under a cap that doubles per failure up to the maximum", () => {
    const top = { next: () => 0.999_999, bytes: () => Buffer.alloc(0), uuid: () => "" };
    expect([1, 2, 3, 4, 5, 6, 7, 8, 30].map((n) => conflictBackoffMs(n, top))).toEqual([
      5, 10, 20, 40, 80, 160, 200, 200, 200,
    ]);
    const bottom = { ...top, next: () => 0 };
    expect(conflictBackoffMs(5, bottom)).toBe(0);
    const rng = seededRng(42);
    const waits = Array.from({ length: 200 }, () => conflictBackoffMs(3, rng));
    expect(Math.min(...waits)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...waits)).toBeLessThanOrEqual(20);
    expect(new Set(waits).size).toBeGreaterThan(10);
  });
});

async function waitUntil(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  if (!condition()) throw new Error("condition not met within 1 s");
}

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { openSqliteStore } from "../store/sqliteStore.js";
import type { Store } from "../store/store.js";
import { type ClusterEvent, EventLog } from "./eventLog.js";

describe("event log", () => {
  let dir: string;
  let store: Store;
  let clock: ManualClock;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-events-"));
    clock = new ManualClock();
    store = await openSqliteStore({ path: path.join(dir, "store.db"), clock });
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const event = (n: number) => ({
    type: n % 2 === 0 ? "NodeReady" : "NodeLost",
    category: "membership" as const,
    subject: `node/n${n}`,
    reason: "Test",
    message: `event ${n}`,
  });

  it("REQ-071 lists in order with filters and a limit that keeps the newest", async () => {
    for (let n = 0; n < 10; n++) {
      await events().record(event(n));
      clock.advance(1000);
    }
    const all = await events().list();
    expect(all.map((e) => e.message)).toEqual([...Array(10).keys()].map((n) => `event ${n}`));
    expect((await events().list({ types: ["NodeLost"] })).length).toBe(5);
    expect((await events().list({ limit: 3 })).map((e) => e.message)).toEqual([
      "event 7",
      "event 8",
      "event 9",
    ]);
    expect((await events().list({ sinceMs: clock.nowMs() - 2500 })).length).toBe(2);
    expect((await events().list({ afterId: all[7]?.id })).length).toBe(2);
  });

  it("REQ-071 a watcher resumes after an id without gaps", async () => {
    const log = events();
    for (let n = 0; n < 3; n++) await log.record(event(n));
    const first = await log.list();
    const seen: ClusterEvent[] = [];
    const watch = log.watch(
      { afterId: first[0]?.id },
      (e) => seen.push(e),
      () => undefined,
    );
    for (let n = 3; n < 6; n++) await log.record(event(n));
    await waitUntil(() => seen.length === 5);
    watch.cancel();
    expect(seen.map((e) => e.message)).toEqual([
      "event 1",
      "event 2",
      "event 3",
      "event 4",
      "event 5",
    ]);
  });

  it("REQ-071 retention bounds the number and the age of events", async () => {
    const log = new EventLog(store, clock, { maxEvents: 5, maxAgeMs: 10_000 });
    for (let n = 0; n < 8; n++) {
      await log.record(event(n));
      clock.advance(1000);
    }
    expect(await log.trim()).toBe(3);
    expect((await log.list()).map((e) => e.message)[0]).toBe("event 3");
    // Now 16.5 s after the first event: events 3–6 are older than 10 s, event 7 is not.
    clock.advance(8_500);
    expect(await log.trim()).toBe(4);
    expect((await log.list()).map((e) => e.message)).toEqual(["event 7"]);
  });

  it("REQ-071 retention deletes in a few commits and lets the event loop run between them", async () => {
    const log = new EventLog(store, clock, { maxEvents: 50, maxAgeMs: 3_600_000 });
    // Written in one commit (recording 650 events one by one would take 650 fsyncs).
    const batch = Array.from({ length: 650 }, (_, n) => {
      const timeMs = clock.nowMs() + n;
      return {
        type: "put" as const,
        key: `/events/${String(timeMs).padStart(15, "0")}-000000-abcdef`,
        value: JSON.stringify({ ...event(n), timeMs, actor: "test", attributes: {} }),
      };
    });
    await store.txn({ compare: [], success: batch });
    let commits = 0;
    const txn = store.txn.bind(store);
    store.txn = (request) => {
      commits++;
      return txn(request);
    };
    // A SQLite commit is synchronous: without a turn of the event loop between commits,
    // this callback (standing for a heartbeat's I/O) would only run after the whole trim.
    let ranDuringTrim = false;
    let trimDone = false;
    setImmediate(() => {
      ranDuringTrim = !trimDone;
    });
    expect(await log.trim()).toBe(600);
    trimDone = true;
    expect(commits).toBe(2);
    expect(ranDuringTrim).toBe(true);
    expect((await log.list()).map((e) => e.message)[0]).toBe("event 600");
  });

  it("REQ-071 events recorded together share one commit, keep their order, and resume by position", async () => {
    const log = events();
    await log.record(event(0));
    await log.flush();
    const commits: number[] = [];
    const txn = store.txn.bind(store);
    store.txn = (request) => {
      commits.push(request.success.length);
      return txn(request);
    };
    await Promise.all([1, 2, 3].map((n) => log.record(event(n))));
    expect(commits).toEqual([3]);
    const listed = await log.list();
    expect(listed.map((e) => e.message)).toEqual(["event 0", "event 1", "event 2", "event 3"]);
    const [first, second, third, fourth] = listed.map((e) => e.id);
    const revision = Number(second);
    expect([first, second, third, fourth]).toEqual([
      String(revision - 1),
      String(revision),
      `${revision}.0001`,
      `${revision}.0002`,
    ]);
    expect((await log.list({ afterId: `${revision}.0001` })).map((e) => e.message)).toEqual([
      "event 3",
    ]);
    const seen: string[] = [];
    const watch = log.watch(
      { afterId: String(revision) },
      (e) => seen.push(e.id),
      () => undefined,
    );
    await log.record(event(4));
    await waitUntil(() => seen.length === 3);
    watch.cancel();
    expect(seen.slice(0, 2)).toEqual([`${revision}.0001`, `${revision}.0002`]);
    await expect(log.list({ afterId: "12x" })).rejects.toThrow(/after_id "12x": not an event id/);
  });

  function events(): EventLog {
    return new EventLog(store, clock);
  }
});

async function waitUntil(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { openSqliteStore } from "../store/sqliteStore.js";
import type { Compare, Store } from "../store/store.js";
import { LeaderElection, leaderKey } from "./leaderElection.js";

async function settle(rounds = 20): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe("leader election", () => {
  let dir: string;
  let store: Store;
  let clock: ManualClock;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-leader-"));
    clock = new ManualClock();
    store = await openSqliteStore({
      path: path.join(dir, "store.db"),
      clock,
      leaseCheckIntervalMs: 100,
    });
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  function candidate(id: string, log: string[]) {
    let fence: Compare | undefined;
    const election = new LeaderElection({
      store,
      clock,
      id,
      url: `https://${id}:7443`,
      ttlMs: 3000,
      onElected: async (f) => {
        fence = f;
        log.push(`${id} elected`);
      },
      onDemoted: async () => {
        log.push(`${id} demoted`);
      },
    });
    return { election, fence: () => fence };
  }

  it("NFR-R1 exactly one of several coordinators leads", async () => {
    const log: string[] = [];
    const a = candidate("a", log);
    const b = candidate("b", log);
    await a.election.start();
    await b.election.start();
    expect(a.election.isLeader).toBe(true);
    expect(b.election.isLeader).toBe(false);
    expect(b.election.leader?.id).toBe("a");
    for (let t = 0; t < 10_000; t += 100) {
      clock.advance(100);
      await settle();
    }
    // Renewals keep the role where it is.
    expect(a.election.isLeader).toBe(true);
    expect(b.election.isLeader).toBe(false);
    await a.election.stop();
    await b.election.stop();
  });

  it("NFR-R1 F2 when the leader stops renewing, another takes over within the lease TTL", async () => {
    const log: string[] = [];
    const a = candidate("a", log);
    const b = candidate("b", log);
    await a.election.start();
    await b.election.start();
    // The leader dies without a word: its timers stop.
    (a.election as unknown as { stopped: boolean }).stopped = true;
    let tookOverAfterMs = 0;
    for (let t = 0; t <= 6_000 && !b.election.isLeader; t += 100) {
      clock.advance(100);
      await settle();
      tookOverAfterMs = t + 100;
    }
    expect(b.election.isLeader).toBe(true);
    expect(tookOverAfterMs).toBeLessThanOrEqual(3000 + 1000 + 200);
    await b.election.stop();
  });

  it("NFR-R1 a leader whose renewals hang steps down before its lease could have run out", async () => {
    const log: string[] = [];
    const a = candidate("a", log);
    await a.election.start();
    expect(a.election.isLeader).toBe(true);
    // The store stops answering (etcd unreachable): renewals neither succeed nor fail.
    const realKeepAlive = store.keepAlive.bind(store);
    store.keepAlive = () => new Promise<void>(() => undefined);
    let steppedDownAfterMs = 0;
    for (let t = 0; t <= 6_000 && a.election.isLeader; t += 100) {
      clock.advance(100);
      await settle();
      steppedDownAfterMs = t + 100;
    }
    expect(a.election.isLeader).toBe(false);
    expect(log).toEqual(["a elected", "a demoted"]);
    // Before the TTL (3 s): no second leader can have been elected while it still acted.
    expect(steppedDownAfterMs).toBeLessThan(3000);
    store.keepAlive = realKeepAlive;
    await a.election.stop();
  });

  it("NFR-R1 a stopped leader hands over at once, and the old fence no longer matches", async () => {
    const log: string[] = [];
    const a = candidate("a", log);
    const b = candidate("b", log);
    await a.election.start();
    await b.election.start();
    const oldFence = a.fence() as Compare;
    await a.election.stop();
    await settle();
    clock.advance(1);
    await settle();
    expect(b.election.isLeader).toBe(true);
    // A write fenced by the old leader fails; one fenced by the new leader succeeds.
    const stale = await store.txn({
      compare: [oldFence],
      success: [{ type: "put", key: "/x", value: "old" }],
    });
    expect(stale.succeeded).toBe(false);
    const fresh = await store.txn({
      compare: [b.fence() as Compare],
      success: [{ type: "put", key: "/x", value: "new" }],
    });
    expect(fresh.succeeded).toBe(true);
    expect(log).toEqual(["a elected", "a demoted", "b elected"]);
    expect(JSON.parse((await store.get(leaderKey))?.value ?? "{}").id).toBe("b");
    await b.election.stop();
  });
});

import { describe, expect, it, vi } from "vitest";
import {
  REPLAY_CHUNK_REVISIONS,
  type RevisionEvents,
  SqliteWatchers,
  type SqliteWatchHost,
} from "./sqliteWatch.js";
import type { WatchEnd, WatchEvent, WatchHandlers } from "./store.js";

/** A store's log in memory: one put per revision. */
class FakeLog implements SqliteWatchHost {
  readonly path = "/data/store.db";
  readonly reads: [number, number][] = [];
  private readonly keys = new Map<number, string>();
  revision = 0;
  compacted = 0;
  closed = false;
  failReads: Error | undefined;

  constructor(readonly maxPendingRevisions = 10_000) {}

  compactRevision(): number {
    return this.compacted;
  }

  isClosed(): boolean {
    return this.closed;
  }

  /** Commits a put of `key` at the next revision and returns its events. */
  commit(key: string): { revision: number; events: WatchEvent[] } {
    this.revision += 1;
    this.keys.set(this.revision, key);
    return { revision: this.revision, events: [eventAt(key, this.revision)] };
  }

  readLog(prefix: string, fromRevision: number, toRevision: number): RevisionEvents[] {
    this.reads.push([fromRevision, toRevision]);
    if (this.failReads) throw this.failReads;
    const groups: RevisionEvents[] = [];
    for (let revision = fromRevision; revision <= toRevision; revision++) {
      const key = this.keys.get(revision);
      if (key?.startsWith(prefix)) groups.push({ revision, events: [eventAt(key, revision)] });
    }
    return groups;
  }
}

function eventAt(key: string, revision: number): WatchEvent {
  return {
    type: "put",
    kv: { key, value: "v", createRevision: revision, modRevision: revision, version: 1, lease: 0 },
  };
}

/** Records what a watch delivered and how it ended. */
function recorder(onEach?: (revision: number) => void) {
  const seen: number[] = [];
  const ends: WatchEnd[] = [];
  const handlers: WatchHandlers = {
    onEvents: (_events, revision) => {
      seen.push(revision);
      onEach?.(revision);
    },
    onEnd: (end) => ends.push(end),
  };
  return { seen, ends, handlers };
}

describe("sqlite store watches", () => {
  it("REQ-012 replay reads the log in bounded chunks, then hands over to live changes with neither a gap nor an overlap", async () => {
    const log = new FakeLog();
    const watchers = new SqliteWatchers(log);
    const expected: number[] = [];
    for (let i = 0; i < 1_200; i++) {
      const { revision } = log.commit(i % 3 === 0 ? `/other/${i}` : `/mine/${i}`);
      if (i % 3 !== 0) expected.push(revision);
    }
    const current = log.revision;
    // Writes that commit while the replay is under way, each handed to notify() as the
    // store does on commit; matching ones must arrive once, after the replay.
    const { seen, ends, handlers } = recorder((revision) => {
      if (revision === 600 || revision === 1_100) {
        for (const key of ["/mine/live", "/other/live"]) {
          const committed = log.commit(key);
          if (key.startsWith("/mine/")) expected.push(committed.revision);
          watchers.notify(committed.revision, committed.events);
        }
      }
    });
    watchers.open("/mine/", 1, current, handlers);
    await vi.waitFor(() => expect(seen).toHaveLength(expected.length));
    expect(seen).toEqual(expected);
    expect(log.reads).toEqual([
      [1, REPLAY_CHUNK_REVISIONS],
      [REPLAY_CHUNK_REVISIONS + 1, 2 * REPLAY_CHUNK_REVISIONS],
      [2 * REPLAY_CHUNK_REVISIONS + 1, current],
    ]);
    // After the hand-over, changes come from notify() alone.
    const later = log.commit("/mine/later");
    watchers.notify(later.revision, later.events);
    await vi.waitFor(() => expect(seen.at(-1)).toBe(later.revision));
    expect(log.reads).toHaveLength(3);
    expect(ends).toEqual([]);
  });

  it("REQ-012 a watch from a future revision skips the live changes before it", async () => {
    const log = new FakeLog();
    const watchers = new SqliteWatchers(log);
    const { seen, handlers } = recorder();
    watchers.open("", 3, log.revision, handlers);
    for (let i = 0; i < 4; i++) {
      const { revision, events } = log.commit(`/k${i}`);
      watchers.notify(revision, events);
    }
    await vi.waitFor(() => expect(seen).toEqual([3, 4]));
    expect(log.reads).toEqual([]);
  });

  it("REQ-012 a watcher that falls too far behind is ended and told where to resume", async () => {
    const log = new FakeLog(3);
    const watchers = new SqliteWatchers(log);
    const { seen, ends, handlers } = recorder();
    watchers.open("", undefined, log.revision, handlers);
    // Five commits in one tick: the watcher has no chance to drain in between.
    for (let i = 0; i < 5; i++) {
      const { revision, events } = log.commit(`/k${i}`);
      watchers.notify(revision, events);
    }
    await vi.waitFor(() => expect(ends).toHaveLength(1));
    expect(ends[0]).toEqual({
      reason: "closed",
      message:
        'watch on prefix "" fell more than 3 revisions behind and was closed; ' +
        "watch again with fromRevision 1",
    });
    expect(seen).toEqual([]);
    expect(watchers.size).toBe(0);
  });

  it("REQ-012 closing hands a live watcher the committed changes it holds, then ends both watchers with where to resume", async () => {
    const log = new FakeLog();
    const watchers = new SqliteWatchers(log);
    for (let i = 0; i < 10; i++) log.commit(`/old/${i}`);
    const live = recorder();
    const replaying = recorder();
    watchers.open("", undefined, log.revision, live.handlers);
    watchers.open("/old/", 4, log.revision, replaying.handlers);
    const committed = log.commit("/new");
    watchers.notify(committed.revision, committed.events);
    // The store closes in the same tick, before any delivery ran.
    watchers.closeAll();
    log.closed = true;
    await vi.waitFor(() => expect(live.ends).toHaveLength(1));
    await vi.waitFor(() => expect(replaying.ends).toHaveLength(1));
    expect(live.seen).toEqual([11]);
    expect(live.ends[0]?.message).toBe(
      "store /data/store.db closed; watch again with fromRevision 12 once a store is open",
    );
    expect(replaying.seen).toEqual([]);
    expect(replaying.ends[0]?.message).toContain("fromRevision 4 ");
    expect(log.reads).toEqual([]);
  });

  it("REQ-012 history compacted under a replay, or before the start, ends the watch as compacted", async () => {
    const log = new FakeLog();
    const watchers = new SqliteWatchers(log);
    for (let i = 0; i < 2 * REPLAY_CHUNK_REVISIONS; i++) log.commit(`/k${i}`);
    const { seen, ends, handlers } = recorder((revision) => {
      if (revision === REPLAY_CHUNK_REVISIONS) log.compacted = REPLAY_CHUNK_REVISIONS + 10;
    });
    watchers.open("", 1, log.revision, handlers);
    await vi.waitFor(() => expect(ends).toHaveLength(1));
    expect(seen).toHaveLength(REPLAY_CHUNK_REVISIONS);
    expect(ends[0]).toMatchObject({ reason: "compacted", compactRevision: 522 });
    expect(ends[0]?.message).toContain(`from revision ${REPLAY_CHUNK_REVISIONS + 1}:`);

    const early = recorder();
    watchers.open("", 522, log.revision, early.handlers);
    await vi.waitFor(() => expect(early.ends).toHaveLength(1));
    expect(early.ends[0]).toMatchObject({ reason: "compacted", compactRevision: 522 });
    expect(watchers.size).toBe(0);
  });

  it("REQ-012 a failed log read or a throwing handler ends only that watch, with where to resume", async () => {
    const log = new FakeLog();
    const watchers = new SqliteWatchers(log);
    for (let i = 0; i < 5; i++) log.commit(`/k${i}`);
    log.failReads = new Error("disk I/O error");
    const failedRead = recorder();
    watchers.open("", 2, log.revision, failedRead.handlers);
    await vi.waitFor(() => expect(failedRead.ends).toHaveLength(1));
    expect(failedRead.ends[0]?.message).toBe(
      "watch replay failed (disk I/O error); watch again with fromRevision 2",
    );
    log.failReads = undefined;

    const throwing: WatchEnd[] = [];
    watchers.open("", undefined, log.revision, {
      onEvents: () => {
        throw new Error("handler bug");
      },
      onEnd: (end) => throwing.push(end),
    });
    const healthy = recorder();
    watchers.open("", undefined, log.revision, healthy.handlers);
    const committed = log.commit("/k5");
    watchers.notify(committed.revision, committed.events);
    await vi.waitFor(() => expect(throwing).toHaveLength(1));
    await vi.waitFor(() => expect(healthy.seen).toEqual([6]));
    expect(throwing[0]?.message).toContain("handler bug");
    expect(throwing[0]?.message).toContain("fromRevision 6");
    expect(watchers.size).toBe(1);
  });

  it("REQ-012 a cancelled watch hears nothing more, not even an end", async () => {
    const log = new FakeLog();
    const watchers = new SqliteWatchers(log);
    for (let i = 0; i < 3; i++) log.commit(`/k${i}`);
    const { seen, ends, handlers } = recorder();
    const watch = watchers.open("", 1, log.revision, handlers);
    watch.cancel();
    const committed = log.commit("/k3");
    watchers.notify(committed.revision, committed.events);
    watchers.closeAll();
    // Let every queued microtask and replay step run.
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    expect(seen).toEqual([]);
    expect(ends).toEqual([]);
    expect(watchers.size).toBe(0);
  });
});

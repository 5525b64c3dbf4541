/**
 * Watches on the embedded SQLite store (REQ-012): every watcher of one store, each first
 * replaying the log in chunks and then taking the changes the store hands over as they
 * commit. One process owns the store, so live changes come from memory, not the file.
 *
 * Delivery always runs later, never inside the writer's call stack; a watcher that falls
 * too far behind, whose handler throws, or whose store closes is ended with the revision
 * to resume from.
 */

import type { Watch, WatchEnd, WatchEvent, WatchHandlers } from "./store.js";

/** Revisions read from the log per replay step; bounds memory and event-loop stalls. */
export const REPLAY_CHUNK_REVISIONS = 512;

/** The changes of one revision, as delivered to one watcher. */
export interface RevisionEvents {
  revision: number;
  events: WatchEvent[];
}

/** What the watches need from their store. */
export interface SqliteWatchHost {
  /** The store file, for messages. */
  readonly path: string;
  /** Revisions a watcher may have pending before it is closed. */
  readonly maxPendingRevisions: number;
  /** History up to this revision is gone from the log. */
  compactRevision(): number;
  /** The store is closed: nothing more can be read from the log. */
  isClosed(): boolean;
  /** The log between two revisions (inclusive), filtered by prefix, grouped by revision. */
  readLog(prefix: string, fromRevision: number, toRevision: number): RevisionEvents[];
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

/** The watcher registry of one SQLite store. */
export class SqliteWatchers {
  private readonly watchers = new Set<Watcher>();

  constructor(private readonly host: SqliteWatchHost) {}

  /** Watchers not yet ended or cancelled. */
  get size(): number {
    return this.watchers.size;
  }

  /**
   * Starts a watch of `prefix`. `current` is the store's revision at this moment: the
   * log replays up to it, and every later revision arrives through notify(). Call this
   * synchronously with reading `current` (no write in between), so the switch from
   * replay to live has neither a gap nor an overlap.
   *
   * @param requested the first revision asked for (an integer), or undefined for
   *   "changes after `current`".
   */
  open(
    prefix: string,
    requested: number | undefined,
    current: number,
    handlers: WatchHandlers,
  ): Watch {
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
    if (from <= this.host.compactRevision()) {
      this.endWatch(watcher, this.compactedEnd(watcher, from));
      return { cancel };
    }
    this.watchers.add(watcher);
    if (watcher.replayNext <= watcher.replayEnd) this.schedule(watcher, false);
    return { cancel };
  }

  /** Hands the changes of a committed revision to every watcher that wants them. */
  notify(revision: number, events: WatchEvent[]): void {
    for (const watcher of this.watchers) {
      if (revision < watcher.liveFrom) continue;
      const matched =
        watcher.prefix === "" ? events : events.filter((e) => e.kv.key.startsWith(watcher.prefix));
      if (matched.length === 0) continue;
      if (watcher.pending.length >= this.host.maxPendingRevisions) {
        this.endWatch(watcher, {
          reason: "closed",
          message:
            `watch on prefix ${JSON.stringify(watcher.prefix)} fell more than ` +
            `${this.host.maxPendingRevisions} revisions behind and was closed; ` +
            `watch again with fromRevision ${watcher.resumeFrom}`,
        });
        continue;
      }
      watcher.pending.push({ revision, events: matched });
      this.schedule(watcher, false);
    }
  }

  /**
   * The store is closing (call before the database closes): a watcher still replaying
   * ends now; one that is live first gets the committed changes already in memory.
   */
  closeAll(): void {
    for (const watcher of this.watchers) {
      if (watcher.replayNext > watcher.replayEnd) {
        // Changes already in memory were committed; hand them over before ending.
        watcher.closing = true;
        this.schedule(watcher, false);
      } else {
        this.endWatch(watcher, this.closedEnd(watcher));
      }
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
      if (this.host.isClosed()) {
        this.endWatch(watcher, this.closedEnd(watcher));
        return;
      }
      if (watcher.replayNext <= this.host.compactRevision()) {
        this.endWatch(watcher, this.compactedEnd(watcher, watcher.replayNext));
        return;
      }
      const to = Math.min(watcher.replayEnd, watcher.replayNext + REPLAY_CHUNK_REVISIONS - 1);
      let groups: RevisionEvents[];
      try {
        groups = this.host.readLog(watcher.prefix, watcher.replayNext, to);
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
    const compactRevision = this.host.compactRevision();
    return {
      reason: "compacted",
      compactRevision,
      message:
        `cannot watch ${JSON.stringify(watcher.prefix)} from revision ${from}: history up to ` +
        `revision ${compactRevision} was compacted; read the current state with range() ` +
        "and watch from its revision + 1",
    };
  }

  private closedEnd(watcher: Watcher): WatchEnd {
    return {
      reason: "closed",
      message:
        `store ${this.host.path} closed; watch again with fromRevision ${watcher.resumeFrom} ` +
        "once a store is open",
    };
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

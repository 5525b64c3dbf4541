import { z } from "zod";
import { CloudlessError } from "../../api/errors.js";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import { type Rng, systemRng } from "../../lib/rng.js";
import type { Store, Watch } from "../store/store.js";
import { deleteInChunks, txnOpsFor, yieldToEventLoop } from "../store/txnBatches.js";

/**
 * The cluster's event stream (REQ-071), kept in the store under /events/. An
 * event's id is the store revision that created it (with its position, when one write
 * held several), so listing and watching share one order and a watcher resumes after an
 * id without gaps.
 */
export type EventCategory = "membership" | "scheduling" | "security" | "operations";

export interface ClusterEvent {
  id: string;
  timeMs: number;
  type: string;
  category: EventCategory;
  subject: string;
  reason: string;
  message: string;
  actor: string;
  attributes: Record<string, string>;
}

export type NewEvent = Omit<ClusterEvent, "id" | "timeMs" | "attributes" | "actor"> & {
  actor?: string;
  attributes?: Record<string, string>;
  /** When it happened, if earlier than its recording (default: now). */
  timeMs?: number;
};

export const eventKeyPrefix = "/events/";

export interface EventRetention {
  maxEvents: number;
  maxAgeMs: number;
}

export const defaultEventRetention: EventRetention = {
  maxEvents: 10_000,
  maxAgeMs: 7 * 24 * 3600 * 1000,
};

export interface EventQuery {
  sinceMs?: number;
  types?: string[];
  subject?: string;
  afterId?: string;
  limit?: number;
}

type StoredEvent = Omit<ClusterEvent, "id"> & {
  /** Position in the transaction that wrote it, when that wrote several (absent: 0). */
  batchIndex?: number;
};

/**
 * Where an event sits in the log: the store revision that wrote it and its position in
 * that write. Its id is "<revision>" for the first event of a write and
 * "<revision>.<index as 4 digits>" for the others (a write holds at most 500), so ids
 * also order as decimal numbers, as they did when each event had a revision of its own.
 */
interface EventPosition {
  revision: number;
  index: number;
}

export function parseEventId(id: string): EventPosition {
  const match = /^(\d+)(?:\.(\d+))?$/.exec(id);
  if (!match) {
    throw CloudlessError.invalid(
      `after_id "${id}": not an event id; use an id from an event list (e.g. 1234 or 1234.0005)`,
    );
  }
  return { revision: Number(match[1]), index: Number(match[2] ?? 0) };
}

function eventId({ revision, index }: EventPosition): string {
  return index === 0 ? String(revision) : `${revision}.${String(index).padStart(4, "0")}`;
}

function isAfter(event: EventPosition, position: EventPosition): boolean {
  return (
    event.revision > position.revision ||
    (event.revision === position.revision && event.index > position.index)
  );
}

/** Events waiting to be written at most; past it the oldest are refused (their callers log). */
const maxQueuedEvents = 50_000;

interface QueuedEvent {
  key: string;
  stored: StoredEvent;
  settle: (error?: Error) => void;
}

export class EventLog {
  private counter = 0;
  private queued: QueuedEvent[] = [];
  private writing: Promise<void> | undefined;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly retention: EventRetention = defaultEventRetention,
    private readonly rng: Rng = systemRng,
  ) {}

  /**
   * Records an event; resolves once it is written. Events recorded while a write is under
   * way share the next transaction (up to txnOpsFor(store) each): a commit per event cost
   * an fsync each, and the 200 ReplicasPlaced events of one failover pass took seconds
   * before the pass could tell the agents (ADR 0025).
   */
  record(event: NewEvent): Promise<void> {
    const nowMs = this.clock.nowMs();
    const timeMs = event.timeMs === undefined ? nowMs : Math.min(event.timeMs, nowMs);
    const stored: StoredEvent = {
      timeMs,
      type: event.type,
      category: event.category,
      subject: event.subject,
      reason: event.reason,
      message: event.message,
      actor: event.actor ?? "coordinator",
      attributes: event.attributes ?? {},
    };
    // Time first so trimming by age can walk keys in order; the suffix keeps keys
    // unique across coordinators without coordination.
    this.counter = (this.counter + 1) % 1_000_000;
    const key = `${eventKeyPrefix}${String(timeMs).padStart(15, "0")}-${String(this.counter).padStart(6, "0")}-${this.rng.bytes(3).toString("hex")}`;
    return new Promise<void>((resolve, reject) => {
      this.queued.push({ key, stored, settle: (error) => (error ? reject(error) : resolve()) });
      if (this.queued.length > maxQueuedEvents) {
        const refused = new Error("event queue overflowed: the store is not keeping up");
        for (const item of this.queued.splice(0, this.queued.length - maxQueuedEvents)) {
          item.settle(refused);
        }
      }
      this.kick();
    });
  }

  /** Waits until every event recorded so far is written (or failed). */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
  }

  private kick(): void {
    if (this.writing) return;
    this.writing = (async () => {
      // Start after the current turn's synchronous code: events recorded in one go (a
      // pass's ReplicasPlaced events) then share the first commit too.
      await Promise.resolve();
      const perTxn = txnOpsFor(this.store);
      let batches = 0;
      while (this.queued.length > 0) {
        // A SQLite commit is synchronous: heartbeats get in between two.
        if (batches++ > 0) await yieldToEventLoop();
        const batch = this.queued.splice(0, perTxn);
        try {
          await this.store.txn({
            compare: [],
            success: batch.map(({ key, stored }, index) => ({
              type: "put" as const,
              key,
              value: JSON.stringify(index === 0 ? stored : { ...stored, batchIndex: index }),
            })),
          });
          for (const item of batch) item.settle();
        } catch (error) {
          const failure = error instanceof Error ? error : new Error(String(error));
          for (const item of batch) item.settle(failure);
        }
      }
    })().finally(() => {
      this.writing = undefined;
      if (this.queued.length > 0) this.kick();
    });
  }

  async list(query: EventQuery = {}): Promise<ClusterEvent[]> {
    const after = query.afterId ? parseEventId(query.afterId) : { revision: 0, index: -1 };
    const result = await this.store.range(eventKeyPrefix);
    let events = result.kvs
      .map((kv) => toEvent(kv.createRevision, kv.key, kv.value))
      .filter((event) => isAfter(event.position, after) && matches(event.event, query));
    events.sort(
      (a, b) => a.position.revision - b.position.revision || a.position.index - b.position.index,
    );
    const limit = query.limit && query.limit > 0 ? query.limit : 1000;
    if (events.length > limit) events = events.slice(events.length - limit);
    return events.map((e) => e.event);
  }

  /**
   * Calls onEvent for every event after `afterId`, in order, then live ones. Ends
   * with onEnd when the watch cannot continue (e.g. the position was compacted).
   */
  watch(
    query: Omit<EventQuery, "limit">,
    onEvent: (event: ClusterEvent) => void,
    onEnd: (message: string) => void,
  ): Watch {
    const after = query.afterId ? parseEventId(query.afterId) : undefined;
    // From the revision itself: later events of the same write may follow the one given.
    const fromRevision = after?.revision;
    return this.store.watch(eventKeyPrefix, fromRevision === undefined ? {} : { fromRevision }, {
      onEvents: (changes) => {
        const events = changes
          .filter((change) => change.type === "put" && change.kv.version === 1)
          .map((change) => toEvent(change.kv.createRevision, change.kv.key, change.kv.value))
          .filter((e) => after === undefined || isAfter(e.position, after));
        events.sort(
          (a, b) =>
            a.position.revision - b.position.revision || a.position.index - b.position.index,
        );
        for (const { event } of events) if (matches(event, query)) onEvent(event);
      },
      onEnd: (end) => onEnd(end.message),
    });
  }

  /** Deletes events beyond the retention bounds; returns how many were removed. */
  async trim(): Promise<number> {
    const result = await this.store.range(eventKeyPrefix, { keysOnly: true });
    const keys = result.kvs.map((kv) => kv.key);
    const cutoffMs = this.clock.nowMs() - this.retention.maxAgeMs;
    const excess = Math.max(0, keys.length - this.retention.maxEvents);
    const expired: string[] = [];
    for (const [index, key] of keys.entries()) {
      const timeMs = Number(key.slice(eventKeyPrefix.length, eventKeyPrefix.length + 15));
      if (index >= excess && timeMs >= cutoffMs) break;
      expired.push(key);
    }
    // Many deletes per commit, and I/O between commits: a commit per event held the
    // coordinator's event loop for up to 5.6 s after a burst of events at 2,000 nodes,
    // long enough for every node to look silent (ADR 0025).
    return deleteInChunks(this.store, expired);
  }
}

/** A stored event as decoded where it leaves the store (lib/recordCodec.ts). */
const storedEventSchema: z.ZodType<StoredEvent> = z.looseObject({
  timeMs: z.number(),
  type: z.string(),
  category: z.enum(["membership", "scheduling", "security", "operations"]),
  subject: z.string(),
  reason: z.string(),
  message: z.string(),
  actor: z.string(),
  attributes: z.record(z.string(), z.string()),
  batchIndex: z.number().int().nonnegative().optional(),
});

function toEvent(
  revision: number,
  key: string,
  value: string,
): { event: ClusterEvent; position: EventPosition } {
  const { batchIndex, ...stored } = decodeRecord(storedEventSchema, key, value);
  const index = batchIndex ?? 0;
  return {
    event: { id: eventId({ revision, index }), ...stored },
    position: { revision, index },
  };
}

function matches(event: ClusterEvent, query: Omit<EventQuery, "limit">): boolean {
  if (query.sinceMs !== undefined && event.timeMs < query.sinceMs) return false;
  if (query.types && query.types.length > 0 && !query.types.includes(event.type)) return false;
  if (query.subject && event.subject !== query.subject) return false;
  return true;
}

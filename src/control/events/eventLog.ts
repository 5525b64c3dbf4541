import { randomBytes } from "node:crypto";
import type { Clock } from "../../lib/clock.js";
import { deleteInChunks } from "../controllers/txnBatches.js";
import type { Store, Watch } from "../store/store.js";

/**
 * The cluster's event stream (REQ-071), kept in the store under /events/. An
 * event's id is the store revision that created it, so listing and watching share
 * one order and a watcher resumes after an id without gaps.
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

type StoredEvent = Omit<ClusterEvent, "id">;

export class EventLog {
  private counter = 0;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly retention: EventRetention = defaultEventRetention,
  ) {}

  async record(event: NewEvent): Promise<void> {
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
    const key = `${eventKeyPrefix}${String(timeMs).padStart(15, "0")}-${String(this.counter).padStart(6, "0")}-${randomBytes(3).toString("hex")}`;
    await this.store.put(key, JSON.stringify(stored));
  }

  async list(query: EventQuery = {}): Promise<ClusterEvent[]> {
    const result = await this.store.range(eventKeyPrefix);
    const afterRevision = query.afterId ? Number(query.afterId) : 0;
    let events = result.kvs
      .filter((kv) => kv.createRevision > afterRevision)
      .map((kv) => toEvent(kv.createRevision, kv.value))
      .filter((event) => matches(event, query));
    events.sort((a, b) => Number(a.id) - Number(b.id));
    const limit = query.limit && query.limit > 0 ? query.limit : 1000;
    if (events.length > limit) events = events.slice(events.length - limit);
    return events;
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
    const fromRevision = query.afterId ? Number(query.afterId) + 1 : undefined;
    return this.store.watch(eventKeyPrefix, fromRevision === undefined ? {} : { fromRevision }, {
      onEvents: (changes) => {
        for (const change of changes) {
          if (change.type !== "put" || change.kv.version !== 1) continue;
          const event = toEvent(change.kv.createRevision, change.kv.value);
          if (matches(event, query)) onEvent(event);
        }
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

function toEvent(revision: number, value: string): ClusterEvent {
  return { id: String(revision), ...(JSON.parse(value) as StoredEvent) };
}

function matches(event: ClusterEvent, query: Omit<EventQuery, "limit">): boolean {
  if (query.sinceMs !== undefined && event.timeMs < query.sinceMs) return false;
  if (query.types && query.types.length > 0 && !query.types.includes(event.type)) return false;
  if (query.subject && event.subject !== query.subject) return false;
  return true;
}

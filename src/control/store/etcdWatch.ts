/**
 * One store watch on etcd: one gRPC Watch stream, one etcd watcher (ADR 0014).
 *
 * The stream never resumes by itself after it has delivered anything: a lost stream ends
 * the watch with reason "closed" and the revision to resume from, and the caller watches
 * again. Before etcd has confirmed the watcher nothing was delivered, so a stream that
 * fails that early is opened again on another member (same start revision, no gap).
 */

import type { IDuplexStream, IEvent, IWatchRequest, IWatchResponse } from "etcd3";
import type { Clock } from "../../lib/clock.js";
import type { EtcdKeyspace } from "./etcdKeyspace.js";
import type { KeyValue, WatchEnd, WatchEvent, WatchHandlers } from "./store.js";

export type WatchStream = IDuplexStream<IWatchRequest, IWatchResponse>;

/** What a watch needs from its store. */
export interface WatchHost {
  readonly keyspace: EtcdKeyspace;
  readonly clock: Clock;
  readonly requestTimeoutMs: number;
  /** Opens a Watch stream on some member. */
  openWatchStream(): Promise<WatchStream>;
  /** Opening attempts before a watch that etcd never confirmed ends as closed. */
  readonly createAttempts: number;
  /** A watch learned etcd's compaction revision. */
  noteCompacted(revision: number): void;
  /** The watch ended or was cancelled; the store stops tracking it. */
  forget(watch: EtcdWatch): void;
  describeEndpoints(): string;
}

export class EtcdWatch {
  private stream: WatchStream | undefined;
  private created = false;
  private done = false;
  private cancelled = false;
  private attempts = 0;
  private resumeFrom: number;
  private cancelCreateTimer: (() => void) | undefined;

  /** The revision etcd is asked to start from. */
  private readonly startRevision: number;

  /**
   * @param from the first revision to deliver (≥ 1).
   * @param replay whether the caller asked for a start revision. Then etcd is asked to
   *   start one revision earlier, so that its own compaction check ("start < compaction
   *   revision") refuses exactly the starts the contract calls compacted ("start ≤
   *   compacted revision"); events of that earlier revision are dropped here. A watch of
   *   "changes from now on" starts at `from` itself: a start past etcd's current revision
   *   is served at once, where an older one waits for etcd's 100 ms catch-up loop.
   */
  constructor(
    private readonly host: WatchHost,
    readonly prefix: string,
    from: number,
    replay: boolean,
    private readonly handlers: WatchHandlers,
  ) {
    this.resumeFrom = from;
    this.startRevision = replay ? Math.max(1, from - 1) : from;
  }

  start(): void {
    if (this.done) return;
    this.attempts += 1;
    const attempt = this.attempts;
    this.cancelCreateTimer?.();
    this.cancelCreateTimer = this.host.clock.setTimeout(() => {
      if (this.done || this.created || attempt !== this.attempts) return;
      this.failed(
        this.stream,
        `etcd did not confirm the watch within ${this.host.requestTimeoutMs} ms`,
      );
    }, this.host.requestTimeoutMs);
    this.host.openWatchStream().then(
      (stream) => this.attach(stream, attempt),
      (err: unknown) => {
        if (attempt === this.attempts) this.failed(undefined, errorMessage(err));
      },
    );
  }

  cancel(): void {
    if (this.done) return;
    this.cancelled = true;
    this.finish();
  }

  /** Ends the watch with `end` (onEnd runs later, never inside the caller's stack). */
  end(end: WatchEnd): void {
    if (this.done) return;
    this.finish();
    queueMicrotask(() => {
      if (!this.cancelled) this.handlers.onEnd?.(end);
    });
  }

  /** The message for a watch ended by closing its store. */
  closedByStore(): WatchEnd {
    return {
      reason: "closed",
      message:
        `the etcd store (${this.host.describeEndpoints()}) was closed; watch ` +
        `${JSON.stringify(this.prefix)} again with fromRevision ${this.resumeFrom} once a store ` +
        "is open",
    };
  }

  private attach(stream: WatchStream, attempt: number): void {
    // An error listener first: a stream without one would crash the process on cancel.
    stream.on("error", (err: Error) => {
      if (this.stream === stream) this.failed(stream, errorMessage(err));
    });
    if (this.done || attempt !== this.attempts) {
      stream.cancel();
      return;
    }
    this.stream = stream;
    stream.on("data", (response: IWatchResponse) => {
      if (this.stream === stream) this.onResponse(response);
    });
    stream.on("end", () => {
      if (this.stream === stream) this.failed(stream, "the etcd member ended the watch stream");
    });
    const range = this.host.keyspace.prefixRange(this.prefix);
    stream.write({
      create_request: {
        ...range,
        start_revision: String(this.startRevision),
        prev_kv: true,
      },
    });
  }

  private onResponse(response: IWatchResponse): void {
    if (this.done) return;
    if (response.created && !this.created) {
      this.created = true;
      this.cancelCreateTimer?.();
      this.cancelCreateTimer = undefined;
    }
    if (response.canceled) {
      const compactRevision = Number(response.compact_revision);
      if (compactRevision > 0) {
        this.host.noteCompacted(compactRevision);
        this.end({
          reason: "compacted",
          compactRevision,
          message:
            `cannot watch ${JSON.stringify(this.prefix)} from revision ${this.resumeFrom}: etcd ` +
            `compacted its history up to revision ${compactRevision}; read the current state ` +
            "with range() and watch from its revision + 1",
        });
      } else {
        this.end({
          reason: "closed",
          message:
            `etcd cancelled the watch on ${JSON.stringify(this.prefix)} ` +
            `(${response.cancel_reason || "no reason given"}); watch again with fromRevision ` +
            `${this.resumeFrom}`,
        });
      }
      return;
    }
    // etcd sends whole revisions in order; hand them over one revision per call.
    let group: WatchEvent[] = [];
    let groupRevision = 0;
    for (const event of response.events ?? []) {
      const revision = Number(event.kv.mod_revision);
      if (revision < this.resumeFrom) continue;
      if (revision !== groupRevision && group.length > 0) {
        if (!this.deliver(group, groupRevision)) return;
        group = [];
      }
      groupRevision = revision;
      group.push(this.toEvent(event, revision));
    }
    if (group.length > 0) this.deliver(group, groupRevision);
  }

  private deliver(events: WatchEvent[], revision: number): boolean {
    try {
      this.handlers.onEvents(events, revision);
    } catch (err) {
      // A throwing handler must not take the store down; end its watch instead and say
      // where to pick up (this revision again, since its handling failed).
      this.end({
        reason: "closed",
        message:
          `watch handler failed at revision ${revision} (${errorMessage(err)}); watch again ` +
          `with fromRevision ${revision}`,
      });
      return false;
    }
    this.resumeFrom = revision + 1;
    return !this.done;
  }

  private toEvent(event: IEvent, revision: number): WatchEvent {
    const keyspace = this.host.keyspace;
    const prevKv = event.prev_kv ? keyspace.keyValue(event.prev_kv) : undefined;
    const type = event.type === "Delete" || String(event.type) === "DELETE" ? "delete" : "put";
    const kv: KeyValue =
      type === "delete"
        ? {
            key: keyspace.storeKey(event.kv.key),
            value: "",
            createRevision: 0,
            modRevision: revision,
            version: 0,
            lease: 0,
          }
        : keyspace.keyValue(event.kv);
    return prevKv ? { type, kv, prevKv } : { type, kv };
  }

  /** The stream failed: open it again if etcd never confirmed it, else end as closed. */
  private failed(stream: WatchStream | undefined, detail: string): void {
    if (this.done) return;
    if (!this.created && this.attempts < this.host.createAttempts) {
      this.stream = undefined;
      stream?.cancel();
      this.start();
      return;
    }
    this.end({
      reason: "closed",
      message:
        `the watch on ${JSON.stringify(this.prefix)} lost its etcd stream ` +
        `(${this.host.describeEndpoints()}: ${detail}); watch again with fromRevision ` +
        `${this.resumeFrom}`,
    });
  }

  private finish(): void {
    this.done = true;
    this.cancelCreateTimer?.();
    this.cancelCreateTimer = undefined;
    const stream = this.stream;
    this.stream = undefined;
    stream?.cancel();
    this.host.forget(this);
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

import type { Clock } from "../../lib/clock.js";
import type { Logger } from "../../observe/logger.js";
import type { EventLog } from "../events/eventLog.js";
import type {
  NodeCapacityRecord,
  NodeInfoRecord,
  NodeRecord,
  TaintRecord,
} from "../nodes/nodeRecord.js";
import type { NodeRegistry } from "../nodes/nodeRegistry.js";
import {
  defaultMembershipConfig,
  grantedRestartGraceMs,
  type MembershipConfig,
  MembershipTracker,
  type NodeStatus,
  type Transition,
} from "./membershipTracker.js";

export interface HelloReport {
  capacity: NodeCapacityRecord;
  info: NodeInfoRecord;
  region: string;
  zone: string;
  labels: Record<string, string>;
  taints: TaintRecord[];
  address: string;
  /** The restart grace the agent announced (ms; 0 = none); capped before it is kept. */
  restartGraceMs: number;
}

const eventTypeFor: Record<NodeStatus, string> = {
  Ready: "NodeReady",
  NotReady: "NodeNotReady",
  Lost: "NodeLost",
  Left: "NodeLeft",
};

/**
 * Feeds heartbeat-stream events into the pure MembershipTracker and records what
 * it decides: node status in the store and an event per transition. Heartbeats
 * themselves never touch the store.
 */
/** Writes taken per batch: node records go in transactions of at most 100. */
const maxWritesPerBatch = 500;
/**
 * Writes waiting at most. Each node has a handful of states, so this is only reached if
 * the store stops answering; the oldest transitions are then dropped (logged) and the
 * next tick or hello decides again.
 */
const maxQueuedWrites = 50_000;
/** A tick later than its interval plus this is taken for an event-loop stall. */
const stallToleranceMs = 400;

/** A change to one node's record: a hello's report or a transition (with its event). */
interface QueuedWrite {
  node: string;
  change: (node: NodeRecord) => void;
  transition?: Transition;
  /** Told the node's record as written, or why it could not be. */
  settle?: (result: NodeRecord | Error) => void;
}

export class MembershipService {
  readonly tracker: MembershipTracker;
  private readonly openStreams = new Map<string, number>();
  private stopTicker: (() => void) | undefined;
  /** Changes not yet written, in the order they were decided. */
  private queued: QueuedWrite[] = [];
  /** The writer draining `queued`, while it runs. */
  private draining: Promise<void> | undefined;
  /** Only the leader judges nodes; started on election, stopped on demotion. */
  private stopped = true;

  constructor(
    private readonly nodes: NodeRegistry,
    private readonly events: EventLog,
    private readonly clock: Clock,
    private readonly logger: Logger,
    readonly config: MembershipConfig = defaultMembershipConfig,
    private readonly tickMs = 100,
  ) {
    this.tracker = new MembershipTracker(config);
  }

  /** Loads known nodes and starts judging them (after the startup grace period). */
  async start(): Promise<void> {
    if (!this.stopped) return;
    await this.flush();
    this.stopped = false;
    // A new term starts from the store: every known node gets the startup grace period.
    this.tracker.clear();
    const now = this.clock.nowMs();
    for (const node of await this.nodes.list()) {
      this.tracker.restore(node.name, node.status, now, {
        ...(node.restartGraceMs !== undefined ? { restartGraceMs: node.restartGraceMs } : {}),
        ...(node.lostDeadlineMs !== undefined ? { lostDeadlineMs: node.lostDeadlineMs } : {}),
      });
    }
    let lastTickMs = this.clock.nowMs();
    let skipped = false;
    const loop = () => {
      if (this.stopped) return;
      const nowMs = this.clock.nowMs();
      // A tick this late means the event loop was blocked: heartbeats that arrived
      // meanwhile still wait in the sockets, and timers run before I/O. Judging now
      // would blame the nodes for the coordinator's stall; the next tick, after that
      // I/O, judges with what they sent. Only one tick is skipped: under sustained lag
      // every tick is late, and judging must go on.
      if (!skipped && nowMs - lastTickMs > this.tickMs + stallToleranceMs) {
        skipped = true;
      } else {
        skipped = false;
        // Never rejects (write failures are logged where they happen); nothing to await here.
        void this.apply(this.tracker.tick(nowMs));
      }
      lastTickMs = nowMs;
      this.stopTicker = this.clock.setTimeout(loop, this.tickMs);
    };
    this.stopTicker = this.clock.setTimeout(loop, this.tickMs);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopTicker?.();
    this.stopTicker = undefined;
    await this.flush();
  }

  /**
   * A stream said hello: update what the node reports and mark it Ready. Hellos arriving
   * together (a fleet joining, or reconnecting after a coordinator restart) share commits.
   */
  async hello(name: string, report: HelloReport): Promise<NodeRecord> {
    this.openStreams.set(name, (this.openStreams.get(name) ?? 0) + 1);
    const restartGraceMs = grantedRestartGraceMs(this.config, report.restartGraceMs);
    const result = await new Promise<NodeRecord | Error>((settle) =>
      this.enqueue([
        {
          node: name,
          change: (node) => {
            node.capacity = report.capacity;
            node.info = report.info;
            node.region = report.region || node.region;
            node.zone = report.zone || node.zone;
            node.labels = Object.keys(report.labels).length > 0 ? report.labels : node.labels;
            node.taints = report.taints;
            node.address = report.address;
            if (restartGraceMs > 0) node.restartGraceMs = restartGraceMs;
            else delete node.restartGraceMs;
          },
          settle,
        },
      ]),
    );
    if (result instanceof Error) throw result;
    await this.apply(this.tracker.onHello(name, this.clock.nowMs(), restartGraceMs));
    return result;
  }

  beat(name: string): void {
    void this.apply(this.tracker.onBeat(name, this.clock.nowMs()));
  }

  /** The agent said Leave; backWithinMs > 0: it is restarting (see MembershipTracker.onLeave). */
  async leave(name: string, backWithinMs = 0): Promise<void> {
    await this.apply(this.tracker.onLeave(name, this.clock.nowMs(), backWithinMs));
  }

  /** A stream ended. Suspicion only when it was the node's last open stream. */
  streamClosed(name: string): void {
    const open = (this.openStreams.get(name) ?? 1) - 1;
    if (open > 0) {
      this.openStreams.set(name, open);
      return;
    }
    this.openStreams.delete(name);
    void this.apply(this.tracker.onStreamClosed(name, this.clock.nowMs()));
  }

  forget(name: string): void {
    this.tracker.remove(name);
    this.openStreams.delete(name);
  }

  /** Waits until every recorded transition has been written, with its event. */
  async flush(): Promise<void> {
    while (this.draining) await this.draining;
    await this.events.flush();
  }

  /** Queues the transitions' writes; resolves once they are written (or failed). */
  private apply(transitions: Transition[]): Promise<void> {
    // A demoted coordinator records nothing: the new leader judges from its own term.
    if (transitions.length === 0 || this.stopped) return Promise.resolve();
    const written = transitions.map(
      (transition) =>
        new Promise<void>((resolve) =>
          this.enqueue([
            {
              node: transition.node,
              change: (node) => {
                node.status = transition.to;
                node.statusReason = transition.reason;
                node.lastTransitionAtMs = transition.atMs;
                if (transition.lostDeadlineMs !== undefined) {
                  node.lostDeadlineMs = transition.lostDeadlineMs;
                } else {
                  delete node.lostDeadlineMs;
                }
              },
              transition,
              settle: () => resolve(),
            },
          ]),
        ),
    );
    return Promise.all(written).then(() => undefined);
  }

  private enqueue(writes: QueuedWrite[]): void {
    this.queued.push(...writes);
    for (const write of this.dropOldest(this.queued, maxQueuedWrites)) {
      write.settle?.(new Error("membership write queue overflowed"));
    }
    this.kick();
  }

  /**
   * One writer drains the queue in order, so transitions land in the order they were
   * decided; those decided while a batch is written (a tick's worth, a burst of hellos)
   * share the next batch.
   */
  private kick(): void {
    if (this.draining) return;
    this.draining = (async () => {
      while (this.queued.length > 0) {
        await this.record(this.queued.splice(0, maxWritesPerBatch));
      }
    })().finally(() => {
      this.draining = undefined;
      if (this.queued.length > 0) this.kick();
    });
  }

  /**
   * Writes a batch: each node's record once, with every change queued for it, in a few
   * transactions; then one event per transition, in order.
   */
  private async record(writes: QueuedWrite[]): Promise<void> {
    const changes = new Map<string, ((node: NodeRecord) => void)[]>();
    for (const write of writes) {
      const list = changes.get(write.node) ?? [];
      list.push(write.change);
      changes.set(write.node, list);
    }
    let written: Map<string, NodeRecord | Error>;
    try {
      written = await this.nodes.updateMany(
        new Map(
          [...changes].map(([name, list]) => [
            name,
            (node: NodeRecord) => {
              for (const change of list) change(node);
              return node;
            },
          ]),
        ),
      );
    } catch (error) {
      // The store failed: nothing of this batch is known to be written; the tracker
      // decides again on the next tick or hello.
      this.logger.warn({ err: error, writes: writes.length }, "could not record node changes");
      const failure = error instanceof Error ? error : new Error(String(error));
      for (const write of writes) write.settle?.(failure);
      return;
    }
    for (const write of writes) {
      const result = written.get(write.node) ?? new Error(`node "${write.node}" was not written`);
      const transition = write.transition;
      if (transition && result instanceof Error) {
        // A node deleted meanwhile has nothing left to update.
        this.logger.warn({ err: result, node: transition.node }, "could not record transition");
        write.settle?.(result);
      } else if (transition) {
        this.logger.info(
          { node: transition.node, from: transition.from, to: transition.to },
          `node ${transition.node} is ${transition.to}: ${transition.message}`,
        );
        // Not awaited: the next batch of node records — what the controllers act on, e.g.
        // a lost node's replacements — never waits for this batch's events (ADR 0023).
        // The event log writes events recorded together in one commit (ADR 0025).
        void this.events
          .record({
            type: transition.reason === "Joined" ? "NodeJoined" : eventTypeFor[transition.to],
            category: "membership",
            subject: `node/${transition.node}`,
            reason: transition.reason,
            message: transition.message,
            attributes: {
              from: transition.from ?? "",
              to: transition.to,
              // Why a NotReady node still holds its replicas, and until when (ADR 0031).
              ...(transition.lostDeadlineMs !== undefined
                ? { lostDeadline: new Date(transition.lostDeadlineMs).toISOString() }
                : {}),
            },
            timeMs: transition.atMs,
          })
          .catch((error: unknown) =>
            this.logger.warn(
              { err: error, subject: `node/${transition.node}` },
              "could not record event",
            ),
          )
          .then(() => write.settle?.(result));
      } else {
        // Hellos learn their record now; transitions once their event is written too.
        write.settle?.(result);
      }
    }
  }

  /** Bounds a queue: removes (and logs) the oldest items past `max`, and returns them. */
  private dropOldest<T>(queue: T[], max: number): T[] {
    if (queue.length <= max) return [];
    const dropped = queue.splice(0, queue.length - max);
    this.logger.warn(
      { dropped: dropped.length },
      "membership writes dropped: the store is not keeping up",
    );
    return dropped;
  }
}

import type { Clock } from "../../lib/clock.js";
import type { Logger } from "../../observe/logger.js";
import type { EventLog, NewEvent } from "../events/eventLog.js";
import type {
  NodeCapacityRecord,
  NodeInfoRecord,
  NodeRecord,
  TaintRecord,
} from "../nodes/nodeRecord.js";
import type { NodeRegistry } from "../nodes/nodeRegistry.js";
import {
  defaultMembershipConfig,
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
/** Transitions written per batch: node records go in transactions of at most 100. */
const maxTransitionsPerBatch = 500;
/**
 * Transitions waiting to be written at most. Each node has a handful of states, so this
 * is only reached if the store stops answering; the oldest are then dropped (logged) and
 * the next tick or hello decides again.
 */
const maxQueuedTransitions = 50_000;

export class MembershipService {
  readonly tracker: MembershipTracker;
  private readonly openStreams = new Map<string, number>();
  private stopTicker: (() => void) | undefined;
  /** Decided transitions not yet written, in decision order. */
  private queued: Transition[] = [];
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
      this.tracker.restore(node.name, node.status, now);
    }
    const loop = () => {
      if (this.stopped) return;
      this.apply(this.tracker.tick(this.clock.nowMs()));
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

  /** A stream said hello: update what the node reports and mark it Ready. */
  async hello(name: string, report: HelloReport): Promise<NodeRecord> {
    this.openStreams.set(name, (this.openStreams.get(name) ?? 0) + 1);
    const record = await this.nodes.update(name, (node) => {
      node.capacity = report.capacity;
      node.info = report.info;
      node.region = report.region || node.region;
      node.zone = report.zone || node.zone;
      node.labels = Object.keys(report.labels).length > 0 ? report.labels : node.labels;
      node.taints = report.taints;
      node.address = report.address;
      return node;
    });
    this.apply(this.tracker.onHello(name, this.clock.nowMs()));
    await this.flush();
    return record;
  }

  beat(name: string): void {
    this.apply(this.tracker.onBeat(name, this.clock.nowMs()));
  }

  async leave(name: string): Promise<void> {
    this.apply(this.tracker.onLeave(name, this.clock.nowMs()));
    await this.flush();
  }

  /** A stream ended. Suspicion only when it was the node's last open stream. */
  streamClosed(name: string): void {
    const open = (this.openStreams.get(name) ?? 1) - 1;
    if (open > 0) {
      this.openStreams.set(name, open);
      return;
    }
    this.openStreams.delete(name);
    this.apply(this.tracker.onStreamClosed(name, this.clock.nowMs()));
  }

  forget(name: string): void {
    this.tracker.remove(name);
    this.openStreams.delete(name);
  }

  /** Waits until every recorded transition has been written. */
  async flush(): Promise<void> {
    while (this.draining) await this.draining;
  }

  private apply(transitions: Transition[]): void {
    // A demoted coordinator records nothing: the new leader judges from its own term.
    if (transitions.length === 0 || this.stopped) return;
    this.queued.push(...transitions);
    if (this.queued.length > maxQueuedTransitions) {
      const dropped = this.queued.splice(0, this.queued.length - maxQueuedTransitions);
      this.logger.warn(
        { dropped: dropped.length },
        "membership transitions dropped: the store is not keeping up",
      );
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
        await this.record(this.queued.splice(0, maxTransitionsPerBatch));
      }
    })().finally(() => {
      this.draining = undefined;
      if (this.queued.length > 0) this.kick();
    });
  }

  /**
   * Writes a batch: each node's record once, with its latest transition, in a few
   * transactions; then one event per transition, in order.
   */
  private async record(transitions: Transition[]): Promise<void> {
    const latest = new Map<string, Transition>();
    for (const transition of transitions) latest.set(transition.node, transition);
    let written: Map<string, NodeRecord | Error>;
    try {
      written = await this.nodes.updateMany(
        new Map(
          [...latest].map(([name, transition]) => [
            name,
            (node: NodeRecord) => {
              node.status = transition.to;
              node.statusReason = transition.reason;
              node.lastTransitionAtMs = transition.atMs;
              return node;
            },
          ]),
        ),
      );
    } catch (error) {
      // The store failed: nothing of this batch is known to be written; the tracker
      // decides again on the next tick or hello.
      this.logger.warn(
        { err: error, transitions: transitions.length },
        "could not record transitions",
      );
      return;
    }
    const events: NewEvent[] = [];
    for (const transition of transitions) {
      const result = written.get(transition.node);
      if (result instanceof Error) {
        // A node deleted meanwhile has nothing left to update.
        this.logger.warn({ err: result, node: transition.node }, "could not record transition");
        continue;
      }
      events.push({
        type: transition.reason === "Joined" ? "NodeJoined" : eventTypeFor[transition.to],
        category: "membership",
        subject: `node/${transition.node}`,
        reason: transition.reason,
        message: transition.message,
        attributes: { from: transition.from ?? "", to: transition.to },
      });
      this.logger.info(
        { node: transition.node, from: transition.from, to: transition.to },
        `node ${transition.node} is ${transition.to}: ${transition.message}`,
      );
    }
    // Each event is its own revision (an event's id is the revision that created it).
    for (const event of events) {
      await this.events
        .record(event)
        .catch((error: unknown) =>
          this.logger.warn({ err: error, subject: event.subject }, "could not record event"),
        );
    }
  }
}

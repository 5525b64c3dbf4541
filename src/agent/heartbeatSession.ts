/**
 * The agent's heartbeat stream to the coordinator: one session (hello, beats, leave, the
 * coordinator's answers) and the loop that keeps one session up, rotating through the
 * coordinators with back-off (the decider is client/endpoints.ts's EndpointRotation).
 */
import { create } from "@bufbuild/protobuf";
import { fromConnectError } from "../api/errors.js";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
} from "../api/gen/cloudless/v1/node_pb.js";
import { type EndpointRotation, leaderHint, type SessionOutcome } from "../client/endpoints.js";
import type { createClients } from "../client/transport.js";
import type { Clock } from "../lib/clock.js";
import type { Logger } from "../observe/logger.js";

export type CoordinatorClients = ReturnType<typeof createClients>;

/** How long a leave waits for the coordinator's acknowledgement. */
export const leaveAckTimeoutMs = 2_000;

export interface StreamSession {
  abort: AbortController;
  done: Promise<void>;
  firstAck: Promise<boolean>;
  /** How the session ended (valid once done has resolved). */
  outcome(): SessionOutcome;
  /**
   * Says Leave and waits (bounded) for its ack, or until `hurry` aborts; backWithinMs > 0
   * announces a restart.
   */
  leave(backWithinMs: number, hurry?: AbortSignal): Promise<void>;
  send(message: HeartbeatRequest): void;
}

/** The beat interval the coordinator asks for, shared by the sessions of one agent. */
export interface BeatInterval {
  ms: number;
}

export interface HeartbeatSessionOptions {
  url: string;
  clients: CoordinatorClients;
  clock: Clock;
  logger: Logger;
  /** Deadline for the stream's first answer; the stream itself has none (it lives for hours). */
  connectTimeoutMs: number;
  hello: HeartbeatRequest;
  interval: BeatInterval;
  /** The beat with sequence number `seq` (usage sampled now). */
  beat(seq: bigint): HeartbeatRequest;
  /** The first answer (the hello's ack) arrived; `send` queues on this stream. */
  onConnected(response: HeartbeatResponse, send: (message: HeartbeatRequest) => void): void;
  /** Every answer, the first included, after onConnected. */
  onMessage(response: HeartbeatResponse): void;
  /** The coordinator refused this node (deleted, certificate refused): the agent must stop. */
  onRefused(message: string): void;
}

/** Opens one heartbeat stream; it ends on abort, on a failure or when the coordinator ends it. */
export function openHeartbeatSession(options: HeartbeatSessionOptions): StreamSession {
  const { url, clients, clock, logger, interval } = options;
  const abort = new AbortController();
  let connectedAtMs: number | undefined;
  let endedAtMs: number | undefined;
  let notLeader: { leaderUrl?: string } | undefined;
  const connectTimeoutMs = options.connectTimeoutMs;
  const cancelConnectDeadline = clock.setTimeout(() => {
    if (connectedAtMs !== undefined) return;
    logger.warn(
      { url, timeoutMs: connectTimeoutMs },
      "coordinator did not answer the heartbeat stream in time; trying the next",
    );
    abort.abort();
  }, connectTimeoutMs);
  const outgoing = new MessageQueue<HeartbeatRequest>();
  let resolveFirstAck!: (ok: boolean) => void;
  const firstAck = new Promise<boolean>((resolve) => {
    resolveFirstAck = resolve;
  });
  let resolveLeaveAck: (() => void) | undefined;
  outgoing.push(options.hello);
  let seq = 0n;
  let cancelBeat: (() => void) | undefined;
  const beat = () => {
    seq += 1n;
    outgoing.push(options.beat(seq));
    cancelBeat = clock.setTimeout(beat, interval.ms);
  };
  const send = (message: HeartbeatRequest) => outgoing.push(message);

  const done = (async () => {
    try {
      const responses = clients.nodes.heartbeat(outgoing.drain(), {
        signal: abort.signal,
        timeoutMs: 0,
      });
      let first = true;
      for await (const response of responses) {
        if (response.intervalMs > 0) interval.ms = response.intervalMs;
        if (first) {
          first = false;
          connectedAtMs = clock.nowMs();
          cancelConnectDeadline();
          options.onConnected(response, send);
          resolveFirstAck(true);
          cancelBeat = clock.setTimeout(beat, interval.ms);
        }
        if (resolveLeaveAck && response.ackSeq === 0n) resolveLeaveAck();
        options.onMessage(response);
      }
    } catch (error) {
      if (abort.signal.aborted) return;
      notLeader = leaderHint(error);
      if (notLeader) return; // the loop logs where it goes next
      const normalized = fromConnectError(error);
      if (normalized.code === "Unauthenticated" || normalized.code === "PermissionDenied") {
        options.onRefused(normalized.message);
        return;
      }
      logger.warn({ url, err: normalized.message }, "heartbeat stream failed");
    } finally {
      endedAtMs = clock.nowMs();
      cancelConnectDeadline();
      cancelBeat?.();
      outgoing.close();
      resolveFirstAck(false);
    }
  })();

  return {
    abort,
    done,
    firstAck,
    outcome: (): SessionOutcome => {
      if (notLeader) return { kind: "notLeader", ...notLeader };
      if (connectedAtMs === undefined) return { kind: "failed" };
      return { kind: "ended", connectedForMs: (endedAtMs ?? clock.nowMs()) - connectedAtMs };
    },
    send,
    leave: async (backWithinMs, hurry) => {
      const acked = new Promise<void>((resolve) => {
        resolveLeaveAck = resolve;
        hurry?.addEventListener("abort", () => resolve(), { once: true });
        if (hurry?.aborted) resolve();
      });
      cancelBeat?.();
      outgoing.push(leaveMessage(backWithinMs));
      await Promise.race([
        acked,
        new Promise<void>((resolve) => clock.setTimeout(resolve, leaveAckTimeoutMs)),
      ]);
      abort.abort();
    },
  };
}

/** Leave for good (0) or for a restart the agent is back from within backWithinMs. */
export function leaveMessage(backWithinMs: number): HeartbeatRequest {
  return create(HeartbeatRequestSchema, {
    kind: {
      case: "leave",
      value:
        backWithinMs > 0
          ? { reason: "restart", backWithinMs }
          : { reason: "shutdown", backWithinMs: 0 },
    },
  });
}

export interface HeartbeatLoopOptions {
  endpoints: EndpointRotation;
  clock: Clock;
  logger: Logger;
  /** Opens a session to the rotation's current URL. */
  open(): StreamSession;
  /** The rotation moved to `url`: dial it from now on. */
  onRetarget(url: string): void;
  /** A redirect named a leader URL the agent did not know. */
  onLearned(url: string): void;
}

/** Keeps one heartbeat stream up, rotating through the coordinators; ends with stop(). */
export class HeartbeatLoop {
  private session: StreamSession | undefined;
  private stopped = false;
  private wakeBackoff: (() => void) | undefined;

  constructor(private readonly options: HeartbeatLoopOptions) {}

  /** The session in use, if one is open. */
  get current(): StreamSession | undefined {
    return this.session;
  }

  /**
   * Moves over to `next` (opened beside the current one, e.g. with a renewed certificate)
   * once it is acknowledged, closing the previous one: the coordinator never sees the node
   * without a stream.
   */
  async replaceWith(next: StreamSession): Promise<void> {
    const previous = this.session;
    if (await next.firstAck) {
      this.session = next;
      previous?.abort.abort();
    } else {
      next.abort.abort();
    }
  }

  async run(): Promise<void> {
    const { endpoints, clock, logger } = this.options;
    while (!this.stopped) {
      const session = this.session ?? this.options.open();
      this.session = session;
      await session.done;
      if (this.session !== session) continue; // moved to a new session (renewal)
      this.session = undefined;
      if (this.stopped) break;
      const outcome = session.outcome();
      const from = endpoints.current;
      const next = endpoints.next(outcome);
      if (next.learned) this.options.onLearned(next.learned);
      logger.info(
        { from, to: next.url, delayMs: next.delayMs, outcome: outcome.kind },
        outcome.kind === "notLeader" && next.delayMs === 0
          ? "coordinator is not the leader; connecting to the leader"
          : "heartbeat stream ended; reconnecting",
      );
      this.options.onRetarget(next.url);
      if (next.delayMs > 0) {
        await new Promise<void>((resolve) => {
          const cancel = clock.setTimeout(resolve, next.delayMs);
          this.wakeBackoff = () => {
            cancel();
            resolve();
          };
        });
        this.wakeBackoff = undefined;
      }
    }
  }

  /** No reconnecting from here on; a wait between attempts ends at once. */
  stop(): void {
    this.stopped = true;
    this.wakeBackoff?.();
  }

  /** Closes the current stream (after stop(), for good). */
  close(): void {
    this.session?.abort.abort();
    this.wakeBackoff?.();
  }
}

/** The outgoing side of a stream; bounded, since the agent pushes one beat per interval. */
export class MessageQueue<T> {
  private readonly items: T[] = [];
  private waiter: ((result: IteratorResult<T>) => void) | undefined;
  private closed = false;

  constructor(private readonly maxItems = 1000) {}

  push(item: T): void {
    if (this.closed) return;
    if (this.waiter) {
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter({ value: item, done: false });
    } else if (this.items.length < this.maxItems) {
      this.items.push(item);
    }
  }

  close(): void {
    this.closed = true;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.({ value: undefined, done: true });
  }

  private next(): Promise<IteratorResult<T>> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve({ value: item, done: false });
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  /** The queue as an async generator (which the RPC layer requires), ending on close(). */
  async *drain(): AsyncGenerator<T> {
    for (;;) {
      const result = await this.next();
      if (result.done) return;
      yield result.value;
    }
  }
}

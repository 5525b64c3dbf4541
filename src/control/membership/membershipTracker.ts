import {
  defaultPhiAccrualOptions,
  PhiAccrualDetector,
  type PhiAccrualOptions,
} from "./phiAccrual.js";

/**
 * Node health, judged from heartbeats kept in memory (DESIGN.md decision 3). This
 * core is pure: callers feed it stream events and ticks with a time, and it returns
 * the transitions to record. Only transitions are written to the store.
 */
export type NodeStatus = "Ready" | "NotReady" | "Lost" | "Left";

export interface MembershipConfig {
  /** The interval agents are told to heartbeat at. */
  heartbeatIntervalMs: number;
  /** phi at which a silent node with an open stream becomes NotReady. */
  phiSuspect: number;
  /** phi at which a NotReady node becomes Lost. */
  phiLost: number;
  /**
   * A NotReady node whose stream is closed becomes Lost after this long without a
   * reconnect, unless its agent announced a longer restart grace (ADR 0031).
   */
  streamLossGraceMs: number;
  /**
   * The longest restart grace an agent may ask for (its hello's, or a restarting leave's):
   * an agent that promised to come back and did not is replaced after this long at most,
   * so a misconfigured agent cannot hold its replicas hostage (REQ-030).
   */
  maxRestartGraceMs: number;
  /** After a coordinator (re)start, time a node gets to reconnect before it is judged. */
  startupGraceMs: number;
  detector: PhiAccrualOptions;
}

export const defaultMembershipConfig: MembershipConfig = {
  heartbeatIntervalMs: 1000,
  phiSuspect: 8,
  phiLost: 16,
  streamLossGraceMs: 1000,
  maxRestartGraceMs: 600_000,
  startupGraceMs: 10_000,
  detector: defaultPhiAccrualOptions,
};

export type TransitionReason =
  | "Joined"
  | "HeartbeatsResumed"
  | "HeartbeatStreamClosed"
  /** The stream closed without a leave; the node's restart grace keeps its replicas. */
  | "Reconnecting"
  /** The agent announced a restart (a leave saying it will be back); replicas kept. */
  | "Restarting"
  | "HeartbeatsMissed"
  | "NoReconnect"
  | "NoHeartbeatAfterRestart"
  | "GracefulLeave";

export interface Transition {
  node: string;
  from: NodeStatus | undefined;
  to: NodeStatus;
  reason: TransitionReason;
  message: string;
  atMs: number;
  /**
   * For a NotReady node without a stream: when it will be judged Lost unless it returns.
   * Recorded with the node, so a new leader keeps the deadline (restore()).
   */
  lostDeadlineMs?: number;
}

/** What the store remembers of a node's grace, for a new leader's restore(). */
export interface RestoredGrace {
  /** The restart grace its agent announced in its last hello. */
  restartGraceMs?: number;
  /** The Lost deadline recorded with its last NotReady transition, if any. */
  lostDeadlineMs?: number;
}

/** What a disconnected NotReady node is waiting for; words the Lost verdict. */
type Awaited = "reconnect" | "restart" | "firstContact";

interface TrackedNode {
  status: NodeStatus;
  detector: PhiAccrualDetector;
  streamOpen: boolean;
  /** When the stream closed (or, after a restart, when tracking began). */
  disconnectedAtMs: number | undefined;
  /** True until the node has been heard from since this tracker started. */
  awaitingFirstContact: boolean;
  lastHeartbeatMs: number | undefined;
  /** The restart grace its agent announced in its hello (ms; 0 = none). */
  restartGraceMs: number;
  /** A NotReady node without a stream is judged Lost at this time. */
  lostDeadlineMs: number | undefined;
  awaited: Awaited;
}

export class MembershipTracker {
  private readonly nodes = new Map<string, TrackedNode>();

  constructor(private readonly config: MembershipConfig = defaultMembershipConfig) {}

  /**
   * Nodes known from the store when the coordinator starts: judged after a grace period.
   * A NotReady node keeps the Lost deadline its previous leader gave it (a restart it
   * announced), if that is later than the startup grace.
   */
  restore(name: string, status: NodeStatus, nowMs: number, grace: RestoredGrace = {}): void {
    // A node that already said hello in this term is judged by what it said.
    if (this.nodes.has(name)) return;
    const detector = new PhiAccrualDetector(this.config.detector);
    detector.resetSilence(nowMs);
    const startupDeadlineMs = nowMs + this.config.startupGraceMs;
    const recorded =
      grace.lostDeadlineMs === undefined
        ? undefined
        : Math.min(grace.lostDeadlineMs, nowMs + this.config.maxRestartGraceMs);
    this.nodes.set(name, {
      status,
      detector,
      streamOpen: false,
      disconnectedAtMs: nowMs,
      awaitingFirstContact: true,
      lastHeartbeatMs: undefined,
      restartGraceMs: this.capGrace(grace.restartGraceMs ?? 0),
      lostDeadlineMs:
        status === "NotReady" ? Math.max(startupDeadlineMs, recorded ?? 0) : undefined,
      awaited: "firstContact",
    });
  }

  /** An announced grace within the coordinator's limit (ms; 0 = none). */
  private capGrace(graceMs: number): number {
    return grantedRestartGraceMs(this.config, graceMs);
  }

  /** How long a node whose stream closed without a leave has to come back. */
  private crashGraceMs(node: TrackedNode): number {
    return Math.max(this.config.streamLossGraceMs, node.restartGraceMs);
  }

  /** The restart grace a node's hello asked for, as granted (after the cap). */
  grantedRestartGraceMs(name: string): number {
    return this.nodes.get(name)?.restartGraceMs ?? 0;
  }

  /**
   * The first message on a heartbeat stream; restartGraceMs is what the agent announced
   * (0: none, the stream-loss grace applies).
   */
  onHello(name: string, nowMs: number, restartGraceMs = 0): Transition[] {
    const existing = this.nodes.get(name);
    const node: TrackedNode = existing ?? {
      status: "NotReady",
      detector: new PhiAccrualDetector(this.config.detector),
      streamOpen: false,
      disconnectedAtMs: undefined,
      awaitingFirstContact: true,
      lastHeartbeatMs: undefined,
      restartGraceMs: 0,
      lostDeadlineMs: undefined,
      awaited: "reconnect",
    };
    if (!existing) this.nodes.set(name, node);
    node.restartGraceMs = this.capGrace(restartGraceMs);
    node.lostDeadlineMs = undefined;
    // A fresh stream starts a fresh silence clock; the gap while disconnected is not
    // a heartbeat interval and must not widen the distribution.
    node.detector.resetSilence(nowMs);
    node.streamOpen = true;
    node.disconnectedAtMs = undefined;
    node.awaitingFirstContact = false;
    node.lastHeartbeatMs = nowMs;
    if (node.status === "Ready") return [];
    const from = existing ? node.status : undefined;
    node.status = "Ready";
    return [
      {
        node: name,
        from,
        to: "Ready",
        reason: from === undefined ? "Joined" : "HeartbeatsResumed",
        message:
          from === undefined ? "node joined the cluster" : `heartbeats resumed (was ${from})`,
        atMs: nowMs,
      },
    ];
  }

  onBeat(name: string, nowMs: number): Transition[] {
    const node = this.nodes.get(name);
    if (!node?.streamOpen) return [];
    node.detector.heartbeat(nowMs);
    node.lastHeartbeatMs = nowMs;
    if (node.status === "Ready" || node.status === "Left") return [];
    const from = node.status;
    node.status = "Ready";
    return [
      {
        node: name,
        from,
        to: "Ready",
        reason: "HeartbeatsResumed",
        message: `heartbeats resumed (was ${from})`,
        atMs: nowMs,
      },
    ];
  }

  /**
   * The agent said Leave. backWithinMs > 0: it is restarting and will be back within
   * that long (capped), keeping its replicas — NotReady "Restarting" until then, Lost if
   * it is not back. 0: it leaves for good (Left, never judged Lost; ADR 0013).
   */
  onLeave(name: string, nowMs: number, backWithinMs = 0): Transition[] {
    const node = this.nodes.get(name);
    if (!node) return [];
    node.streamOpen = false;
    node.disconnectedAtMs = nowMs;
    if (backWithinMs > 0) {
      const graceMs = Math.max(this.config.streamLossGraceMs, this.capGrace(backWithinMs));
      node.awaited = "restart";
      node.awaitingFirstContact = false;
      node.lostDeadlineMs = nowMs + graceMs;
      const from = node.status;
      node.status = "NotReady";
      return [
        {
          node: name,
          from,
          to: "NotReady",
          reason: "Restarting",
          message: `agent restarting; its replicas keep running unless it is not back within ${formatGrace(graceMs)}`,
          atMs: nowMs,
          lostDeadlineMs: node.lostDeadlineMs,
        },
      ];
    }
    node.lostDeadlineMs = undefined;
    if (node.status === "Left") return [];
    const from = node.status;
    node.status = "Left";
    return [
      {
        node: name,
        from,
        to: "Left",
        reason: "GracefulLeave",
        message: "agent shut down gracefully",
        atMs: nowMs,
      },
    ];
  }

  /** The stream closed without a Leave: immediate suspicion. */
  onStreamClosed(name: string, nowMs: number): Transition[] {
    const node = this.nodes.get(name);
    if (!node?.streamOpen) return [];
    node.streamOpen = false;
    node.disconnectedAtMs = nowMs;
    node.awaited = "reconnect";
    const graceMs = this.crashGraceMs(node);
    node.lostDeadlineMs = nowMs + graceMs;
    // Already NotReady (phi): its deadline starts now, its reason stays.
    if (node.status !== "Ready") return [];
    node.status = "NotReady";
    // A restart grace longer than the stream-loss grace is named, so an operator sees
    // why a NotReady node still holds its replicas.
    const restartGrace = graceMs > this.config.streamLossGraceMs;
    return [
      {
        node: name,
        from: "Ready",
        to: "NotReady",
        reason: restartGrace ? "Reconnecting" : "HeartbeatStreamClosed",
        message: restartGrace
          ? `heartbeat stream closed without a graceful leave; its replicas are kept for its restart grace of ${formatGrace(graceMs)}`
          : "heartbeat stream closed without a graceful leave",
        atMs: nowMs,
        lostDeadlineMs: node.lostDeadlineMs,
      },
    ];
  }

  /** Judge every node at time nowMs. */
  tick(nowMs: number): Transition[] {
    const transitions: Transition[] = [];
    for (const [name, node] of this.nodes) {
      if (node.status === "Lost" || node.status === "Left") continue;
      if (!node.streamOpen) {
        const since = node.disconnectedAtMs ?? nowMs;
        if (
          node.awaitingFirstContact &&
          node.status === "Ready" &&
          nowMs - since >= this.config.startupGraceMs
        ) {
          node.status = "NotReady";
          // Judged NotReady now; Lost follows after its crash grace (stream loss or restart).
          node.awaitingFirstContact = false;
          node.disconnectedAtMs = nowMs;
          node.awaited = "reconnect";
          node.lostDeadlineMs = nowMs + this.crashGraceMs(node);
          transitions.push({
            node: name,
            from: "Ready",
            to: "NotReady",
            reason: "NoHeartbeatAfterRestart",
            message: `no heartbeat within ${this.config.startupGraceMs} ms of the coordinator starting`,
            atMs: nowMs,
            lostDeadlineMs: node.lostDeadlineMs,
          });
          continue;
        }
        if (
          node.status === "NotReady" &&
          node.lostDeadlineMs !== undefined &&
          nowMs >= node.lostDeadlineMs
        ) {
          node.status = "Lost";
          node.lostDeadlineMs = undefined;
          const awayMs = nowMs - since;
          transitions.push({
            node: name,
            from: "NotReady",
            to: "Lost",
            reason: "NoReconnect",
            message:
              node.awaited === "restart"
                ? `not back within ${awayMs} ms of announcing a restart`
                : node.awaited === "firstContact"
                  ? `no reconnect within ${awayMs} ms of the coordinator starting`
                  : `no reconnect within ${awayMs} ms after the heartbeat stream closed`,
            atMs: nowMs,
          });
        }
        continue;
      }
      const phi = node.detector.phi(nowMs);
      if (node.status === "Ready" && phi >= this.config.phiSuspect) {
        node.status = "NotReady";
        transitions.push({
          node: name,
          from: "Ready",
          to: "NotReady",
          reason: "HeartbeatsMissed",
          message: `heartbeats missed (phi ${phi.toFixed(1)} ≥ ${this.config.phiSuspect})`,
          atMs: nowMs,
        });
      } else if (node.status === "NotReady" && phi >= this.config.phiLost) {
        node.status = "Lost";
        transitions.push({
          node: name,
          from: "NotReady",
          to: "Lost",
          reason: "HeartbeatsMissed",
          message: `heartbeats missed (phi ${phi.toFixed(1)} ≥ ${this.config.phiLost})`,
          atMs: nowMs,
        });
      }
    }
    return transitions;
  }

  /** Forget every node (a new leadership term starts from the store). */
  clear(): void {
    this.nodes.clear();
  }

  /** Forget a node (it was deleted). */
  remove(name: string): void {
    this.nodes.delete(name);
  }

  status(name: string): NodeStatus | undefined {
    return this.nodes.get(name)?.status;
  }

  lastHeartbeatMs(name: string): number | undefined {
    return this.nodes.get(name)?.lastHeartbeatMs;
  }

  isConnected(name: string): boolean {
    return this.nodes.get(name)?.streamOpen ?? false;
  }

  phi(name: string, nowMs: number): number | undefined {
    return this.nodes.get(name)?.detector.phi(nowMs);
  }

  /** When a NotReady node without a stream is judged Lost unless it returns. */
  lostDeadlineMs(name: string): number | undefined {
    return this.nodes.get(name)?.lostDeadlineMs;
  }
}

/** The restart grace a coordinator grants for one asked for (ms; 0 = none): capped by maxRestartGraceMs. */
export function grantedRestartGraceMs(config: MembershipConfig, requestedMs: number): number {
  if (!Number.isFinite(requestedMs) || requestedMs <= 0) return 0;
  return Math.min(requestedMs, config.maxRestartGraceMs);
}

/** A grace for a message: "1.5 s", "30 s", "10 min". */
function formatGrace(ms: number): string {
  if (ms >= 60_000 && ms % 60_000 === 0) return `${ms / 60_000} min`;
  return `${Number((ms / 1000).toFixed(1))} s`;
}

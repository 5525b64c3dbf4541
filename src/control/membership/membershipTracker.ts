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
  /** A NotReady node whose stream is closed becomes Lost after this long without a reconnect. */
  streamLossGraceMs: number;
  /** After a coordinator (re)start, time a node gets to reconnect before it is judged. */
  startupGraceMs: number;
  detector: PhiAccrualOptions;
}

export const defaultMembershipConfig: MembershipConfig = {
  heartbeatIntervalMs: 1000,
  phiSuspect: 8,
  phiLost: 16,
  streamLossGraceMs: 1000,
  startupGraceMs: 10_000,
  detector: defaultPhiAccrualOptions,
};

export type TransitionReason =
  | "Joined"
  | "HeartbeatsResumed"
  | "HeartbeatStreamClosed"
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
}

interface TrackedNode {
  status: NodeStatus;
  detector: PhiAccrualDetector;
  streamOpen: boolean;
  /** When the stream closed (or, after a restart, when tracking began). */
  disconnectedAtMs: number | undefined;
  /** True until the node has been heard from since this tracker started. */
  awaitingFirstContact: boolean;
  lastHeartbeatMs: number | undefined;
}

export class MembershipTracker {
  private readonly nodes = new Map<string, TrackedNode>();

  constructor(private readonly config: MembershipConfig = defaultMembershipConfig) {}

  /** Nodes known from the store when the coordinator starts: judged after a grace period. */
  restore(name: string, status: NodeStatus, nowMs: number): void {
    // A node that already said hello in this term is judged by what it said.
    if (this.nodes.has(name)) return;
    const detector = new PhiAccrualDetector(this.config.detector);
    detector.resetSilence(nowMs);
    this.nodes.set(name, {
      status,
      detector,
      streamOpen: false,
      disconnectedAtMs: nowMs,
      awaitingFirstContact: true,
      lastHeartbeatMs: undefined,
    });
  }

  /** The first message on a heartbeat stream. */
  onHello(name: string, nowMs: number): Transition[] {
    const existing = this.nodes.get(name);
    const node: TrackedNode = existing ?? {
      status: "NotReady",
      detector: new PhiAccrualDetector(this.config.detector),
      streamOpen: false,
      disconnectedAtMs: undefined,
      awaitingFirstContact: true,
      lastHeartbeatMs: undefined,
    };
    if (!existing) this.nodes.set(name, node);
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

  onLeave(name: string, nowMs: number): Transition[] {
    const node = this.nodes.get(name);
    if (!node) return [];
    node.streamOpen = false;
    node.disconnectedAtMs = nowMs;
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
    if (node.status !== "Ready") return [];
    node.status = "NotReady";
    return [
      {
        node: name,
        from: "Ready",
        to: "NotReady",
        reason: "HeartbeatStreamClosed",
        message: "heartbeat stream closed without a graceful leave",
        atMs: nowMs,
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
        const grace = node.awaitingFirstContact
          ? this.config.startupGraceMs
          : this.config.streamLossGraceMs;
        if (node.awaitingFirstContact && node.status === "Ready" && nowMs - since >= grace) {
          node.status = "NotReady";
          transitions.push({
            node: name,
            from: "Ready",
            to: "NotReady",
            reason: "NoHeartbeatAfterRestart",
            message: `no heartbeat within ${grace} ms of the coordinator starting`,
            atMs: nowMs,
          });
          // Judged NotReady now; Lost follows after the usual stream-loss grace.
          node.awaitingFirstContact = false;
          node.disconnectedAtMs = nowMs;
          continue;
        }
        if (node.status === "NotReady" && nowMs - since >= grace) {
          node.status = "Lost";
          transitions.push({
            node: name,
            from: "NotReady",
            to: "Lost",
            reason: "NoReconnect",
            message: `no reconnect within ${nowMs - since} ms after the heartbeat stream closed`,
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
}

/**
 * How a subsystem joins the node agent (ADR 0042): it starts and stops with the agent,
 * receives what the coordinator sends on the heartbeat stream, and reports its status on
 * it. The replica supervisor is the first module (replicaModule.ts); networking and
 * storage join the same way, without edits to agent.ts beyond adding them to its list.
 *
 * The messages are the contract's (api/gen node_pb): a module takes its own part of a
 * HeartbeatResponse and answers with HeartbeatRequests of its own kind. Status is
 * level-triggered: what a module returns from statusMessages() is sent on every new
 * stream and resent every full-report interval, so a lost message costs one interval.
 */
import type { HeartbeatRequest, HeartbeatResponse } from "../api/gen/cloudless/v1/node_pb.js";

export interface AgentModuleContext {
  /**
   * Sends a message on the heartbeat stream now, if one is up; otherwise it is dropped
   * (what matters is in the next statusMessages()).
   */
  send(message: HeartbeatRequest): void;
}

export interface AgentModuleStopOptions {
  /**
   * The node leaves the cluster (or was deleted from it): what the module runs is not
   * wanted here any more and stops. Otherwise (a plain stop, a restart) it keeps running
   * for the next agent on this data dir.
   */
  leaving: boolean;
  /** Aborts when the operator hurries the stop (a second Ctrl-C, ADR 0028). */
  hurry?: AbortSignal;
}

export interface AgentModule {
  /** For logs, e.g. "replicas". */
  readonly name: string;
  /**
   * Starts before the agent first dials a coordinator: a module brings back what it ran
   * from disk without one (NFR-A1).
   */
  start(context: AgentModuleContext): Promise<void>;
  /** A message from the coordinator; the module takes its part, if any, and ignores the rest. */
  receive(message: HeartbeatResponse): void;
  /** The module's full status and pending events, to send now. */
  statusMessages(): HeartbeatRequest[];
  /** Stops with the agent; called once. */
  stop(options: AgentModuleStopOptions): Promise<void>;
}

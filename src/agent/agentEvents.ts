/**
 * Events the agent raises for the cluster's event stream (REQ-071, ADR 0042), sent on the
 * heartbeat stream as AgentEvents. The coordinator names the subject and the actor; the
 * agent says what happened and why.
 */
import { create } from "@bufbuild/protobuf";
import {
  type AgentEvent,
  AgentEventSchema,
  type HeartbeatRequest,
  HeartbeatRequestSchema,
} from "../api/gen/cloudless/v1/node_pb.js";

/** Field paths named in one event's message at most; the rest are counted. */
const maxFieldsNamed = 20;
/** Events waiting for a stream at most; older ones are dropped first (counted in the log). */
const maxPendingEvents = 100;
/** Events per message at most (the coordinator accepts 32). */
const maxEventsPerMessage = 16;

export interface AssignmentRef {
  replicaId: string;
  namespace: string;
  workload: string;
  revision: number;
}

function fieldList(fields: readonly string[]): string {
  const named = fields.slice(0, maxFieldsNamed).join(", ");
  const more = fields.length - maxFieldsNamed;
  return more > 0 ? `${named} and ${more} more` : named;
}

/** A replica runs without spec fields this agent does not know (a newer coordinator). */
export function unknownSpecFieldsEvent(
  assignment: AssignmentRef,
  fields: readonly string[],
  agentVersion: string,
): AgentEvent {
  return create(AgentEventSchema, {
    type: "SpecFieldsIgnored",
    reason: "UnknownSpecFields",
    replicaId: assignment.replicaId,
    message:
      `replica ${assignment.replicaId} runs revision ${assignment.revision} without spec ` +
      `fields this agent does not know: ${fieldList(fields)}; the agent (${agentVersion}) is ` +
      "older than the coordinator that accepted them: upgrade the agent for them to take effect",
    attributes: {
      revision: String(assignment.revision),
      fields: fieldList(fields),
      agentVersion,
    },
  });
}

/**
 * A spec this agent cannot read at all (wrong in a field it knows): it keeps what it ran
 * for the replica, if anything, instead of stopping it.
 */
export function specNotUnderstoodEvent(
  assignment: AssignmentRef,
  why: string,
  keptRevision: number | undefined,
  agentVersion: string,
): AgentEvent {
  const kept = keptPhrase(keptRevision);
  return create(AgentEventSchema, {
    type: "SpecRefused",
    reason: "SpecNotUnderstood",
    replicaId: assignment.replicaId,
    message:
      `replica ${assignment.replicaId}: the agent (${agentVersion}) cannot run revision ` +
      `${assignment.revision} (${why.slice(0, 1_000)}); ${kept}`,
    attributes: { revision: String(assignment.revision), agentVersion },
  });
}

/**
 * A replica a cluster policy denies (REQ-061): the agent does not start it, whatever put
 * its record in the store (defence in depth behind the check at apply).
 */
export function policyDeniedEvent(
  assignment: AssignmentRef,
  reason: string,
  keptRevision: number | undefined,
): AgentEvent {
  const kept = keptPhrase(keptRevision);
  return create(AgentEventSchema, {
    type: "ReplicaRefused",
    reason: "PolicyDenied",
    replicaId: assignment.replicaId,
    message: `replica ${assignment.replicaId} (revision ${assignment.revision}) is ${reason.slice(0, 1_000)}; ${kept}`,
    attributes: { revision: String(assignment.revision) },
  });
}

/**
 * A replica not started because its secrets or configs could not be written (ADR 0055):
 * the reason word and the supervisor's one line, which names the source and key, never
 * a value.
 */
export function replicaFilesEvent(replicaId: string, reason: string, message: string): AgentEvent {
  return create(AgentEventSchema, {
    type: "ReplicaFilesFailed",
    reason,
    replicaId,
    message: `replica ${replicaId} is not started: ${message.slice(0, 1_000)}`,
  });
}

/** What happens to a replica whose new revision is not run: the revision it keeps, if any. */
function keptPhrase(keptRevision: number | undefined): string {
  return keptRevision === undefined
    ? "it is not started"
    : `it keeps running revision ${keptRevision}`;
}

/**
 * Events waiting to be sent, each raised once: a desired set the coordinator sends again
 * (on every reconnect, on every change) does not repeat an event already raised for the
 * same replica, revision and cause. Bounded both ways: keys are kept only for replicas
 * still assigned, and pending events for a stream are capped.
 */
export class AgentEventOutbox {
  private readonly pending: AgentEvent[] = [];
  private raised = new Set<string>();
  private raisedThisSet = new Set<string>();
  dropped = 0;

  /** Raises `event` unless one with the same key was raised for the current assignments. */
  raise(key: string, event: AgentEvent): boolean {
    this.raisedThisSet.add(key);
    if (this.raised.has(key)) return false;
    this.raised.add(key);
    if (this.pending.length >= maxPendingEvents) {
      this.pending.shift();
      this.dropped += 1;
    }
    this.pending.push(event);
    return true;
  }

  /**
   * Ends one desired set: keys not raised again for it are forgotten, so an event comes
   * back if its cause does after going away.
   */
  endOfSet(): void {
    this.raised = this.raisedThisSet;
    this.raisedThisSet = new Set();
  }

  get size(): number {
    return this.pending.length;
  }

  /** The pending events as heartbeat messages, emptying the outbox. */
  take(): HeartbeatRequest[] {
    const messages: HeartbeatRequest[] = [];
    while (this.pending.length > 0) {
      const events = this.pending.splice(0, maxEventsPerMessage);
      messages.push(
        create(HeartbeatRequestSchema, { kind: { case: "events", value: { events } } }),
      );
    }
    return messages;
  }
}

/**
 * Events an agent raises on its heartbeat stream (AgentEvents, ADR 0042), checked and
 * turned into the cluster's events. The node is authenticated, but what it says is input:
 * every field has a bound, and the subject is the coordinator's to name — the workload of
 * a replica it assigned to this node, else the node itself — so a node cannot write events
 * about workloads it does not run.
 */
import type { AgentEvents } from "../../api/gen/cloudless/v1/node_pb.js";
import type { NewEvent } from "../events/eventLog.js";

/** Events per message at most: an agent sends one per skewed replica, a handful at a time. */
export const maxAgentEventsPerMessage = 32;
/** Type and reason: PascalCase words, as every event type and reason in the log is. */
const namePattern = /^[A-Z][A-Za-z0-9]{0,63}$/;
/** One line for an operator; a list of field paths fits (the agent caps its list). */
export const maxAgentEventMessageChars = 2_048;
/** Attributes per event at most, and their key and value lengths (a replica id, a field list). */
const maxAttributes = 8;
const maxAttributeKeyChars = 64;
const maxAttributeValueChars = 1_024;
/** Replica ids are store key segments, far shorter than this. */
const maxReplicaIdChars = 256;

export interface AssignedReplica {
  namespace: string;
  workload: string;
}

export interface AgentEventsReading {
  events: NewEvent[];
  /** One line per event refused, naming the field that was wrong (for the coordinator's log). */
  refused: string[];
}

/**
 * The events of one AgentEvents message from `node`, with `assigned` the replicas the
 * coordinator has assigned to that node. Pure: the caller records and rate-limits.
 */
export function readAgentEvents(
  node: string,
  batch: AgentEvents,
  assigned: (replicaId: string) => AssignedReplica | undefined,
): AgentEventsReading {
  const refused: string[] = [];
  if (batch.events.length > maxAgentEventsPerMessage) {
    return {
      events: [],
      refused: [
        `${batch.events.length} events in one message, more than ${maxAgentEventsPerMessage}`,
      ],
    };
  }
  const events: NewEvent[] = [];
  for (const event of batch.events) {
    const problem = problemOf(event);
    if (problem) {
      refused.push(problem);
      continue;
    }
    const replica = event.replicaId ? assigned(event.replicaId) : undefined;
    // "node" and "replica" are the coordinator's to say, never the agent's.
    const { node: _node, replica: _replica, ...said } = event.attributes;
    events.push({
      type: event.type,
      category: "operations",
      subject: replica ? `workload/${replica.namespace}/${replica.workload}` : `node/${node}`,
      reason: event.reason,
      message: event.message,
      actor: `node/${node}`,
      attributes: {
        ...said,
        node,
        ...(event.replicaId && replica ? { replica: event.replicaId } : {}),
      },
    });
  }
  return { events, refused };
}

function problemOf(event: AgentEvents["events"][number]): string | undefined {
  if (!namePattern.test(event.type)) return "type must be a PascalCase word of at most 64 chars";
  if (!namePattern.test(event.reason)) {
    return "reason must be a PascalCase word of at most 64 chars";
  }
  if (event.message.length === 0 || event.message.length > maxAgentEventMessageChars) {
    return `message must have 1 to ${maxAgentEventMessageChars} chars`;
  }
  if (event.replicaId.length > maxReplicaIdChars) {
    return `replica_id must be at most ${maxReplicaIdChars} chars`;
  }
  const attributes = Object.entries(event.attributes);
  if (attributes.length > maxAttributes) return `at most ${maxAttributes} attributes`;
  for (const [key, value] of attributes) {
    if (key.length === 0 || key.length > maxAttributeKeyChars) {
      return `attribute keys must have 1 to ${maxAttributeKeyChars} chars`;
    }
    if (value.length > maxAttributeValueChars) {
      return `attribute ${JSON.stringify(key)} must be at most ${maxAttributeValueChars} chars`;
    }
  }
  return undefined;
}

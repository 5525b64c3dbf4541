import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  type Assignment,
  AssignmentSchema,
  AssignmentsSchema,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
} from "../../api/gen/cloudless/v1/node_pb.js";

export interface AssignmentEntry {
  replicaId: string;
  namespace: string;
  workload: string;
  revision: number;
  specJson: string;
  /**
   * A digest of specJson, when the caller has one (computed once per spec): the change
   * check then hashes it instead of the whole document.
   */
  specDigest?: string;
  /** Trace context of the replica's placement; not part of what makes a set change. */
  traceparent?: string;
}

type Sink = (message: HeartbeatResponse) => void;

/**
 * Each node's desired set of replicas, and the open heartbeat streams to push it
 * down. The whole set is sent whenever it changes (level-triggered: an agent that
 * missed a message converges on the next one), and on every new stream.
 */
export class AssignmentHub {
  private readonly desired = new Map<string, { hash: string; message: HeartbeatResponse }>();
  private readonly sinks = new Map<string, Set<Sink>>();
  private version = 0n;

  /** Sets a node's desired set; pushes it to the node's streams if it changed. */
  publish(node: string, entries: AssignmentEntry[]): void {
    const sorted = [...entries].sort((a, b) => a.replicaId.localeCompare(b.replicaId));
    const hash = createHash("sha256")
      .update(
        JSON.stringify(sorted.map((e) => [e.replicaId, e.revision, e.specDigest ?? e.specJson])),
      )
      .digest("hex");
    if (this.desired.get(node)?.hash === hash) return;
    this.version += 1n;
    const message = create(HeartbeatResponseSchema, {
      assignments: create(AssignmentsSchema, {
        version: this.version,
        replicas: sorted.map(
          (entry): Assignment =>
            create(AssignmentSchema, {
              replicaId: entry.replicaId,
              namespace: entry.namespace,
              workload: entry.workload,
              revision: BigInt(entry.revision),
              specJson: entry.specJson,
              traceparent: entry.traceparent ?? "",
            }),
        ),
      }),
    });
    this.desired.set(node, { hash, message });
    for (const sink of this.sinks.get(node) ?? []) sink(message);
  }

  /** Whether a set was ever published for the node. */
  has(node: string): boolean {
    return this.desired.has(node);
  }

  /** Nodes with a published set, so a pass can clear nodes that no longer have replicas. */
  knownNodes(): string[] {
    return [...this.desired.keys()];
  }

  /**
   * Registers a stream. It receives the current set at once if one is known; before
   * the controllers' first pass nothing is sent, so a restarting coordinator never
   * tells an agent to stop replicas it has not yet accounted for.
   */
  attach(node: string, sink: Sink): () => void {
    let sinks = this.sinks.get(node);
    if (!sinks) {
      sinks = new Set();
      this.sinks.set(node, sinks);
    }
    sinks.add(sink);
    const current = this.desired.get(node);
    if (current) sink(current.message);
    return () => {
      sinks.delete(sink);
      if (sinks.size === 0) this.sinks.delete(node);
    };
  }

  /** Sends a one-off message (logs or exec request) to one of the node's streams. */
  send(node: string, message: HeartbeatResponse): boolean {
    const sink = this.sinks.get(node)?.values().next().value;
    if (!sink) return false;
    sink(message);
    return true;
  }

  isConnected(node: string): boolean {
    return (this.sinks.get(node)?.size ?? 0) > 0;
  }
}

/**
 * How a coordinator module joins the node heartbeat streams without the node service
 * knowing it (issue 14: services and the mesh; storage later): it may attach a sink to
 * every stream, to push HeartbeatResponses down it, and receive the request kinds the
 * node service does not handle itself. What is pushed goes through the stream's own
 * bounded queue: a sink never grows it past the node service's limit.
 */
import type { HeartbeatRequest, HeartbeatResponse } from "../../api/gen/cloudless/v1/node_pb.js";

/** The request kinds the node service handles itself; the rest may go to a module. */
type BuiltInKind = "hello" | "beat" | "leave" | "reports" | "events";
type RequestKind = Exclude<NonNullable<HeartbeatRequest["kind"]["case"]>, BuiltInKind>;
type RequestValue<K extends RequestKind> = Extract<HeartbeatRequest["kind"], { case: K }>["value"];

/** Called for each new stream of a node; returns what to call when the stream ends. */
export type StreamAttacher = (
  node: string,
  push: (message: HeartbeatResponse) => void,
) => () => void;

export class HeartbeatHooks {
  private readonly attachers = new Set<StreamAttacher>();
  private readonly handlers = new Map<RequestKind, (node: string, value: unknown) => void>();

  /** Every stream opened from now on gets `attach`ed; returns the unregistration. */
  onStream(attach: StreamAttacher): () => void {
    this.attachers.add(attach);
    return () => this.attachers.delete(attach);
  }

  /** Requests of `kind` go to `handler` (one per kind), with the stream's node name. */
  onRequest<K extends RequestKind>(
    kind: K,
    handler: (node: string, value: RequestValue<K>) => void,
  ): () => void {
    if (this.handlers.has(kind))
      throw new Error(`heartbeat request "${kind}" already has a handler`);
    this.handlers.set(kind, handler as (node: string, value: unknown) => void);
    return () => this.handlers.delete(kind);
  }

  /** The node service: a stream opened; returns the detach of every attached sink. */
  attach(node: string, push: (message: HeartbeatResponse) => void): () => void {
    const detaches = [...this.attachers].map((attach) => attach(node, push));
    return () => {
      for (const detach of detaches) detach();
    };
  }

  /** The node service: a request it does not handle; false when no module takes it. */
  dispatch(node: string, kind: HeartbeatRequest["kind"]): boolean {
    if (kind.case === undefined) return false;
    const handler = this.handlers.get(kind.case as RequestKind);
    if (!handler) return false;
    handler(node, kind.value);
    return true;
  }
}

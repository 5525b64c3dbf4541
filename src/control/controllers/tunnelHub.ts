import { create } from "@bufbuild/protobuf";
import { CloudlessError } from "../../api/errors.js";
import {
  CancelRequestSchema,
  ExecRequestSchema,
  HeartbeatResponseSchema,
  LogsRequestSchema,
} from "../../api/gen/cloudless/v1/node_pb.js";
import { AsyncQueue } from "../../lib/asyncQueue.js";
import type { Rng } from "../../lib/rng.js";
import type { AssignmentHub } from "./assignmentHub.js";

export interface TunnelLogLine {
  stream: string;
  line: string;
}

export interface TunnelExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Log lines buffered per request before the request is cut off. */
const logQueueLimit = 10_000;

/**
 * Logs and exec reach a replica through its agent without the agent listening on
 * any port: the coordinator asks over the agent's heartbeat stream, and the agent
 * answers with a call of its own (UploadLogs, ReportExecResult). A node may only
 * answer requests that were sent to it.
 */
export class TunnelHub {
  private readonly logRequests = new Map<
    string,
    { node: string; queue: AsyncQueue<TunnelLogLine> }
  >();
  private readonly execRequests = new Map<
    string,
    { node: string; resolve: (result: TunnelExecResult) => void; reject: (error: unknown) => void }
  >();

  constructor(
    private readonly assignments: AssignmentHub,
    private readonly rng: Rng,
  ) {}

  async *logs(
    node: string,
    replicaId: string,
    options: { follow: boolean; tailLines: number; signal: AbortSignal },
  ): AsyncGenerator<TunnelLogLine> {
    const requestId = this.rng.bytes(12).toString("hex");
    const queue = new AsyncQueue<TunnelLogLine>(logQueueLimit);
    this.logRequests.set(requestId, { node, queue });
    const sent = this.assignments.send(
      node,
      create(HeartbeatResponseSchema, {
        logsRequest: create(LogsRequestSchema, {
          requestId,
          replicaId,
          follow: options.follow,
          tailLines: options.tailLines,
        }),
      }),
    );
    if (!sent) {
      this.logRequests.delete(requestId);
      throw CloudlessError.unavailable(
        `node "${node}" is not connected, so its replica's logs cannot be read now; try again when it is Ready`,
      );
    }
    const onAbort = () => queue.close();
    options.signal.addEventListener("abort", onAbort);
    try {
      yield* queue.drain();
    } finally {
      options.signal.removeEventListener("abort", onAbort);
      if (this.logRequests.delete(requestId)) {
        this.assignments.send(
          node,
          create(HeartbeatResponseSchema, { cancel: create(CancelRequestSchema, { requestId }) }),
        );
      }
    }
  }

  /** Called for each UploadLogs message; false when nobody waits for these lines any more. */
  acceptLogLines(node: string, requestId: string, lines: TunnelLogLine[]): boolean {
    const request = this.logRequests.get(requestId);
    if (!request || request.node !== node) return false;
    for (const line of lines) {
      if (!request.queue.push(line)) return false;
    }
    return true;
  }

  endLogs(node: string, requestId: string, error?: string): void {
    const request = this.logRequests.get(requestId);
    if (!request || request.node !== node) return;
    this.logRequests.delete(requestId);
    if (error) request.queue.fail(CloudlessError.unavailable(error));
    else request.queue.close();
  }

  exec(
    node: string,
    replicaId: string,
    command: string[],
    timeoutMs: number,
  ): Promise<TunnelExecResult> {
    const requestId = this.rng.bytes(12).toString("hex");
    return new Promise<TunnelExecResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.execRequests.delete(requestId);
        reject(
          CloudlessError.deadlineExceeded(
            `exec on node "${node}" got no answer within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs + 2_000);
      this.execRequests.set(requestId, {
        node,
        resolve: (result) => {
          clearTimeout(timer);
          resolve(result);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      const sent = this.assignments.send(
        node,
        create(HeartbeatResponseSchema, {
          execRequest: create(ExecRequestSchema, { requestId, replicaId, command, timeoutMs }),
        }),
      );
      if (!sent) {
        this.execRequests.delete(requestId);
        clearTimeout(timer);
        reject(
          CloudlessError.unavailable(
            `node "${node}" is not connected; exec needs the node to be Ready`,
          ),
        );
      }
    });
  }

  acceptExecResult(
    node: string,
    requestId: string,
    result: TunnelExecResult,
    error?: { message: string; deadlineExceeded: boolean },
  ): boolean {
    const request = this.execRequests.get(requestId);
    if (!request || request.node !== node) return false;
    this.execRequests.delete(requestId);
    if (!error) request.resolve(result);
    else if (error.deadlineExceeded) {
      request.reject(CloudlessError.deadlineExceeded(error.message));
    } else request.reject(CloudlessError.invalid(error.message));
    return true;
  }
}

import type { ExecRequest, LogsRequest } from "../api/gen/cloudless/v1/node_pb.js";
import type { CoordinatorClients } from "../client/transport.js";
import type { DriverName, RuntimeDriver } from "./drivers/driver.js";
import { DeadlineExceeded } from "./drivers/util.js";
import type { ReplicaReport } from "./supervisor/supervisorTypes.js";

/** Lines sent per UploadLogs message. */
const linesPerMessage = 200;
/** Requests served at once; more are refused rather than queued without bound. */
const maxConcurrentRequests = 32;

/**
 * The agent's side of logs and exec: the coordinator asks on the heartbeat stream,
 * the agent answers with calls of its own, so the agent needs no listening port.
 */
export class AgentTunnels {
  private readonly active = new Map<string, AbortController>();

  constructor(
    private readonly clients: () => CoordinatorClients,
    private readonly drivers: () => Map<DriverName, RuntimeDriver>,
    private readonly reports: () => readonly ReplicaReport[],
  ) {}

  startLogs(request: LogsRequest): void {
    const abort = new AbortController();
    if (this.active.size >= maxConcurrentRequests) {
      void this.clients()
        .nodes.uploadLogs(
          (async function* () {
            yield {
              requestId: request.requestId,
              lines: [],
              error: "too many log requests on this node; try again",
            };
          })(),
        )
        .catch(() => undefined);
      return;
    }
    this.active.set(request.requestId, abort);
    const driver = this.driverOf(request.replicaId);
    const upload = async function* () {
      if (!driver) {
        yield {
          requestId: request.requestId,
          lines: [],
          error: `replica ${request.replicaId} is not running on this node`,
        };
        return;
      }
      let batch: { stream: string; line: string }[] = [];
      try {
        for await (const line of driver.logs(request.replicaId, {
          follow: request.follow,
          ...(request.tailLines >= 0 ? { tailLines: request.tailLines } : {}),
          signal: abort.signal,
        })) {
          batch.push({ stream: line.stream, line: line.line });
          if (batch.length >= linesPerMessage || request.follow) {
            yield { requestId: request.requestId, lines: batch };
            batch = [];
          }
        }
        if (batch.length > 0) yield { requestId: request.requestId, lines: batch };
        // An empty message still names the request, so an empty log ends cleanly.
        yield { requestId: request.requestId, lines: [] };
      } catch (error) {
        if (abort.signal.aborted) return;
        yield {
          requestId: request.requestId,
          lines: [],
          error: `cannot read logs: ${error instanceof Error ? error.message : String(error)}`,
        };
      }
    };
    this.clients()
      .nodes.uploadLogs(upload(), { signal: abort.signal, timeoutMs: 0 })
      .catch(() => undefined)
      .finally(() => {
        abort.abort();
        this.active.delete(request.requestId);
      });
  }

  cancel(requestId: string): void {
    this.active.get(requestId)?.abort();
    this.active.delete(requestId);
  }

  cancelAll(): void {
    for (const abort of this.active.values()) abort.abort();
    this.active.clear();
  }

  async exec(request: ExecRequest): Promise<void> {
    const driver = this.driverOf(request.replicaId);
    let result: {
      exitCode: number;
      stdout: string;
      stderr: string;
      error: string;
      deadlineExceeded?: boolean;
    };
    if (!driver) {
      result = {
        exitCode: -1,
        stdout: "",
        stderr: "",
        error: `replica ${request.replicaId} is not running on this node`,
      };
    } else {
      try {
        const done = await driver.exec(
          request.replicaId,
          request.command,
          request.timeoutMs || 30_000,
        );
        result = { ...done, error: "" };
      } catch (error) {
        const deadlineExceeded = error instanceof DeadlineExceeded;
        const message = error instanceof Error ? error.message : String(error);
        result = {
          exitCode: -1,
          stdout: "",
          stderr: "",
          error: deadlineExceeded ? message : `exec failed: ${message}`,
          deadlineExceeded,
        };
      }
    }
    await this.clients()
      .nodes.reportExecResult({ requestId: request.requestId, ...result })
      .catch(() => undefined);
  }

  private driverOf(replicaId: string): RuntimeDriver | undefined {
    const report = this.reports().find((r) => r.replicaId === replicaId);
    if (!report) return undefined;
    return this.drivers().get(report.driver as DriverName);
  }
}

import { withChildSpan } from "../../observe/tracing.js";
import {
  DriverError,
  type DriverName,
  type ExecResult,
  type LogLine,
  type PortOwner,
  type ReplicaRunSpec,
  type ReplicaRuntimeStatus,
  type RuntimeDriver,
} from "./driver.js";

/** The metric handles the decorator needs (see src/observe/metrics.ts). */
export interface DriverMetrics {
  driverOperations: {
    inc(labels: { driver: string; operation: string; result: string }): void;
  };
  driverOperationDuration: {
    observe(labels: { driver: string; operation: string }, seconds: number): void;
  };
}

/**
 * The result label of a failed call: the DriverError kind (imageNotFound, invalid,
 * unavailable, failed) or "error" for anything else — a bounded set.
 */
export function driverResultOf(error: unknown): string {
  return error instanceof DriverError ? error.kind : "error";
}

/**
 * A RuntimeDriver that counts and times every call of the driver it wraps, by
 * operation and result; behaviour is otherwise the inner driver's. Log streams are
 * counted when they end, not timed (a followed stream lasts as long as its reader).
 * While tracing is on, a call made inside a span (the supervisor's replica.start) is a
 * child span `driver.<operation>` of it; the periodic status checks make none.
 */
export class InstrumentedDriver implements RuntimeDriver {
  /** Present when the inner driver has it; counted and timed, without a span (probes call it). */
  readonly portOwner?: (replicaId: string, port: number) => Promise<PortOwner>;
  /** Present when the inner driver has it (the replica's file owner, ADR 0055). */
  readonly replicaUser?: RuntimeDriver["replicaUser"];

  constructor(
    private readonly inner: RuntimeDriver,
    private readonly metrics: DriverMetrics,
  ) {
    const portOwner = inner.portOwner?.bind(inner);
    if (portOwner) {
      this.portOwner = (replicaId, port) =>
        this.measure("portOwner", () => portOwner(replicaId, port));
    }
    const replicaUser = inner.replicaUser?.bind(inner);
    if (replicaUser) this.replicaUser = replicaUser;
  }

  get name(): DriverName {
    return this.inner.name;
  }

  async health(): Promise<{ ok: true } | { ok: false; reason: string }> {
    const started = process.hrtime.bigint();
    try {
      const health = await this.inner.health();
      this.record("health", health.ok ? "ok" : "unhealthy", started);
      return health;
    } catch (error) {
      this.record("health", driverResultOf(error), started);
      throw error;
    }
  }

  start(spec: ReplicaRunSpec): Promise<void> {
    return this.time("start", () => this.inner.start(spec), spec.replicaId);
  }

  stop(replicaId: string, graceMs: number, hurry?: AbortSignal): Promise<void> {
    return this.time("stop", () => this.inner.stop(replicaId, graceMs, hurry), replicaId);
  }

  remove(replicaId: string): Promise<void> {
    return this.time("remove", () => this.inner.remove(replicaId), replicaId);
  }

  status(replicaId: string): Promise<ReplicaRuntimeStatus> {
    return this.time("status", () => this.inner.status(replicaId), replicaId);
  }

  list(): Promise<string[]> {
    return this.time("list", () => this.inner.list());
  }

  exec(replicaId: string, command: string[], timeoutMs: number): Promise<ExecResult> {
    return this.time("exec", () => this.inner.exec(replicaId, command, timeoutMs), replicaId);
  }

  logs(
    replicaId: string,
    options: { follow: boolean; tailLines?: number; signal?: AbortSignal },
  ): AsyncIterable<LogLine> {
    const inner = this.inner;
    const count = (result: string) =>
      this.metrics.driverOperations.inc({ driver: inner.name, operation: "logs", result });
    return {
      async *[Symbol.asyncIterator]() {
        let result = "ok";
        try {
          yield* inner.logs(replicaId, options);
        } catch (error) {
          result = driverResultOf(error);
          throw error;
        } finally {
          count(result);
        }
      },
    };
  }

  private time<T>(operation: string, call: () => Promise<T>, replicaId?: string): Promise<T> {
    return withChildSpan(
      `driver.${operation}`,
      () => ({
        "cloudless.driver": this.inner.name,
        ...(replicaId ? { "cloudless.replica.id": replicaId } : {}),
      }),
      () => this.measure(operation, call),
    );
  }

  private async measure<T>(operation: string, call: () => Promise<T>): Promise<T> {
    const started = process.hrtime.bigint();
    try {
      const value = await call();
      this.record(operation, "ok", started);
      return value;
    } catch (error) {
      this.record(operation, driverResultOf(error), started);
      throw error;
    }
  }

  private record(operation: string, result: string, started: bigint): void {
    const driver = this.inner.name;
    this.metrics.driverOperations.inc({ driver, operation, result });
    this.metrics.driverOperationDuration.observe(
      { driver, operation },
      Number(process.hrtime.bigint() - started) / 1e9,
    );
  }
}

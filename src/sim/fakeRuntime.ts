/**
 * The runtime of a hollow node: a RuntimeDriver that runs nothing. A started replica
 * reads as running once a configurable delay has passed (what pulling and starting a
 * container would cost) and keeps running until it is stopped. State lives in one Map;
 * a hollow process holds thousands of these, so nothing here keeps more than it must.
 */
import type {
  DriverName,
  ExecResult,
  LogLine,
  ReplicaRunSpec,
  ReplicaRuntimeStatus,
  RuntimeDriver,
} from "../agent/drivers/driver.js";
import { DriverError } from "../agent/drivers/driver.js";

interface HollowReplica {
  state: "running" | "exited";
  startedAtMs: number;
  exitCode?: number;
  finishedAtMs?: number;
}

/** Told once per replica start, when the replica reads as running. */
export type StartedListener = (event: {
  replicaId: string;
  namespace: string;
  workload: string;
  atMs: number;
}) => void;

export interface FakeRuntimeOptions {
  /** Usually "container": the scheduler places image workloads on nodes that report it. */
  name?: DriverName;
  /** How long a start takes before the replica reads as running. */
  startDelayMs?: number;
  /** Wall-clock time (ms since the epoch); injected in tests. */
  nowMs?: () => number;
  onStarted?: StartedListener;
}

export class FakeRuntime implements RuntimeDriver {
  readonly name: DriverName;
  private readonly replicas = new Map<string, HollowReplica>();
  private readonly startDelayMs: number;
  private readonly nowMs: () => number;
  private readonly onStarted: StartedListener | undefined;
  /** Starts under way, so that a second start of the same replica waits for the first. */
  private readonly starting = new Map<string, Promise<void>>();

  constructor(options: FakeRuntimeOptions = {}) {
    this.name = options.name ?? "container";
    this.startDelayMs = Math.max(0, options.startDelayMs ?? 0);
    this.nowMs = options.nowMs ?? Date.now;
    this.onStarted = options.onStarted;
  }

  /** Replicas that read as running now. */
  get runningCount(): number {
    let count = 0;
    for (const replica of this.replicas.values()) if (replica.state === "running") count++;
    return count;
  }

  async health(): Promise<{ ok: true }> {
    return { ok: true };
  }

  async start(spec: ReplicaRunSpec): Promise<void> {
    const inFlight = this.starting.get(spec.replicaId);
    if (inFlight) return inFlight;
    if (this.replicas.get(spec.replicaId)?.state === "running") return;
    const started = this.startAfterDelay(spec).finally(() => this.starting.delete(spec.replicaId));
    this.starting.set(spec.replicaId, started);
    return started;
  }

  private async startAfterDelay(spec: ReplicaRunSpec): Promise<void> {
    if (this.startDelayMs > 0) {
      await new Promise((resolve) => setTimeout(resolve, this.startDelayMs));
    }
    const atMs = this.nowMs();
    this.replicas.set(spec.replicaId, { state: "running", startedAtMs: atMs });
    this.onStarted?.({
      replicaId: spec.replicaId,
      namespace: spec.namespace,
      workload: spec.workload,
      atMs,
    });
  }

  async stop(replicaId: string, _graceMs: number): Promise<void> {
    const replica = this.replicas.get(replicaId);
    if (replica?.state !== "running") return;
    replica.state = "exited";
    // What an engine reports for SIGTERM.
    replica.exitCode = 143;
    replica.finishedAtMs = this.nowMs();
  }

  async remove(replicaId: string): Promise<void> {
    if (this.replicas.get(replicaId)?.state === "running") {
      throw new DriverError("failed", `replica ${replicaId} is running; stop it first`);
    }
    this.replicas.delete(replicaId);
  }

  async status(replicaId: string): Promise<ReplicaRuntimeStatus> {
    const replica = this.replicas.get(replicaId);
    if (!replica) return { state: "missing" };
    return {
      state: replica.state,
      startedAtMs: replica.startedAtMs,
      ...(replica.exitCode !== undefined ? { exitCode: replica.exitCode } : {}),
      ...(replica.finishedAtMs !== undefined ? { finishedAtMs: replica.finishedAtMs } : {}),
    };
  }

  async list(): Promise<string[]> {
    return [...this.replicas.keys()];
  }

  async *logs(
    replicaId: string,
    _options: { follow: boolean; tailLines?: number; signal?: AbortSignal },
  ): AsyncIterable<LogLine> {
    if (!this.replicas.has(replicaId)) throw new DriverError("invalid", `no replica ${replicaId}`);
    yield { stream: "stdout", line: `hollow replica ${replicaId}: nothing runs here` };
  }

  async exec(replicaId: string, command: string[], _timeoutMs: number): Promise<ExecResult> {
    if (this.replicas.get(replicaId)?.state !== "running") {
      throw new DriverError("invalid", `replica ${replicaId} is not running`);
    }
    return { exitCode: 0, stdout: `${command.join(" ")}\n`, stderr: "" };
  }
}

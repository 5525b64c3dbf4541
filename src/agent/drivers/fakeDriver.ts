/**
 * An in-memory RuntimeDriver that runs nothing: the one fake of the repository, used by
 * the supervisor's tests (scripted exits, failing starts, hung calls, port owners) and by
 * the hollow nodes of the simulator and the benchmarks (thousands of agents in one
 * process, whose replicas only have to read as running). It lives beside the real
 * drivers, not under a testing/ folder, because the hollow nodes are built into dist/.
 *
 * A started replica "runs" (after `startDelayMs` on the injected clock, what pulling and
 * starting an image would cost) until it is stopped or a test makes it exit. Time comes
 * from the injected clock only.
 */
import type { Clock } from "../../lib/clock.js";
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

export type FakeDriverMethod =
  | "health"
  | "start"
  | "stop"
  | "remove"
  | "status"
  | "list"
  | "exec"
  | "portOwner";

export interface FakeDriverCall {
  method: FakeDriverMethod;
  replicaId?: string;
  atMs: number;
}

/** What the fake holds for one replica, as an engine would. */
export interface FakeReplica {
  spec: ReplicaRunSpec;
  state: "running" | "exited";
  exitCode?: number;
  oomKilled?: boolean;
  startedAtMs: number;
  finishedAtMs?: number;
}

/** Told once per replica start, when the replica reads as running. */
export type StartedListener = (event: {
  replicaId: string;
  namespace: string;
  workload: string;
  atMs: number;
}) => void;

export interface FakeDriverOptions {
  /**
   * How long a start takes before the replica reads as running, on the injected clock;
   * a second start of the same replica meanwhile waits for the first. Default 0: at once.
   */
  startDelayMs?: number;
  onStarted?: StartedListener;
  /**
   * Keep every call in `calls` for tests to inspect (default true). Hollow nodes turn it
   * off: a fleet makes millions of calls, and the log would only grow.
   */
  recordCalls?: boolean;
}

/**
 * Replicas run until a test makes them exit; starts can be made to fail or crash at
 * once, the engine can go away, and any method can be made to hang so deadlines can be
 * tested. Every call is recorded unless `recordCalls` is false.
 */
export class FakeDriver implements RuntimeDriver {
  readonly calls: FakeDriverCall[] = [];
  readonly replicas = new Map<string, FakeReplica>();
  private readonly startDelayMs: number;
  private readonly onStarted: StartedListener | undefined;
  private readonly recordCalls: boolean;
  /** Starts under way (with a start delay), so that a second start waits for the first. */
  private readonly starting = new Map<string, Promise<void>>();
  private readonly logLines = new Map<string, LogLine[]>();
  private unhealthyReason: string | undefined;
  private startError: DriverError | undefined;
  private readonly crashOnStartCodes = new Map<string, number>();
  private readonly hangs = new Map<
    FakeDriverMethod,
    { replicaId?: string; waiters: (() => void)[] }
  >();
  private readonly portOwners = new Map<number, PortOwner>();
  private execHandler: (replicaId: string, command: string[]) => ExecResult = (_id, command) => ({
    exitCode: 0,
    stdout: `${command.join(" ")}\n`,
    stderr: "",
  });

  constructor(
    readonly name: DriverName,
    private readonly clock: Clock,
    options: FakeDriverOptions = {},
  ) {
    this.startDelayMs = Math.max(0, options.startDelayMs ?? 0);
    this.onStarted = options.onStarted;
    this.recordCalls = options.recordCalls ?? true;
  }

  // --- scripting -------------------------------------------------------------------

  /** The engine goes away (every call fails with kind "unavailable") or comes back. */
  setAvailable(available: boolean, reason = "engine socket not answering"): void {
    this.unhealthyReason = available ? undefined : reason;
  }

  /** Every start fails with this error until called with undefined. */
  failStarts(error: DriverError | undefined): void {
    this.startError = error;
  }

  /** Every start of this replica exits at once with the code (undefined: runs normally). */
  crashOnStart(replicaId: string, exitCode: number | undefined): void {
    if (exitCode === undefined) this.crashOnStartCodes.delete(replicaId);
    else this.crashOnStartCodes.set(replicaId, exitCode);
  }

  /** A running replica exits now. */
  exit(replicaId: string, exitCode: number, options: { oomKilled?: boolean } = {}): void {
    const replica = this.replicas.get(replicaId);
    if (replica?.state !== "running") {
      throw new Error(`fake: replica ${replicaId} is not running`);
    }
    replica.state = "exited";
    replica.exitCode = exitCode;
    replica.finishedAtMs = this.clock.nowMs();
    if (options.oomKilled) replica.oomKilled = true;
  }

  /** Puts a replica on the "node" as if left there by a previous agent. */
  seed(spec: ReplicaRunSpec, state: "running" | "exited" = "running", exitCode?: number): void {
    this.replicas.set(spec.replicaId, {
      spec,
      state,
      startedAtMs: this.clock.nowMs(),
      ...(state === "exited" ? { exitCode: exitCode ?? 0, finishedAtMs: this.clock.nowMs() } : {}),
    });
  }

  /**
   * Calls to `method` (for `replicaId`, or any) wait until the returned function is
   * called; the call is recorded when it arrives.
   */
  hang(method: FakeDriverMethod, replicaId?: string): () => void {
    const entry = { ...(replicaId ? { replicaId } : {}), waiters: [] as (() => void)[] };
    this.hangs.set(method, entry);
    return () => {
      if (this.hangs.get(method) === entry) this.hangs.delete(method);
      for (const release of entry.waiters.splice(0)) release();
    };
  }

  /** Lines logs() will return for the replica (without any: one line saying nothing runs). */
  appendLog(replicaId: string, line: LogLine): void {
    const lines = this.logLines.get(replicaId) ?? [];
    lines.push(line);
    this.logLines.set(replicaId, lines);
  }

  /**
   * What portOwner() answers for `port` from now on (undefined: the default, the
   * replica itself while it runs, nobody otherwise).
   */
  setPortOwner(port: number, owner: PortOwner | undefined): void {
    if (owner === undefined) this.portOwners.delete(port);
    else this.portOwners.set(port, owner);
  }

  /** How exec answers from now on (default: exit code 0, the command echoed on stdout). */
  onExec(handler: (replicaId: string, command: string[]) => ExecResult): void {
    this.execHandler = handler;
  }

  // --- inspection ------------------------------------------------------------------

  callsTo(method: FakeDriverMethod, replicaId?: string): FakeDriverCall[] {
    return this.calls.filter(
      (call) => call.method === method && (replicaId === undefined || call.replicaId === replicaId),
    );
  }

  /** Replicas that read as running now. */
  get runningCount(): number {
    let count = 0;
    for (const replica of this.replicas.values()) if (replica.state === "running") count++;
    return count;
  }

  // --- RuntimeDriver ---------------------------------------------------------------

  async health(): Promise<{ ok: true } | { ok: false; reason: string }> {
    await this.enter("health");
    return this.unhealthyReason === undefined
      ? { ok: true }
      : { ok: false, reason: this.unhealthyReason };
  }

  async start(spec: ReplicaRunSpec): Promise<void> {
    await this.enter("start", spec.replicaId);
    this.assertAvailable();
    if (this.startError) throw this.startError;
    const inFlight = this.starting.get(spec.replicaId);
    if (inFlight) return inFlight;
    if (this.replicas.get(spec.replicaId)?.state === "running") return;
    if (this.startDelayMs === 0) {
      this.begin(spec);
      return;
    }
    const started = new Promise<void>((resolve) => {
      this.clock.setTimeout(resolve, this.startDelayMs);
    })
      .then(() => this.begin(spec))
      .finally(() => this.starting.delete(spec.replicaId));
    this.starting.set(spec.replicaId, started);
    return started;
  }

  async stop(replicaId: string, _graceMs: number): Promise<void> {
    await this.enter("stop", replicaId);
    this.assertAvailable();
    const replica = this.replicas.get(replicaId);
    if (replica?.state === "running") {
      replica.state = "exited";
      // What an engine reports for SIGTERM.
      replica.exitCode = 143;
      replica.finishedAtMs = this.clock.nowMs();
    }
  }

  async remove(replicaId: string): Promise<void> {
    await this.enter("remove", replicaId);
    this.assertAvailable();
    const replica = this.replicas.get(replicaId);
    if (replica?.state === "running") {
      throw new DriverError("failed", `replica ${replicaId} is running; stop it first`);
    }
    this.replicas.delete(replicaId);
    this.logLines.delete(replicaId);
  }

  async status(replicaId: string): Promise<ReplicaRuntimeStatus> {
    await this.enter("status", replicaId);
    this.assertAvailable();
    const replica = this.replicas.get(replicaId);
    if (!replica) return { state: "missing" };
    return {
      state: replica.state,
      startedAtMs: replica.startedAtMs,
      ...(replica.exitCode !== undefined ? { exitCode: replica.exitCode } : {}),
      ...(replica.finishedAtMs !== undefined ? { finishedAtMs: replica.finishedAtMs } : {}),
      ...(replica.oomKilled ? { oomKilled: true } : {}),
    };
  }

  async list(): Promise<string[]> {
    await this.enter("list");
    this.assertAvailable();
    return [...this.replicas.keys()];
  }

  async *logs(
    replicaId: string,
    _options: { follow: boolean; tailLines?: number; signal?: AbortSignal },
  ): AsyncIterable<LogLine> {
    this.assertAvailable();
    if (!this.replicas.has(replicaId)) throw new DriverError("invalid", `no replica ${replicaId}`);
    const lines = this.logLines.get(replicaId);
    if (lines) yield* lines;
    else yield { stream: "stdout", line: `fake replica ${replicaId}: nothing runs here` };
  }

  async exec(replicaId: string, command: string[], _timeoutMs: number): Promise<ExecResult> {
    await this.enter("exec", replicaId);
    this.assertAvailable();
    const replica = this.replicas.get(replicaId);
    if (replica?.state !== "running") {
      throw new DriverError("invalid", `replica ${replicaId} is not running`);
    }
    return this.execHandler(replicaId, command);
  }

  async portOwner(replicaId: string, port: number): Promise<PortOwner> {
    await this.enter("portOwner", replicaId);
    this.assertAvailable();
    const scripted = this.portOwners.get(port);
    if (scripted) return scripted;
    return this.replicas.get(replicaId)?.state === "running"
      ? { kind: "replica" }
      : { kind: "nobody" };
  }

  /** The replica reads as running (or as crashed at once, if a test asked for it). */
  private begin(spec: ReplicaRunSpec): void {
    const nowMs = this.clock.nowMs();
    const crashCode = this.crashOnStartCodes.get(spec.replicaId);
    this.replicas.set(spec.replicaId, {
      spec: structuredClone(spec),
      state: crashCode === undefined ? "running" : "exited",
      startedAtMs: nowMs,
      ...(crashCode === undefined ? {} : { exitCode: crashCode, finishedAtMs: nowMs }),
    });
    if (crashCode === undefined) {
      this.onStarted?.({
        replicaId: spec.replicaId,
        namespace: spec.namespace,
        workload: spec.workload,
        atMs: nowMs,
      });
    }
  }

  private async enter(method: FakeDriverMethod, replicaId?: string): Promise<void> {
    if (this.recordCalls) {
      this.calls.push({ method, ...(replicaId ? { replicaId } : {}), atMs: this.clock.nowMs() });
    }
    const hang = this.hangs.get(method);
    if (hang && (hang.replicaId === undefined || hang.replicaId === replicaId)) {
      await new Promise<void>((resolve) => hang.waiters.push(resolve));
    }
  }

  private assertAvailable(): void {
    if (this.unhealthyReason !== undefined) {
      throw new DriverError(
        "unavailable",
        `${this.name} engine unavailable: ${this.unhealthyReason}`,
      );
    }
  }
}

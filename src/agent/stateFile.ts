/**
 * The agent's state on disk (NFR-A1, ADR 0016): the desired set the coordinator last
 * gave this node and what the supervisor knows about the replicas it runs (host ports,
 * the generation each was started with, restart counts). An agent that restarts while
 * every coordinator is unreachable restores it before it connects, adopts the replicas
 * that still run and starts the ones that are gone.
 *
 * Which process or container *is* a replica is not duplicated here: the drivers keep
 * that next to the replica (the process driver's process.json with the pid, its start
 * time in clock ticks and its cgroup, so a recycled pid is never adopted; the container
 * driver's labels with the node name and replica id), and adoption asks them.
 */
import { readFile } from "node:fs/promises";
import * as path from "node:path";
import { writeSecretFile } from "../lib/atomicFile.js";
import type { Clock } from "../lib/clock.js";
import type { Logger } from "../observe/logger.js";
import type { DesiredReplica, SupervisorSnapshot } from "./supervisor/supervisorTypes.js";

export const stateFileName = "agent-state.json";

/** The file's format; `version` changes only with an incompatible change. */
interface StateFile {
  version: 1;
  nodeName: string;
  /** When it was written (ISO 8601), for people reading the file. */
  savedAt: string;
  supervisor: SupervisorSnapshot;
}

export type LoadedState =
  | { kind: "loaded"; snapshot: SupervisorSnapshot }
  | { kind: "absent" }
  /** Unreadable or not what this agent wrote: the agent starts without it. */
  | { kind: "unusable"; reason: string };

/** Reads and checks the state file; never throws (a broken file must not stop the agent). */
export async function loadAgentState(dataDir: string, nodeName: string): Promise<LoadedState> {
  const file = path.join(dataDir, stateFileName);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { kind: "absent" };
    return { kind: "unusable", reason: `cannot read ${file}: ${errorMessage(error)}` };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { kind: "unusable", reason: `${file} is not JSON (${errorMessage(error)})` };
  }
  const problem = checkStateFile(value, nodeName);
  if (problem) return { kind: "unusable", reason: `${file}: ${problem}` };
  return { kind: "loaded", snapshot: (value as StateFile).supervisor };
}

/**
 * What is wrong with a parsed state file, or undefined. Checks every field the
 * supervisor relies on, so a damaged file is refused here rather than crashing later.
 */
export function checkStateFile(value: unknown, nodeName: string): string | undefined {
  if (!isObject(value)) return "not a JSON object";
  if (value.version !== 1) return `unsupported version ${JSON.stringify(value.version)}`;
  if (value.nodeName !== nodeName) {
    return `written for node ${JSON.stringify(value.nodeName)}, not "${nodeName}"`;
  }
  const snapshot = value.supervisor;
  if (!isObject(snapshot) || snapshot.version !== 1) return "supervisor: missing or wrong version";
  if (snapshot.desired !== null) {
    if (!Array.isArray(snapshot.desired)) return "supervisor.desired: not a list";
    for (const [index, item] of snapshot.desired.entries()) {
      const problem = checkDesired(item);
      if (problem) return `supervisor.desired[${index}]: ${problem}`;
    }
  }
  if (!isObject(snapshot.replicas)) return "supervisor.replicas: not an object";
  for (const [id, replica] of Object.entries(snapshot.replicas)) {
    if (!isObject(replica) || !isObject(replica.hostPorts)) {
      return `supervisor.replicas.${id}: no hostPorts`;
    }
    if (!Object.values(replica.hostPorts).every(isPort)) {
      return `supervisor.replicas.${id}.hostPorts: not port numbers`;
    }
    for (const key of ["runningGeneration", "restarts"] as const) {
      if (replica[key] !== undefined && !isCount(replica[key])) {
        return `supervisor.replicas.${id}.${key}: not a whole number`;
      }
    }
  }
  return undefined;
}

function checkDesired(item: unknown): string | undefined {
  if (!isObject(item) || !isObject(item.spec)) return "no spec";
  const spec = item.spec as Partial<Record<keyof DesiredReplica["spec"], unknown>>;
  if (typeof spec.replicaId !== "string" || spec.replicaId.length === 0) return "no replicaId";
  if (typeof spec.namespace !== "string" || typeof spec.workload !== "string") {
    return "no namespace or workload";
  }
  if (spec.driver !== "container" && spec.driver !== "process") return "unknown driver";
  if (!isObject(spec.env) || !Object.values(spec.env).every((v) => typeof v === "string")) {
    return "env is not a string map";
  }
  if (!Array.isArray(spec.ports) || !spec.ports.every(isPortMapping)) return "bad ports";
  if (!isObject(spec.resources)) return "no resources";
  for (const key of ["command", "args"] as const) {
    const list = spec[key];
    if (list !== undefined && !(Array.isArray(list) && list.every((v) => typeof v === "string"))) {
      return `${key} is not a string list`;
    }
  }
  if (!["Always", "OnFailure", "Never"].includes(item.restartPolicy as string)) {
    return "unknown restartPolicy";
  }
  if (!isCount(item.generation)) return "generation is not a whole number";
  if (typeof item.terminationGracePeriodSeconds !== "number") return "no grace period";
  for (const key of ["liveness", "readiness"] as const) {
    const probe = item[key];
    if (probe !== undefined && !(isObject(probe) && isObject(probe.action))) {
      return `${key} probe has no action`;
    }
  }
  return undefined;
}

function isPortMapping(value: unknown): boolean {
  return (
    isObject(value) &&
    typeof value.name === "string" &&
    isPort(value.containerPort) &&
    (value.hostPort === 0 || isPort(value.hostPort)) &&
    (value.protocol === "tcp" || value.protocol === "udp")
  );
}

function isPort(value: unknown): boolean {
  return Number.isInteger(value) && (value as number) > 0 && (value as number) < 65_536;
}

function isCount(value: unknown): boolean {
  return Number.isInteger(value) && (value as number) >= 0;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Writes the file atomically and durably (lib/atomicFile.ts): a crash leaves the old file
 * or the new one, never half, and the new one survives a power loss once this resolves.
 */
export async function writeAgentState(
  dataDir: string,
  nodeName: string,
  snapshot: SupervisorSnapshot,
  nowMs: number,
): Promise<void> {
  const content: StateFile = {
    version: 1,
    nodeName,
    savedAt: new Date(nowMs).toISOString(),
    supervisor: snapshot,
  };
  await writeSecretFile(path.join(dataDir, stateFileName), `${JSON.stringify(content)}\n`);
}

export interface AgentStateWriterOptions {
  dataDir: string;
  nodeName: string;
  clock: Clock;
  logger: Logger;
  /** What to write; read when the write happens, so a write always carries the latest. */
  snapshot: () => SupervisorSnapshot;
  /** Runtime changes (phases, restarts) are written at most this often. */
  minIntervalMs?: number;
}

const defaultMinIntervalMs = 2_000;

/**
 * Keeps the state file current without writing on every report: a changed desired set
 * is written at once (it is what a restart must bring back), runtime changes at most
 * once per minIntervalMs. Writes never overlap; requests during a write coalesce.
 */
export class AgentStateWriter {
  private readonly minIntervalMs: number;
  private lastWriteAtMs = Number.NEGATIVE_INFINITY;
  private writing: Promise<void> | undefined;
  /** A write is wanted after the one in flight (or the rate limit) allows it. */
  private pending = false;
  /** The pending write is for a durable change (not rate limited). */
  private pendingUrgent = false;
  private cancelTimer: (() => void) | undefined;
  private lastError = "";
  private closing = false;
  private closed = false;

  constructor(private readonly options: AgentStateWriterOptions) {
    this.minIntervalMs = options.minIntervalMs ?? defaultMinIntervalMs;
  }

  /**
   * The desired set, or a replica's host ports or generation, changed — facts a restarted
   * agent needs to adopt or restart its replicas as they were: write as soon as the write
   * in flight is done.
   */
  durableChanged(): void {
    this.request(true);
  }

  /** Something about the replicas changed: write within minIntervalMs. */
  runtimeChanged(): void {
    this.request(false);
  }

  /** Resolves once no write is in flight (a rate-limited one may still be scheduled). */
  async idle(): Promise<void> {
    while (this.writing) await this.writing;
  }

  /** Writes now (after the write in flight) and stops scheduling further writes. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true; // from here on, requests are no-ops: this write is the last
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    await this.writing;
    await this.writeOnce();
    this.closed = true;
  }

  private request(urgent: boolean): void {
    if (this.closing) return;
    this.pending = true;
    this.pendingUrgent ||= urgent;
    if (this.writing) return; // the write in flight re-checks pending when it ends
    const waitMs = this.pendingUrgent
      ? 0
      : this.lastWriteAtMs + this.minIntervalMs - this.options.clock.nowMs();
    if (waitMs <= 0) {
      this.cancelTimer?.();
      this.cancelTimer = undefined;
      this.startWrite();
    } else if (!this.cancelTimer) {
      this.cancelTimer = this.options.clock.setTimeout(() => {
        this.cancelTimer = undefined;
        if (this.pending && !this.writing) this.startWrite();
      }, waitMs);
    }
  }

  private startWrite(): void {
    this.pending = false;
    this.pendingUrgent = false;
    this.writing = this.writeOnce().finally(() => {
      this.writing = undefined;
      if (this.pending) this.request(this.pendingUrgent);
    });
  }

  private async writeOnce(): Promise<void> {
    if (this.closed) return;
    this.lastWriteAtMs = this.options.clock.nowMs();
    try {
      await writeAgentState(
        this.options.dataDir,
        this.options.nodeName,
        this.options.snapshot(),
        this.lastWriteAtMs,
      );
      this.lastError = "";
    } catch (error) {
      // Logged once per distinct failure (a full disk would otherwise log every round). The
      // errno code tells failures apart: the message names a temporary file new each time.
      const message = errorMessage(error);
      const failure = (error as NodeJS.ErrnoException).code ?? message;
      if (failure !== this.lastError) {
        this.lastError = failure;
        this.options.logger.warn(
          { err: message },
          "cannot write the agent state file; an agent restart without a coordinator would not bring replicas back",
        );
      }
    }
  }
}

/**
 * What leaves the supervisor: the report of each replica for the coordinator (sent
 * only when something in it changed) and the snapshot the agent keeps on disk for its
 * next start (NFR-A1). Pure builders, and the one stateful piece: the emitter that
 * remembers what it last sent.
 */
import type { Logger } from "../../observe/logger.js";
import type {
  DesiredReplica,
  ReplicaPhase,
  ReplicaReport,
  SupervisorSnapshot,
} from "./supervisorTypes.js";

/** What a report is built from: the supervisor's record of one replica. */
export interface ReportView {
  id: string;
  desired: DesiredReplica;
  phase: ReplicaPhase;
  reason: string;
  message: string;
  exitCode?: number;
  startedAtMs?: number;
  restarts: number;
  hostPorts: Record<string, number>;
  /** Shown instead of reason/message while the driver cannot be asked. */
  driverProblem?: { reason: string; message: string } | undefined;
  readinessPassing: boolean;
  lastTransitionAtMs: number;
}

/** Running and its readiness probe passing (or Running with no readiness probe). */
export function isReady(view: Pick<ReportView, "phase" | "desired" | "readinessPassing">) {
  return (
    view.phase === "Running" && (view.desired.readiness === undefined || view.readinessPassing)
  );
}

export function reportOf(view: ReportView): ReplicaReport {
  return {
    replicaId: view.id,
    phase: view.phase,
    ready: isReady(view),
    restarts: view.restarts,
    reason: view.driverProblem?.reason ?? view.reason,
    message: view.driverProblem?.message ?? view.message,
    ...(view.exitCode !== undefined ? { exitCode: view.exitCode } : {}),
    ...(view.startedAtMs !== undefined ? { startedAtMs: view.startedAtMs } : {}),
    hostPorts: { ...view.hostPorts },
    driver: view.desired.spec.driver,
    lastTransitionAtMs: view.lastTransitionAtMs,
  };
}

/** The report of every replica, sorted by id. */
export function reportsOf(views: Iterable<ReportView>): ReplicaReport[] {
  return [...views].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)).map(reportOf);
}

/**
 * Hands the reports to `onReport` when they differ from the last ones handed over: a
 * sync round that changed nothing sends nothing. A throwing handler is logged; the
 * supervisor goes on.
 */
export class ReportEmitter {
  private lastKey = "";

  constructor(
    private readonly onReport: (reports: ReplicaReport[]) => void,
    private readonly logger: Logger,
  ) {}

  emitIfChanged(reports: ReplicaReport[]): void {
    const key = JSON.stringify(reports);
    if (key === this.lastKey) return;
    this.lastKey = key;
    try {
      this.onReport(reports);
    } catch (error) {
      this.logger.error({ err: error }, "onReport handler threw");
    }
  }
}

/** What a snapshot keeps of one supervised replica. */
export interface SnapshotView {
  hostPorts: Record<string, number>;
  runningGeneration?: number;
  restarts: number;
}

/**
 * The state to persist for autonomy (NFR-A1), plain data: the desired set, and per
 * replica its host ports, running generation and restarts — the supervised replicas'
 * over what a restored snapshot knew of replicas not supervised (yet).
 */
export function snapshotOf(
  desired: ReadonlyMap<string, DesiredReplica> | null,
  supervised: Iterable<[string, SnapshotView]>,
  restored: SupervisorSnapshot["replicas"],
): SupervisorSnapshot {
  const replicas: SupervisorSnapshot["replicas"] = structuredClone(restored);
  for (const [id, replica] of supervised) {
    replicas[id] = {
      hostPorts: { ...replica.hostPorts },
      ...(replica.runningGeneration !== undefined
        ? { runningGeneration: replica.runningGeneration }
        : {}),
      restarts: replica.restarts,
    };
  }
  return {
    version: 1,
    desired: desired ? structuredClone([...desired.values()]) : null,
    replicas,
  };
}

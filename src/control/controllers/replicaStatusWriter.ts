import type { Clock } from "../../lib/clock.js";
import type { Op, Store } from "../store/store.js";
import {
  type ReplicaPhase,
  type ReplicaRecord,
  type ReplicaStatusRecord,
  replicaPrefix,
} from "./records.js";

export interface ReportedReplica {
  replicaId: string;
  phase: string;
  ready: boolean;
  restarts: number;
  reason: string;
  message: string;
  exitCode?: number;
  startedAtMs?: number;
  hostPorts: Record<string, number>;
  driver: string;
}

const phases = new Set<ReplicaPhase>([
  "Pending",
  "Scheduled",
  "Starting",
  "Running",
  "CrashLoopBackOff",
  "Succeeded",
  "Failed",
  "Stopped",
  "Stopping",
]);

/**
 * Writes what agents report about their replicas into the replica records (the
 * coordinator is the only writer of the store). A full report also confirms which
 * stopped replicas are gone, so their records can be removed.
 */
export class ReplicaStatusWriter {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  /** The last report applied per node: agents resend unchanged full reports every 10 s. */
  private readonly lastApplied = new Map<string, string>();

  async apply(nodeName: string, reports: ReportedReplica[], full: boolean): Promise<void> {
    // An identical report changes nothing the previous one did not already write, so
    // it is not worth reading the replicas again (the dominant cost at scale).
    const fingerprint = JSON.stringify([full, reports]);
    if (this.lastApplied.get(nodeName) === fingerprint) return;
    this.lastApplied.delete(nodeName);
    for (let attempt = 0; attempt < 5; attempt++) {
      if (await this.tryApply(nodeName, reports, full)) {
        if (this.lastApplied.size > 100_000) this.lastApplied.clear();
        this.lastApplied.set(nodeName, fingerprint);
        return;
      }
    }
  }

  /** Forget what a node last reported (its stream reconnected, or it was deleted). */
  forget(nodeName: string): void {
    this.lastApplied.delete(nodeName);
  }

  private async tryApply(
    nodeName: string,
    reports: ReportedReplica[],
    full: boolean,
  ): Promise<boolean> {
    const all = await this.store.range(replicaPrefix);
    const onNode = all.kvs
      .map((kv) => ({ kv, record: JSON.parse(kv.value) as ReplicaRecord }))
      .filter(({ record }) => record.node === nodeName);
    const reported = new Map(reports.map((r) => [r.replicaId, r]));
    const compare: { key: string; target: "modRevision"; op: "=="; modRevision: number }[] = [];
    const ops: Op[] = [];
    const now = this.clock.nowMs();
    for (const { kv, record } of onNode) {
      const report = reported.get(record.id);
      if (!report) {
        if (full && record.desired === "Stopped") {
          compare.push({
            key: kv.key,
            target: "modRevision",
            op: "==",
            modRevision: kv.modRevision,
          });
          ops.push({ type: "delete", key: kv.key });
        }
        continue;
      }
      const status: ReplicaStatusRecord = {
        phase: phases.has(report.phase as ReplicaPhase)
          ? (report.phase as ReplicaPhase)
          : "Pending",
        ready: report.ready,
        restarts: report.restarts,
        reason: report.reason,
        message: report.message,
        ...(report.exitCode !== undefined ? { exitCode: report.exitCode } : {}),
        ...(report.startedAtMs ? { startedAtMs: report.startedAtMs } : {}),
        hostPorts: report.hostPorts,
        driver: report.driver,
        reportedAtMs: now,
      };
      if (sameStatus(record.status, status)) continue;
      compare.push({ key: kv.key, target: "modRevision", op: "==", modRevision: kv.modRevision });
      ops.push({ type: "put", key: kv.key, value: JSON.stringify({ ...record, status }) });
    }
    if (ops.length === 0) return true;
    const result = await this.store.txn({ compare, success: ops });
    return result.succeeded;
  }
}

function sameStatus(a: ReplicaStatusRecord | undefined, b: ReplicaStatusRecord): boolean {
  if (!a) return false;
  const { reportedAtMs: _a, ...restA } = a;
  const { reportedAtMs: _b, ...restB } = b;
  return JSON.stringify(restA) === JSON.stringify(restB);
}

import type { ReplicaRecord } from "./records.js";

interface AwaitedReplacement {
  /** When the node went Lost (its lastTransitionAtMs, coordinator clock). */
  lostAtMs: number;
  /** When the controller forgot the replica that ran there; replacements are newer. */
  forgottenAtMs: number;
}

/** Entries older than this are dropped unobserved: the workload was never made whole. */
const defaultMaxWaitMs = 3_600_000;
/** Bound on remembered losses, whatever happens to the workloads. */
const maxEntries = 10_000;

/**
 * Measures the time from a node's loss to a replacement Running (F1, REQ-031): the
 * controller notes each replica it forgets because its node is Lost, and each pass
 * hands over the replicas it read; the first replica of the same workload that was
 * created at or after the forget and is reported Running ends the oldest waiting entry.
 *
 * Approximations: a replica created after the forget for another reason (a scale-up)
 * counts as the replacement; the end time is when the coordinator stored the Running
 * report (`status.reportedAtMs`), which is later than the first Running report when
 * the status changed again before the controller's next pass; losses are not
 * remembered across a coordinator restart.
 */
export class ReplacementTimer {
  private readonly waiting = new Map<string, AwaitedReplacement[]>();
  /** Replicas already matched, so one replacement never ends two entries. */
  private readonly matched = new Set<string>();
  private entries = 0;

  constructor(
    private readonly observe: (seconds: number) => void,
    private readonly maxWaitMs = defaultMaxWaitMs,
  ) {}

  /** A replica of `workload` on a node that went Lost at `lostAtMs` was forgotten. */
  noteForgotten(workload: string, lostAtMs: number, forgottenAtMs: number): void {
    if (this.entries >= maxEntries) return;
    const list = this.waiting.get(workload) ?? [];
    list.push({ lostAtMs, forgottenAtMs });
    this.waiting.set(workload, list);
    this.entries++;
  }

  /** Number of losses still waiting for a replacement (tests). */
  get pending(): number {
    return this.entries;
  }

  /** Matches Running replicas to waiting losses; call with each pass's replicas. */
  update(replicasByWorkload: ReadonlyMap<string, readonly ReplicaRecord[]>, nowMs: number): void {
    if (this.waiting.size === 0) {
      // A replica matched earlier was created before any loss noted from now on, so it
      // can never match one: nothing to remember, nothing to walk.
      this.matched.clear();
      return;
    }
    const present = new Set<string>();
    for (const replicas of replicasByWorkload.values()) {
      for (const replica of replicas) present.add(replica.id);
    }
    for (const id of this.matched) if (!present.has(id)) this.matched.delete(id);

    for (const [workload, list] of this.waiting) {
      const running = (replicasByWorkload.get(workload) ?? [])
        .filter((r) => r.status?.phase === "Running" && !this.matched.has(r.id))
        .sort((a, b) => (a.status?.reportedAtMs ?? 0) - (b.status?.reportedAtMs ?? 0));
      list.sort((a, b) => a.forgottenAtMs - b.forgottenAtMs);
      const kept: AwaitedReplacement[] = [];
      for (const entry of list) {
        const index = running.findIndex((r) => r.createdAtMs >= entry.forgottenAtMs);
        const replacement = index >= 0 ? running[index] : undefined;
        if (replacement?.status) {
          running.splice(index, 1);
          this.matched.add(replacement.id);
          this.observe(Math.max(0, replacement.status.reportedAtMs - entry.lostAtMs) / 1000);
        } else if (nowMs - entry.forgottenAtMs < this.maxWaitMs) {
          kept.push(entry);
        }
      }
      this.entries -= list.length - kept.length;
      if (kept.length > 0) this.waiting.set(workload, kept);
      else this.waiting.delete(workload);
    }
  }
}

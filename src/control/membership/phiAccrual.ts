/**
 * Phi-accrual failure detector (Hayashibara et al.), in the form Akka uses: the
 * inter-arrival times of heartbeats are modelled as a normal distribution and phi
 * is -log10 of the probability that a heartbeat is still to come after the silence
 * observed so far. phi 1 ≈ 10% chance of a false verdict, phi 8 ≈ 1e-8.
 *
 * Adapting to the observed distribution is what lets a threshold be tight on a
 * steady LAN and forgiving on a jittery Wi-Fi or cellular link.
 */
export interface PhiAccrualOptions {
  /** Heartbeat intervals remembered. */
  windowSize: number;
  /** Floor on the standard deviation, so a very regular sender is not judged on noise. */
  minStdDeviationMs: number;
  /** Pause tolerated on top of the mean, e.g. for garbage collection. */
  acceptableHeartbeatPauseMs: number;
  /** The interval assumed before two heartbeats have been seen. */
  firstHeartbeatEstimateMs: number;
}

export const defaultPhiAccrualOptions: PhiAccrualOptions = {
  windowSize: 100,
  minStdDeviationMs: 200,
  acceptableHeartbeatPauseMs: 0,
  firstHeartbeatEstimateMs: 1000,
};

export class PhiAccrualDetector {
  private readonly intervals: number[] = [];
  private next = 0;
  private sum = 0;
  private sumOfSquares = 0;
  private lastHeartbeatMs: number | undefined;

  constructor(private readonly options: PhiAccrualOptions = defaultPhiAccrualOptions) {
    // Seed with the estimate (mean) ± a quarter, as Akka does, so phi is meaningful
    // from the first heartbeat on.
    const estimate = options.firstHeartbeatEstimateMs;
    this.record(estimate - estimate / 4);
    this.record(estimate + estimate / 4);
  }

  /** The time of the last heartbeat, if any. */
  get lastMs(): number | undefined {
    return this.lastHeartbeatMs;
  }

  heartbeat(nowMs: number): void {
    if (this.lastHeartbeatMs !== undefined) {
      const interval = nowMs - this.lastHeartbeatMs;
      if (interval > 0) this.record(interval);
    }
    this.lastHeartbeatMs = nowMs;
  }

  /** Restart the silence clock without adding an interval (e.g. after a new leader takes over). */
  resetSilence(nowMs: number): void {
    this.lastHeartbeatMs = nowMs;
  }

  phi(nowMs: number): number {
    if (this.lastHeartbeatMs === undefined) return 0;
    const elapsed = nowMs - this.lastHeartbeatMs;
    const count = this.intervals.length;
    const mean = this.sum / count;
    const variance = Math.max(0, this.sumOfSquares / count - mean * mean);
    const std = Math.max(Math.sqrt(variance), this.options.minStdDeviationMs);
    return phiOf(elapsed, mean + this.options.acceptableHeartbeatPauseMs, std);
  }

  private record(intervalMs: number): void {
    if (this.intervals.length < this.options.windowSize) {
      this.intervals.push(intervalMs);
    } else {
      const evicted = this.intervals[this.next] ?? 0;
      this.sum -= evicted;
      this.sumOfSquares -= evicted * evicted;
      this.intervals[this.next] = intervalMs;
      this.next = (this.next + 1) % this.options.windowSize;
    }
    this.sum += intervalMs;
    this.sumOfSquares += intervalMs * intervalMs;
  }
}

/** phi for a normal distribution, with the logistic approximation of its CDF. */
export function phiOf(elapsedMs: number, meanMs: number, stdMs: number): number {
  const y = (elapsedMs - meanMs) / stdMs;
  const e = Math.exp(-y * (1.5976 + 0.070566 * y * y));
  if (elapsedMs > meanMs) return -Math.log10(e / (1 + e));
  return -Math.log10(1 - 1 / (1 + e));
}

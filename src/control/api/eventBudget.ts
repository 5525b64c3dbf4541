/**
 * A token bucket per source host for security events written on behalf of anonymous
 * callers, so a flood of bad enrollments cannot turn into a flood of store writes.
 * Events beyond the budget are counted, and the count is reported with the next event
 * that fits.
 */
export class EventBudget {
  private readonly buckets = new Map<
    string,
    { tokens: number; updatedMs: number; suppressed: number }
  >();

  constructor(
    private readonly capacity = 20,
    private readonly refillPerSecond = 1,
    private readonly maxHosts = 10_000,
  ) {}

  /** Returns how many earlier events were suppressed, or undefined if this one must be dropped. */
  take(address: string, nowMs: number): number | undefined {
    const host = address.replace(/:\d+$/, "");
    let bucket = this.buckets.get(host);
    if (!bucket) {
      if (this.buckets.size >= this.maxHosts) this.buckets.clear();
      bucket = { tokens: this.capacity, updatedMs: nowMs, suppressed: 0 };
      this.buckets.set(host, bucket);
    }
    bucket.tokens = Math.min(
      this.capacity,
      bucket.tokens + ((nowMs - bucket.updatedMs) / 1000) * this.refillPerSecond,
    );
    bucket.updatedMs = nowMs;
    if (bucket.tokens < 1) {
      bucket.suppressed += 1;
      return undefined;
    }
    bucket.tokens -= 1;
    const suppressed = bucket.suppressed;
    bucket.suppressed = 0;
    return suppressed;
  }
}

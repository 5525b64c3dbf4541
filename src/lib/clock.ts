/**
 * Time is injected so controllers and detectors run under simulated time in tests
 * and in the simulator (DESIGN.md, decision 9).
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  nowMs(): number;
  /** Calls fn after delayMs; returns a function that cancels it. */
  setTimeout(fn: () => void, delayMs: number): () => void;
}

export const systemClock: Clock = {
  nowMs: () => Date.now(),
  setTimeout(fn, delayMs) {
    const handle = setTimeout(fn, delayMs);
    handle.unref?.();
    return () => clearTimeout(handle);
  },
};

/** A clock that only moves when told to; timers fire in due order on advance. */
export class ManualClock implements Clock {
  private current: number;
  private timers: { dueMs: number; seq: number; fn: () => void }[] = [];
  private seq = 0;

  constructor(startMs = 1_700_000_000_000) {
    this.current = startMs;
  }

  nowMs(): number {
    return this.current;
  }

  setTimeout(fn: () => void, delayMs: number): () => void {
    const timer = { dueMs: this.current + Math.max(0, delayMs), seq: this.seq++, fn };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((t) => t !== timer);
    };
  }

  /**
   * Moves time forward without firing timers, as a blocked event loop does; the next
   * advance() fires what fell due meanwhile, late.
   */
  stall(deltaMs: number): void {
    this.current += deltaMs;
  }

  /** Moves time forward, firing every timer that falls due, in order. */
  advance(deltaMs: number): void {
    const target = this.current + deltaMs;
    for (;;) {
      this.timers.sort((a, b) => a.dueMs - b.dueMs || a.seq - b.seq);
      const next = this.timers[0];
      if (!next || next.dueMs > target) break;
      this.timers.shift();
      // After a stall() timers fire late, at the current time, as they do in Node.
      this.current = Math.max(this.current, next.dueMs);
      next.fn();
    }
    this.current = target;
  }
}

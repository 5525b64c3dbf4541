import type { Clock } from "../../lib/clock.js";
import type { ProbeKind, ProbeResult, ProbeSpec } from "./probeTypes.js";

export type ProbeStatus = "passing" | "failing";

export interface ProbeState {
  kind: ProbeKind;
  status: ProbeStatus;
  consecutiveSuccesses: number;
  consecutiveFailures: number;
  /** The last recorded result, if any. */
  lastResult?: ProbeResult & { atMs: number };
  lastTransitionAtMs: number;
}

/** Probe timings in milliseconds with nonsense values clamped, so no loop can spin. */
export interface ProbeTimings {
  periodMs: number;
  timeoutMs: number;
  initialDelayMs: number;
  failureThreshold: number;
  successThreshold: number;
}

/** A probe period below this would turn the probe loop into a busy loop. */
const minPeriodMs = 100;

/** Converts a spec's seconds to milliseconds, clamping values Kubernetes would reject. */
export function probeTimings(spec: ProbeSpec): ProbeTimings {
  const finiteOr = (value: number, fallback: number) => (Number.isFinite(value) ? value : fallback);
  return {
    periodMs: Math.max(minPeriodMs, Math.round(finiteOr(spec.periodSeconds, 10) * 1000)),
    timeoutMs: Math.max(1, Math.round(finiteOr(spec.timeoutSeconds, 1) * 1000)),
    initialDelayMs: Math.max(0, Math.round(finiteOr(spec.initialDelaySeconds, 0) * 1000)),
    failureThreshold: Math.max(1, Math.floor(finiteOr(spec.failureThreshold, 3))),
    successThreshold: Math.max(1, Math.floor(finiteOr(spec.successThreshold, 1))),
  };
}

/**
 * The Kubernetes probe state machine, with no I/O: results are counted, and the status
 * flips to failing after `failureThreshold` consecutive failures and to passing after
 * `successThreshold` consecutive successes. Readiness starts failing (not ready until
 * proven), liveness starts passing (alive until proven dead). Results that arrive
 * before the initial delay has elapsed are ignored.
 */
export class ProbeTracker {
  readonly timings: ProbeTimings;
  private readonly startedAtMs: number;
  private current: ProbeState;

  constructor(
    readonly kind: ProbeKind,
    spec: ProbeSpec,
    private readonly clock: Clock,
    /** When the replica started; the initial delay counts from here. */
    startedAtMs: number = clock.nowMs(),
  ) {
    this.timings = probeTimings(spec);
    this.startedAtMs = startedAtMs;
    this.current = {
      kind,
      status: kind === "readiness" ? "failing" : "passing",
      consecutiveSuccesses: 0,
      consecutiveFailures: 0,
      lastTransitionAtMs: startedAtMs,
    };
  }

  /** When the first probe may run. */
  firstProbeAtMs(): number {
    return this.startedAtMs + this.timings.initialDelayMs;
  }

  initialDelayElapsed(): boolean {
    return this.clock.nowMs() >= this.firstProbeAtMs();
  }

  /** Counts one result; returns true when the status flipped. */
  record(result: ProbeResult): boolean {
    if (!this.initialDelayElapsed()) return false;
    const nowMs = this.clock.nowMs();
    const previous = this.current;
    const consecutiveSuccesses = result.ok ? previous.consecutiveSuccesses + 1 : 0;
    const consecutiveFailures = result.ok ? 0 : previous.consecutiveFailures + 1;
    let status = previous.status;
    if (result.ok && consecutiveSuccesses >= this.timings.successThreshold) status = "passing";
    if (!result.ok && consecutiveFailures >= this.timings.failureThreshold) status = "failing";
    const changed = status !== previous.status;
    this.current = {
      kind: this.kind,
      status,
      consecutiveSuccesses,
      consecutiveFailures,
      lastResult: { ...result, atMs: nowMs },
      lastTransitionAtMs: changed ? nowMs : previous.lastTransitionAtMs,
    };
    return changed;
  }

  state(): ProbeState {
    return {
      ...this.current,
      ...(this.current.lastResult ? { lastResult: { ...this.current.lastResult } } : {}),
    };
  }
}

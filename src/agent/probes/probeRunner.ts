import type { Clock } from "../../lib/clock.js";
import type { Logger } from "../../observe/logger.js";
import { type ProbeState, ProbeTracker } from "./probeTracker.js";
import type { ProbeExec, ProbeFunction, ProbeKind, ProbeResult, ProbeSpec } from "./probeTypes.js";
import { runProbeOnce } from "./runProbeOnce.js";

export interface ProbeRunnerOptions {
  kind: ProbeKind;
  spec: ProbeSpec;
  clock: Clock;
  /** Called when the probe flips between passing and failing. */
  onChange: (state: ProbeState) => void;
  /** Called with every probe's result (metrics). */
  onResult?: (result: ProbeResult) => void;
  /** When the replica started; default now. The initial delay counts from here. */
  startedAtMs?: number;
  /** Performs one probe; default runProbeOnce (real sockets). */
  probe?: ProbeFunction;
  exec?: ProbeExec;
  host?: string;
  logger?: Logger;
}

/**
 * Runs one probe every period on the injected clock and feeds a ProbeTracker. At most
 * one probe is in flight: the next one is scheduled a period after the previous one
 * began, or at once if it took longer than a period (each probe has its own deadline,
 * so that is bounded).
 */
export class ProbeRunner {
  private readonly tracker: ProbeTracker;
  private readonly probe: ProbeFunction;
  private cancelTimer: (() => void) | undefined;
  private running = false;
  private stopped = false;

  constructor(private readonly options: ProbeRunnerOptions) {
    this.tracker = new ProbeTracker(options.kind, options.spec, options.clock, options.startedAtMs);
    this.probe = options.probe ?? runProbeOnce;
  }

  start(): void {
    if (this.running || this.stopped) return;
    this.running = true;
    const delayMs = Math.max(0, this.tracker.firstProbeAtMs() - this.options.clock.nowMs());
    this.schedule(delayMs);
  }

  /** Stops the loop; a probe in flight finishes but its result is dropped. */
  stop(): void {
    this.stopped = true;
    this.cancelTimer?.();
    this.cancelTimer = undefined;
  }

  state(): ProbeState {
    return this.tracker.state();
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.cancelTimer = this.options.clock.setTimeout(() => {
      this.cancelTimer = undefined;
      void this.probeOnce();
    }, delayMs);
  }

  private async probeOnce(): Promise<void> {
    if (this.stopped) return;
    const { clock, spec } = this.options;
    const startedMs = clock.nowMs();
    let result: ProbeResult;
    try {
      result = await this.probe(spec.action, {
        timeoutMs: this.tracker.timings.timeoutMs,
        ...(this.options.exec ? { exec: this.options.exec } : {}),
        ...(this.options.host ? { host: this.options.host } : {}),
      });
    } catch (error) {
      // An injected probe function may throw; the loop must survive it.
      result = { ok: false, message: error instanceof Error ? error.message : String(error) };
    }
    if (this.stopped) return;
    try {
      this.options.onResult?.(result);
    } catch (error) {
      this.options.logger?.error({ err: error }, "probe onResult handler threw");
    }
    if (this.tracker.record(result)) {
      const state = this.tracker.state();
      this.options.logger?.debug(
        { probe: this.options.kind, status: state.status, message: result.message },
        "probe status changed",
      );
      try {
        this.options.onChange(state);
      } catch (error) {
        this.options.logger?.error({ err: error }, "probe onChange handler threw");
      }
    }
    const elapsedMs = clock.nowMs() - startedMs;
    this.schedule(Math.max(0, this.tracker.timings.periodMs - elapsedMs));
  }
}

import { describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { ProbeRunner } from "./probeRunner.js";
import type { ProbeState } from "./probeTracker.js";
import type { ProbeFunction, ProbeResult, ProbeSpec } from "./probeTypes.js";

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** Moves simulated time in small steps, letting async probe work finish in between. */
async function advance(clock: ManualClock, totalMs: number, stepMs = 100): Promise<void> {
  for (let doneMs = 0; doneMs < totalMs; doneMs += stepMs) {
    clock.advance(Math.min(stepMs, totalMs - doneMs));
    await settle();
  }
}

function spec(overrides: Partial<ProbeSpec> = {}): ProbeSpec {
  return {
    action: { http: { path: "/healthz", port: 8080 } },
    periodSeconds: 2,
    timeoutSeconds: 1,
    failureThreshold: 2,
    successThreshold: 1,
    initialDelaySeconds: 3,
    ...overrides,
  };
}

describe("ProbeRunner", () => {
  it("REQ-032 probes after the initial delay, then every period, and reports flips", async () => {
    const clock = new ManualClock();
    const startMs = clock.nowMs();
    const probedAtMs: number[] = [];
    let next: ProbeResult = { ok: true, message: "HTTP 200" };
    const probe: ProbeFunction = async (_action, options) => {
      expect(options.timeoutMs).toBe(1000);
      probedAtMs.push(clock.nowMs() - startMs);
      return next;
    };
    const changes: ProbeState[] = [];
    const runner = new ProbeRunner({
      kind: "readiness",
      spec: spec(),
      clock,
      probe,
      onChange: (state) => changes.push(state),
    });
    runner.start();
    await advance(clock, 3000);
    expect(probedAtMs).toEqual([3000]);
    expect(changes.map((state) => state.status)).toEqual(["passing"]);

    next = { ok: false, message: "HTTP 503" };
    await advance(clock, 4000);
    expect(probedAtMs).toEqual([3000, 5000, 7000]);
    expect(changes.map((state) => state.status)).toEqual(["passing", "failing"]);
    expect(runner.state().lastResult?.message).toBe("HTTP 503");

    runner.stop();
    await advance(clock, 10_000);
    expect(probedAtMs).toHaveLength(3);
  });

  it("REQ-032 counts a probe function that throws as a failure and keeps probing", async () => {
    const clock = new ManualClock();
    let calls = 0;
    const probe: ProbeFunction = async () => {
      calls++;
      throw new Error("boom");
    };
    const changes: string[] = [];
    const runner = new ProbeRunner({
      kind: "liveness",
      spec: spec({ initialDelaySeconds: 0, failureThreshold: 2, periodSeconds: 1 }),
      clock,
      probe,
      onChange: (state) => changes.push(`${state.status}:${state.lastResult?.message}`),
    });
    runner.start();
    await advance(clock, 1500);
    expect(calls).toBe(2);
    expect(changes).toEqual(["failing:boom"]);
    runner.stop();
  });

  it("never runs two probes at once when a probe outlasts its period", async () => {
    const clock = new ManualClock();
    let inFlight = 0;
    let maxInFlight = 0;
    let release: (() => void) | undefined;
    const probe: ProbeFunction = () => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      return new Promise((resolve) => {
        release = () => {
          inFlight--;
          resolve({ ok: true, message: "late" });
        };
      });
    };
    const runner = new ProbeRunner({
      kind: "liveness",
      spec: spec({ initialDelaySeconds: 0, periodSeconds: 1 }),
      clock,
      probe,
      onChange: () => {},
    });
    runner.start();
    await advance(clock, 5000);
    expect(maxInFlight).toBe(1);
    release?.();
    await settle();
    // The late probe took longer than a period: the next one runs at once.
    await advance(clock, 100);
    expect(inFlight).toBe(1);
    runner.stop();
  });
});

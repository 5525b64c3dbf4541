import { describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { ProbeTracker, probeTimings } from "./probeTracker.js";
import type { ProbeSpec } from "./probeTypes.js";

const ok = { ok: true, message: "HTTP 200" };
const bad = { ok: false, message: "HTTP 500" };

function spec(overrides: Partial<ProbeSpec> = {}): ProbeSpec {
  return {
    action: { tcp: { port: 8080 } },
    periodSeconds: 1,
    timeoutSeconds: 1,
    failureThreshold: 3,
    successThreshold: 1,
    initialDelaySeconds: 0,
    ...overrides,
  };
}

describe("ProbeTracker", () => {
  it("REQ-032 readiness starts not ready and passes after successThreshold successes", () => {
    const clock = new ManualClock();
    const tracker = new ProbeTracker("readiness", spec({ successThreshold: 2 }), clock);
    expect(tracker.state().status).toBe("failing");
    expect(tracker.record(ok)).toBe(false);
    expect(tracker.state().status).toBe("failing");
    expect(tracker.record(ok)).toBe(true);
    expect(tracker.state()).toMatchObject({ status: "passing", consecutiveSuccesses: 2 });
  });

  it("REQ-032 liveness starts passing and fails only after failureThreshold consecutive failures", () => {
    const clock = new ManualClock();
    const tracker = new ProbeTracker("liveness", spec({ failureThreshold: 3 }), clock);
    expect(tracker.state().status).toBe("passing");
    tracker.record(bad);
    tracker.record(bad);
    // A success in between resets the count: failures must be consecutive.
    tracker.record(ok);
    tracker.record(bad);
    expect(tracker.record(bad)).toBe(false);
    expect(tracker.state().status).toBe("passing");
    clock.advance(500);
    expect(tracker.record(bad)).toBe(true);
    expect(tracker.state()).toMatchObject({
      status: "failing",
      consecutiveFailures: 3,
      lastResult: { ok: false, message: "HTTP 500", atMs: clock.nowMs() },
      lastTransitionAtMs: clock.nowMs(),
    });
  });

  it("REQ-032 ignores results before the initial delay has passed", () => {
    const clock = new ManualClock();
    const tracker = new ProbeTracker(
      "liveness",
      spec({ failureThreshold: 1, initialDelaySeconds: 5 }),
      clock,
    );
    expect(tracker.firstProbeAtMs()).toBe(clock.nowMs() + 5000);
    expect(tracker.record(bad)).toBe(false);
    expect(tracker.state().consecutiveFailures).toBe(0);
    clock.advance(5000);
    expect(tracker.record(bad)).toBe(true);
    expect(tracker.state().status).toBe("failing");
  });

  it("clamps timings Kubernetes would reject, so a probe loop cannot spin", () => {
    expect(
      probeTimings(
        spec({
          periodSeconds: 0,
          timeoutSeconds: 0,
          failureThreshold: 0,
          successThreshold: -1,
          initialDelaySeconds: -3,
        }),
      ),
    ).toEqual({
      periodMs: 100,
      timeoutMs: 1,
      initialDelayMs: 0,
      failureThreshold: 1,
      successThreshold: 1,
    });
  });
});

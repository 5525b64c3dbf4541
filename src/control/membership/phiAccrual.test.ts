import { describe, expect, it } from "vitest";
import { PhiAccrualDetector, phiOf } from "./phiAccrual.js";

describe("phi accrual detector", () => {
  it("REQ-002 phi stays low while heartbeats arrive on time and grows with silence", () => {
    const detector = new PhiAccrualDetector();
    let now = 0;
    for (let i = 0; i < 50; i++) {
      now += 1000;
      detector.heartbeat(now);
    }
    expect(detector.phi(now + 500)).toBeLessThan(1);
    expect(detector.phi(now + 1000)).toBeLessThan(1);
    const at3s = detector.phi(now + 3000);
    const at5s = detector.phi(now + 5000);
    expect(at3s).toBeGreaterThan(8);
    expect(at5s).toBeGreaterThan(at3s);
  });

  it("REQ-002 a jittery sender earns a more forgiving verdict than a regular one", () => {
    const regular = new PhiAccrualDetector();
    const jittery = new PhiAccrualDetector();
    let tRegular = 0;
    let tJittery = 0;
    for (let i = 0; i < 100; i++) {
      tRegular += 1000;
      regular.heartbeat(tRegular);
      tJittery += i % 2 === 0 ? 400 : 1600;
      jittery.heartbeat(tJittery);
    }
    expect(jittery.phi(tJittery + 2500)).toBeLessThan(regular.phi(tRegular + 2500));
  });

  it("phiOf is monotonic in elapsed time", () => {
    let previous = -1;
    for (let elapsed = 0; elapsed <= 5000; elapsed += 100) {
      const value = phiOf(elapsed, 1000, 200);
      expect(value).toBeGreaterThanOrEqual(previous);
      previous = value;
    }
  });

  it("resetSilence gives a grace period without recording an interval", () => {
    const detector = new PhiAccrualDetector();
    detector.heartbeat(0);
    expect(detector.phi(10_000)).toBeGreaterThan(8);
    detector.resetSilence(10_000);
    expect(detector.phi(10_500)).toBeLessThan(1);
  });
});

import { describe, expect, it } from "vitest";
import { ManualClock } from "../lib/clock.js";
import { silentLogger } from "../observe/logger.js";
import { nextRenewalCheckMs, RenewalTimer, renewalDue } from "./certificateRenewal.js";

const hourMs = 3_600_000;

describe("certificate renewal", () => {
  it("REQ-060 decider: the next look is a twentieth of the lifetime within 0.5-5 s, and exactly when renewal falls due if sooner", () => {
    const long = { startMs: 0, renewAtMs: (24 * hourMs * 2) / 3, notAfterMs: 24 * hourMs };
    expect(nextRenewalCheckMs(long, 0)).toBe(5_000);
    expect(nextRenewalCheckMs(long, long.renewAtMs - 1_234)).toBe(1_234);
    expect(nextRenewalCheckMs(long, long.renewAtMs + 1)).toBe(5_000);
    const short = { startMs: 0, renewAtMs: 2_000, notAfterMs: 3_000 };
    expect(nextRenewalCheckMs(short, 0)).toBe(500);
    const medium = { startMs: 0, renewAtMs: 40_000, notAfterMs: 60_000 };
    expect(nextRenewalCheckMs(medium, 0)).toBe(3_000);
    expect(renewalDue(medium, 39_999)).toBe(false);
    expect(renewalDue(medium, 40_000)).toBe(true);
  });

  it("REQ-060 decider: the timer renews when due, not before, retries after a failure, and stops", async () => {
    const clock = new ManualClock(0);
    const schedule = { startMs: 0, renewAtMs: 40_000, notAfterMs: 60_000 };
    const renewals: number[] = [];
    let failNext = true;
    const timer = new RenewalTimer({
      clock,
      logger: silentLogger,
      schedule: () => schedule,
      renew: async () => {
        renewals.push(clock.nowMs());
        if (failNext) {
          failNext = false;
          throw new Error("coordinator unreachable");
        }
        schedule.startMs = clock.nowMs();
        schedule.renewAtMs = clock.nowMs() + 40_000;
        schedule.notAfterMs = clock.nowMs() + 60_000;
      },
    });
    timer.start();
    const settle = () => new Promise((resolve) => setImmediate(resolve));
    for (let t = 0; t < 39_000; t += 3_000) {
      clock.advance(3_000);
      await settle();
    }
    expect(renewals).toEqual([]);
    // Due at 40 s: the look falls exactly there; it fails and is retried one poll later.
    clock.advance(1_000);
    await settle();
    expect(renewals).toEqual([40_000]);
    clock.advance(3_000);
    await settle();
    expect(renewals).toEqual([40_000, 43_000]);
    // Renewed: the next one is due 40 s later.
    clock.advance(39_000);
    await settle();
    expect(renewals).toHaveLength(2);
    timer.stop();
    clock.advance(60_000);
    await settle();
    expect(renewals).toHaveLength(2);
  });
});

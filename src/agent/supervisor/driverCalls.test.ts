import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { DriverError } from "../drivers/driver.js";
import { FakeDriver } from "../drivers/fakeDriver.js";
import { DeadlineExceededError } from "./deadline.js";
import { DriverHealthChecks, deadlineCall, describeDriverFailure } from "./driverCalls.js";

async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe("driver calls", () => {
  it("a call that does not answer fails at its deadline on the injected clock; a synchronous throw is a rejection", async () => {
    const clock = new ManualClock();
    const call = deadlineCall(clock, 30_000);
    const never = call(() => new Promise(() => undefined), "container start").catch(
      (error: unknown) => error,
    );
    const short = call(() => new Promise(() => undefined), "container exec", 500).catch(
      (error: unknown) => error,
    );
    clock.advance(500);
    expect(await short).toBeInstanceOf(DeadlineExceededError);
    clock.advance(29_499);
    await settle();
    let settled = false;
    void never.then(() => {
      settled = true;
    });
    await settle();
    expect(settled).toBe(false);
    clock.advance(1);
    expect(String(await never)).toContain("container start did not answer within 30000 ms");
    await expect(
      call(() => {
        throw new Error("bug");
      }, "x"),
    ).rejects.toThrow("bug");
  });

  it("names driver failures with the reason words reports carry", () => {
    const cases: Array<[unknown, string]> = [
      [new DeadlineExceededError("container start", 1), "DriverTimeout"],
      [new DriverError("imageNotFound", "no image"), "ImageNotFound"],
      [new DriverError("invalid", "bad"), "InvalidSpec"],
      [new DriverError("unavailable", "down"), "DriverUnavailable"],
      [new DriverError("failed", "boom"), "DriverError"],
      [new Error("other"), "DriverError"],
      ["a string", "DriverError"],
    ];
    for (const [error, reason] of cases) expect(describeDriverFailure(error).reason).toBe(reason);
    expect(describeDriverFailure("a string").message).toBe("a string");
  });

  it("one health check per driver in flight; a driver that comes back is announced", async () => {
    const clock = new ManualClock();
    const driver = new FakeDriver("container", clock);
    const healthy: string[] = [];
    const lines: Array<{ msg: string }> = [];
    const checks = new DriverHealthChecks({
      call: deadlineCall(clock, 30_000),
      timeoutMs: 5000,
      logger: pino({ base: null }, { write: (line: string) => lines.push(JSON.parse(line)) }),
      onHealthy: (name) => healthy.push(name),
    });
    const release = driver.hang("health");
    const first = checks.check("container", driver);
    const second = checks.check("container", driver);
    expect(second).toBe(first);
    release();
    expect(await first).toEqual({ ok: true });
    expect(driver.callsTo("health")).toHaveLength(1);
    expect(healthy).toEqual(["container"]);
    // Healthy again: not announced twice.
    await checks.check("container", driver);
    expect(healthy).toEqual(["container"]);

    driver.setAvailable(false, "socket gone");
    expect(await checks.check("container", driver)).toEqual({ ok: false, reason: "socket gone" });
    // A ping that does not answer in time is a driver that is down.
    driver.setAvailable(true);
    driver.hang("health");
    const hung = checks.check("container", driver);
    clock.advance(5000);
    expect(await hung).toEqual({
      ok: false,
      reason: "container health did not answer within 5000 ms",
    });
    expect(lines.map((line) => line.msg)).toEqual(["driver unavailable"]);
  });
});

import { describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { ProbeRunner } from "./probeRunner.js";
import type { ProbeResult } from "./probeTypes.js";

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe("ProbeRunner results hook", () => {
  it("REQ-032 REQ-070 reports every probe result, not only flips, and survives a throwing hook", async () => {
    const clock = new ManualClock();
    const results: ProbeResult[] = [];
    const outcomes = [true, true, false, true];
    let call = 0;
    const runner = new ProbeRunner({
      kind: "liveness",
      spec: {
        action: { tcp: { port: 1 } },
        periodSeconds: 1,
        timeoutSeconds: 1,
        failureThreshold: 3,
        successThreshold: 1,
        initialDelaySeconds: 0,
      },
      clock,
      probe: async () => {
        const ok = outcomes[call++] ?? true;
        return { ok, message: ok ? "open" : "refused" };
      },
      onChange: () => undefined,
      onResult: (result) => {
        results.push(result);
        if (results.length === 1) throw new Error("hook failed");
      },
    });
    runner.start();
    for (let i = 0; i < 4; i++) {
      await settle();
      clock.advance(1000);
    }
    await settle();
    runner.stop();
    expect(results.slice(0, 4).map((r) => r.ok)).toEqual([true, true, false, true]);
  });
});

import { describe, expect, it } from "vitest";
import { seededRng } from "../../lib/rng.js";
import { backoffDelay, defaultBackoff, formatDelay } from "./backoff.js";

describe("backoffDelay", () => {
  it("doubles from initialMs up to maxMs, and jitter only ever adds", () => {
    const rng = seededRng(7);
    const nominal = [1, 2, 3, 4, 5, 6, 7, 8, 20].map(
      (failures) => backoffDelay(defaultBackoff, failures, rng).nominalMs,
    );
    expect(nominal).toEqual([1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]);
    for (let failures = 1; failures < 50; failures++) {
      const { nominalMs, delayMs } = backoffDelay(defaultBackoff, failures, rng);
      expect(delayMs).toBeGreaterThanOrEqual(nominalMs);
      expect(delayMs).toBeLessThanOrEqual(Math.min(defaultBackoff.maxMs, nominalMs * 1.1));
    }
  });

  it("formats delays for status messages", () => {
    expect(formatDelay(500)).toBe("500ms");
    expect(formatDelay(4000)).toBe("4s");
    expect(formatDelay(60_000)).toBe("1m0s");
    expect(formatDelay(90_000)).toBe("1m30s");
  });
});

import { describe, expect, it } from "vitest";
import { formatAge, parseDurationMs } from "./duration.js";

describe("durations", () => {
  it.each([
    ["1h", 3_600_000],
    ["90s", 90_000],
    ["2h30m", 9_000_000],
    ["45", 45_000],
    ["250ms", 250],
    ["1d", 86_400_000],
  ])("parses %s", (text, expected) => {
    expect(parseDurationMs(text)).toBe(expected);
  });

  it.each(["", "h", "1x", "1h foo", "-1h", "1h-"])("refuses %j", (text) => {
    expect(parseDurationMs(text)).toBeUndefined();
  });

  it("formats ages like kubectl", () => {
    expect(formatAge(5_000)).toBe("5s");
    expect(formatAge(600_000)).toBe("10m");
    expect(formatAge(3 * 3_600_000)).toBe("3h");
    expect(formatAge(3 * 86_400_000)).toBe("3d");
  });
});

import { describe, expect, it } from "vitest";
import { EventBudget } from "./eventBudget.js";

describe("event budget", () => {
  it("REQ-071 NFR-S1 limits security events per host and reports what it suppressed", () => {
    const budget = new EventBudget(3, 1);
    expect([0, 1, 2].map(() => budget.take("10.0.0.1:1000", 0))).toEqual([0, 0, 0]);
    expect(budget.take("10.0.0.1:1001", 0)).toBeUndefined();
    expect(budget.take("10.0.0.1:1002", 500)).toBeUndefined();
    // Another host has its own budget.
    expect(budget.take("10.0.0.2:1000", 500)).toBe(0);
    // A second later one token is back, and the two suppressed events are reported.
    expect(budget.take("10.0.0.1:1003", 1500)).toBe(2);
  });
});

import { describe, expect, it } from "vitest";
import { stopPlan } from "./leaving.js";

describe("what stopping the agent does", () => {
  it("REQ-002 decider: a leave says so and stops the replicas; a restart announces its return and keeps them; a plain stop says nothing and keeps them", () => {
    expect(stopPlan(true, 0)).toEqual({
      leaveBackWithinMs: 0,
      stopReplicas: true,
      message: "left the cluster",
    });
    expect(stopPlan(true, 30_000)).toEqual({
      leaveBackWithinMs: 30_000,
      stopReplicas: false,
      message: "stopped for a restart; replicas keep running",
    });
    expect(stopPlan(false, 30_000)).toEqual({
      leaveBackWithinMs: undefined,
      stopReplicas: false,
      message: "stopped",
    });
  });
});

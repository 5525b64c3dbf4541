import { describe, expect, it } from "vitest";
import { type RolloutStatus, RolloutTracker } from "./rolloutTracker.js";

const done: RolloutStatus = {
  phase: "Running",
  updatedReplicas: 3,
  desiredReplicas: 3,
  replicas: 3,
  readyReplicas: 3,
};
const progressing: RolloutStatus = { ...done, phase: "Progressing", updatedReplicas: 1 };

describe("rollout tracker", () => {
  it("REQ-023 a rollout seen in progress is announced once when it completes", () => {
    const tracker = new RolloutTracker();
    expect(tracker.note("default/web", 2, progressing)).toBeUndefined();
    expect(tracker.note("default/web", 2, done)).toEqual({
      type: "RolloutCompleted",
      category: "scheduling",
      subject: "workload/default/web",
      reason: "Complete",
      message: "revision 2: 3/3 replicas updated and ready",
    });
    expect(tracker.note("default/web", 2, done)).toBeUndefined();
  });

  it("REQ-023 a workload complete when first seen (a coordinator restart) is not announced; nor after clear()", () => {
    const tracker = new RolloutTracker();
    expect(tracker.note("default/web", 2, done)).toBeUndefined();
    expect(tracker.note("default/web", 2, done)).toBeUndefined();
    tracker.note("default/db", 1, progressing);
    tracker.clear();
    expect(tracker.note("default/db", 1, done)).toBeUndefined();
  });

  it("REQ-023 a new revision starts over; a forgotten workload is seen afresh", () => {
    const tracker = new RolloutTracker();
    tracker.note("default/web", 1, progressing);
    expect(tracker.note("default/web", 2, done)).toBeUndefined();
    tracker.note("default/web", 3, progressing);
    tracker.forget("default/web");
    expect(tracker.note("default/web", 3, done)).toBeUndefined();
  });
});

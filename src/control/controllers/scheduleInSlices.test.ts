import { describe, expect, it } from "vitest";
import { seededRng } from "../../lib/rng.js";
import { schedule } from "../scheduler/index.js";
import { SchedulerHarness } from "../scheduler/testing/harness.js";
import { scheduleInSlices } from "./scheduleInSlices.js";

/** A clock that moves `stepMs` each time it is read: each scheduler step "takes" time. */
function steppingClock(stepMs: number) {
  let nowMs = 0;
  return {
    nowMs: () => (nowMs += stepMs),
    /** Time passing outside the scheduler (another task's turn). */
    skip: (ms: number) => {
      nowMs += ms;
    },
  };
}

function cluster(): SchedulerHarness {
  const h = new SchedulerHarness();
  h.addNodes(40, (i) => ({ zone: `z${i % 4}` }));
  h.addWorkload({ key: "default/web", replicas: 150, placement: { spreadAcrossZones: true } });
  h.addWorkload({ key: "default/db", replicas: 50, placement: { antiAffinity: true } });
  h.addWorkload({ key: "default/huge", replicas: 5, resources: { cpuMillicores: 10_000_000 } });
  return h;
}

describe("scheduleInSlices", () => {
  it("REQ-022 a large batch is decided in slices with the event loop let in between, and the plan is schedule()'s", async () => {
    const h = cluster();
    const input = () => ({
      snapshot: h.snapshot(),
      pending: [...h.pending],
      nowMs: 0,
      rng: seededRng(7),
    });
    let turns = 0;
    // The clock is read once per replica (1 ms each) and once after each turn: 205
    // replicas make four 50 ms slices and a short last one.
    const clock = steppingClock(1);
    const { plan, busyMs } = await scheduleInSlices(input(), clock, 50, async () => {
      turns++;
      clock.skip(1000);
    });
    expect(plan).toEqual(schedule(input()));
    expect(plan.placements.length + plan.unschedulable.length).toBe(205);
    expect(plan.placements.length).toBeGreaterThan(150);
    expect(plan.unschedulable.filter((u) => u.workloadKey === "default/huge")).toHaveLength(5);
    expect(turns).toBe(4);
    // The scheduler's own time (205 steps of about 1 ms), not the 4 s of other turns.
    expect(busyMs).toBeGreaterThanOrEqual(200);
    expect(busyMs).toBeLessThanOrEqual(210);
  });

  it("REQ-022 a batch shorter than a slice never gives its turn away", async () => {
    const h = cluster();
    let turns = 0;
    await scheduleInSlices(
      { snapshot: h.snapshot(), pending: [...h.pending], nowMs: 0, rng: seededRng(7) },
      steppingClock(0),
      50,
      async () => {
        turns++;
      },
    );
    expect(turns).toBe(0);
  });

  it("REQ-031 heartbeats are read while a large batch is scheduled: the event loop runs while a slice boundary is crossed", async () => {
    const h = cluster();
    let ranDuringSchedule = false;
    let done = false;
    setImmediate(() => {
      ranDuringSchedule = !done;
    });
    await scheduleInSlices(
      { snapshot: h.snapshot(), pending: [...h.pending], nowMs: 0, rng: seededRng(7) },
      steppingClock(1),
      50,
    );
    done = true;
    expect(ranDuringSchedule).toBe(true);
  });
});

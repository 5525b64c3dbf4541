import { describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { agentKnows, isOrphan, OrphanScanSchedule } from "./orphanScan.js";
import type { DesiredReplica } from "./supervisorTypes.js";

function desired(id: string): DesiredReplica {
  return {
    spec: {
      replicaId: id,
      namespace: "default",
      workload: "web",
      driver: "container",
      image: "web:1",
      env: {},
      ports: [],
      resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 1 },
    },
    restartPolicy: "Always",
    terminationGracePeriodSeconds: 5,
    generation: 1,
  };
}

describe("orphan scan: when a driver's replicas are listed", () => {
  it("lists at the first chance, then every interval, one scan per driver at a time", () => {
    const clock = new ManualClock();
    const schedule = new OrphanScanSchedule(60_000);
    expect(schedule.isDue("container", clock.nowMs())).toBe(true);
    schedule.begin("container", clock.nowMs());
    expect(schedule.isDue("container", clock.nowMs())).toBe(false);
    clock.advance(120_000);
    // Still in flight: never two at once, however late.
    expect(schedule.isDue("container", clock.nowMs())).toBe(false);
    schedule.end("container");
    // The interval counts from the scan's start.
    expect(schedule.isDue("container", clock.nowMs())).toBe(true);
    schedule.begin("container", clock.nowMs());
    schedule.end("container");
    clock.advance(59_999);
    expect(schedule.isDue("container", clock.nowMs())).toBe(false);
    clock.advance(1);
    expect(schedule.isDue("container", clock.nowMs())).toBe(true);
    // Drivers are scheduled apart.
    expect(schedule.isDue("process", clock.nowMs())).toBe(true);
  });

  it("lists again at once when asked (a desired set arrived, the driver came back, a list failed)", () => {
    const clock = new ManualClock();
    const schedule = new OrphanScanSchedule(60_000);
    schedule.begin("process", clock.nowMs());
    schedule.end("process");
    clock.advance(1000);
    expect(schedule.isDue("process", clock.nowMs())).toBe(false);
    schedule.request("process");
    expect(schedule.isDue("process", clock.nowMs())).toBe(true);
    // Beginning the scan consumes the request.
    schedule.begin("process", clock.nowMs());
    schedule.end("process");
    expect(schedule.isDue("process", clock.nowMs())).toBe(false);
    // A request made while a scan runs waits for its end.
    schedule.begin("process", clock.nowMs());
    schedule.request("process");
    expect(schedule.isDue("process", clock.nowMs())).toBe(false);
    schedule.end("process");
    expect(schedule.isDue("process", clock.nowMs())).toBe(true);
  });
});

describe("orphan scan: what nobody wants", () => {
  it("a replica is wanted on a driver when the desired set or a supervised replica puts it there", () => {
    const none = { desiredDriver: undefined, supervisedDriver: undefined };
    expect(isOrphan("container", none)).toBe(true);
    expect(isOrphan("container", { ...none, desiredDriver: "container" })).toBe(false);
    // Dropped from the desired set but still being retired by the supervisor: not an orphan.
    expect(isOrphan("container", { ...none, supervisedDriver: "container" })).toBe(false);
    // Its spec moved to the process driver: the container left behind is an orphan.
    expect(isOrphan("container", { desiredDriver: "process", supervisedDriver: "process" })).toBe(
      true,
    );
  });

  it("REQ-030 ADR 0030: the agent knows a replica its desired set, its supervision or a restored snapshot names", () => {
    const state = {
      desired: new Map([["a-0", desired("a-0")]]),
      supervised: new Map([["b-0", {}]]),
      restored: { "c-0": { hostPorts: {} } },
    };
    expect(["a-0", "b-0", "c-0", "d-0"].map((id) => agentKnows(id, state))).toEqual([
      true,
      true,
      true,
      false,
    ]);
    // Before any desired set, only what it supervises or restored.
    expect(agentKnows("a-0", { ...state, desired: null })).toBe(false);
    // An inherited property name is not a restored replica.
    expect(agentKnows("toString", state)).toBe(false);
  });
});

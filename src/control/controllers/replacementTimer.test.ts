import { describe, expect, it } from "vitest";
import type { Unschedulable } from "../scheduler/types.js";
import type { ReplicaRecord } from "./records.js";
import { ReplacementTimer } from "./replacementTimer.js";
import { failureReason } from "./workloadController.js";

function replica(
  id: string,
  createdAtMs: number,
  status?: { phase: "Running" | "Starting"; reportedAtMs: number },
): ReplicaRecord {
  return {
    id,
    namespace: "default",
    workload: "web",
    revision: 1,
    node: "n2",
    desired: "Running",
    resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0, bandwidthMbps: 0 },
    createdAtMs,
    ...(status
      ? {
          status: {
            phase: status.phase,
            ready: true,
            restarts: 0,
            reason: "",
            message: "",
            hostPorts: {},
            driver: "process",
            reportedAtMs: status.reportedAtMs,
          },
        }
      : {}),
  };
}

describe("ReplacementTimer", () => {
  it("REQ-031 REQ-070 observes node Lost → the replacement's Running report, once per forgotten replica", () => {
    const observed: number[] = [];
    const timer = new ReplacementTimer((seconds) => observed.push(seconds));
    // Node went Lost at t=10 s; the controller forgot two replicas at t=11 s.
    timer.noteForgotten("default/web", 10_000, 11_000);
    timer.noteForgotten("default/web", 10_000, 11_000);
    const survivor = replica("old", 1_000, { phase: "Running", reportedAtMs: 2_000 });

    // Replacements exist but are not Running yet: nothing observed.
    timer.update(
      new Map([["default/web", [survivor, replica("new-1", 11_000), replica("new-2", 11_000)]]]),
      12_000,
    );
    expect(observed).toEqual([]);
    expect(timer.pending).toBe(2);

    // One reports Running at t=14.5 s; the replica that kept running is never counted.
    const first = replica("new-1", 11_000, { phase: "Running", reportedAtMs: 14_500 });
    timer.update(new Map([["default/web", [survivor, first, replica("new-2", 11_000)]]]), 15_000);
    expect(observed).toEqual([4.5]);

    // The same replica seen again does not end the second entry; the other one does.
    const second = replica("new-2", 11_000, { phase: "Running", reportedAtMs: 16_000 });
    timer.update(new Map([["default/web", [survivor, first, second]]]), 16_500);
    timer.update(new Map([["default/web", [survivor, first, second]]]), 17_000);
    expect(observed).toEqual([4.5, 6]);
    expect(timer.pending).toBe(0);
  });

  it("REQ-070 a loss never followed by a replacement is dropped after the wait limit", () => {
    const observed: number[] = [];
    const timer = new ReplacementTimer((seconds) => observed.push(seconds), 60_000);
    timer.noteForgotten("default/gone", 0, 1_000);
    timer.update(new Map(), 30_000);
    expect(timer.pending).toBe(1);
    timer.update(new Map(), 61_001);
    expect(timer.pending).toBe(0);
    expect(observed).toEqual([]);
  });
});

describe("failureReason", () => {
  const base: Unschedulable = {
    replicaId: "r",
    workloadKey: "default/web",
    eligibleNodes: 0,
    rejections: {},
    reasons: {},
    message: "0/0 nodes available",
    bestScores: [],
  };

  it("REQ-070 is the filter that rejected the most nodes, the earlier one on a tie", () => {
    expect(failureReason({ ...base, rejections: { NodeReady: 1, FitsResources: 4 } })).toBe(
      "FitsResources",
    );
    expect(failureReason({ ...base, rejections: { NodeReady: 2, FitsResources: 2 } })).toBe(
      "NodeReady",
    );
  });

  it("REQ-070 is NoNodes without nodes and InvalidRequest for a refused request", () => {
    expect(failureReason(base)).toBe("NoNodes");
    expect(
      failureReason({ ...base, message: "invalid request: cpuMillicores must be a finite number" }),
    ).toBe("InvalidRequest");
  });
});

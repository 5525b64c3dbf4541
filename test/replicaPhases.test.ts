import { describe, expect, expectTypeOf, it } from "vitest";
import type { ReplicaReport } from "../src/agent/supervisor/supervisorTypes.js";
import type { ReplicaStatusRecord } from "../src/control/controllers/records.js";
import {
  coordinatorOnlyPhases,
  isReplicaPhase,
  type ReplicaPhase,
  type ReportedReplicaPhase,
  replicaPhaseOr,
  replicaPhases,
  reportedReplicaPhases,
} from "../src/lib/replicaPhase.js";
import { replicaPhases as exportedPhases } from "../src/observe/metrics.js";

describe("one replica phase list", () => {
  it("REQ-080 contract: the agent's reports, the coordinator's records, the metrics and the status writer use the one list", () => {
    // The metrics export a series for exactly these phases, in this order.
    expect(exportedPhases).toBe(replicaPhases);
    expectTypeOf<ReplicaStatusRecord["phase"]>().toEqualTypeOf<ReplicaPhase>();
    expectTypeOf<ReplicaReport["phase"]>().toEqualTypeOf<ReportedReplicaPhase>();
    // What an agent reports is every phase but the coordinator's own.
    expect([...reportedReplicaPhases, ...coordinatorOnlyPhases].sort()).toEqual(
      [...replicaPhases].sort(),
    );
    expect(reportedReplicaPhases).toEqual([
      "Pending",
      "Starting",
      "Running",
      "CrashLoopBackOff",
      "Succeeded",
      "Failed",
      "Stopped",
    ]);
  });

  it("REQ-080 contract: a phase read from the wire is itself when known, else the fallback", () => {
    for (const phase of replicaPhases) {
      expect(isReplicaPhase(phase)).toBe(true);
      expect(replicaPhaseOr(phase, "Pending")).toBe(phase);
    }
    expect(isReplicaPhase("Hibernating")).toBe(false);
    expect(replicaPhaseOr("Hibernating", "Pending")).toBe("Pending");
    expect(replicaPhaseOr("running", "Pending")).toBe("Pending");
  });
});

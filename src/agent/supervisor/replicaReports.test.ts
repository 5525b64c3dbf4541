import { pino } from "pino";
import { describe, expect, it } from "vitest";
import {
  isReady,
  ReportEmitter,
  type ReportView,
  reportOf,
  reportsOf,
  type SnapshotView,
  snapshotOf,
} from "./replicaReports.js";
import type { DesiredReplica, ReplicaReport } from "./supervisorTypes.js";

function desired(id: string, overrides: Partial<DesiredReplica> = {}): DesiredReplica {
  return {
    spec: {
      replicaId: id,
      namespace: "default",
      workload: "web",
      driver: "process",
      command: ["/bin/web"],
      env: {},
      ports: [],
      resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 1 },
    },
    restartPolicy: "Always",
    terminationGracePeriodSeconds: 5,
    generation: 1,
    ...overrides,
  };
}

function view(id: string, overrides: Partial<ReportView> = {}): ReportView {
  return {
    id,
    desired: desired(id),
    phase: "Running",
    reason: "",
    message: "running",
    restarts: 0,
    hostPorts: { http: 40_000 },
    readinessPassing: false,
    lastTransitionAtMs: 5,
    ...overrides,
  };
}

const readiness = {
  action: { tcp: { port: 8080 } },
  periodSeconds: 1,
  timeoutSeconds: 1,
  failureThreshold: 1,
  successThreshold: 1,
  initialDelaySeconds: 0,
};

describe("replica reports", () => {
  it("REQ-032 ready means Running with its readiness probe passing, or Running without one", () => {
    expect(isReady(view("a"))).toBe(true);
    expect(isReady(view("a", { phase: "Starting" }))).toBe(false);
    const probed = desired("a", { readiness });
    expect(isReady(view("a", { desired: probed }))).toBe(false);
    expect(isReady(view("a", { desired: probed, readinessPassing: true }))).toBe(true);
    expect(isReady(view("a", { desired: probed, readinessPassing: true, phase: "Stopped" }))).toBe(
      false,
    );
  });

  it("a driver problem shows instead of the replica's own reason; optional fields only when known", () => {
    expect(reportOf(view("a"))).toEqual({
      replicaId: "a",
      phase: "Running",
      ready: true,
      restarts: 0,
      reason: "",
      message: "running",
      hostPorts: { http: 40_000 },
      driver: "process",
      lastTransitionAtMs: 5,
    });
    const report = reportOf(
      view("a", {
        exitCode: 1,
        startedAtMs: 3,
        restarts: 2,
        reason: "Error",
        driverProblem: { reason: "DriverTimeout", message: "process status did not answer" },
      }),
    );
    expect(report).toMatchObject({
      reason: "DriverTimeout",
      message: "process status did not answer",
      exitCode: 1,
      startedAtMs: 3,
      restarts: 2,
    });
  });

  it("reports come sorted by id, with copies of the host ports", () => {
    const b = view("b");
    const reports = reportsOf([b, view("a"), view("c")]);
    expect(reports.map((report) => report.replicaId)).toEqual(["a", "b", "c"]);
    b.hostPorts.http = 1;
    expect(reports[1]?.hostPorts).toEqual({ http: 40_000 });
  });

  it("emits only what changed, and survives a handler that throws", () => {
    const received: ReplicaReport[][] = [];
    const lines: string[] = [];
    let fail = false;
    const emitter = new ReportEmitter(
      (reports) => {
        if (fail) throw new Error("coordinator link down");
        received.push(reports);
      },
      pino({ base: null }, { write: (line: string) => lines.push(line) }),
    );
    emitter.emitIfChanged(reportsOf([view("a")]));
    emitter.emitIfChanged(reportsOf([view("a")]));
    expect(received).toHaveLength(1);
    fail = true;
    emitter.emitIfChanged(reportsOf([view("a", { phase: "Stopped" })]));
    expect(lines.join("")).toContain("onReport handler threw");
    fail = false;
    // Once handed over (even to a handler that threw), the same reports are not sent again.
    emitter.emitIfChanged(reportsOf([view("a", { phase: "Stopped" })]));
    expect(received).toHaveLength(1);
    emitter.emitIfChanged(reportsOf([view("a")]));
    expect(received).toHaveLength(2);
  });
});

describe("the supervisor snapshot (NFR-A1)", () => {
  it("NFR-A1 holds the desired set and per replica ports, running generation and restarts; supervised replicas over restored ones", () => {
    const wanted = new Map([["a", desired("a")]]);
    const snapshot = snapshotOf(
      wanted,
      new Map<string, SnapshotView>([
        ["a", { hostPorts: { http: 1 }, runningGeneration: 3, restarts: 2 }],
        ["b", { hostPorts: {}, restarts: 0 }],
      ]),
      { a: { hostPorts: { http: 9 } }, c: { hostPorts: { http: 7 }, runningGeneration: 1 } },
    );
    expect(snapshot).toEqual({
      version: 1,
      desired: [desired("a")],
      replicas: {
        a: { hostPorts: { http: 1 }, runningGeneration: 3, restarts: 2 },
        b: { hostPorts: {}, restarts: 0 },
        c: { hostPorts: { http: 7 }, runningGeneration: 1 },
      },
    });
    // Plain data, not shared with the supervisor.
    expect(snapshot.desired?.[0]).not.toBe(wanted.get("a"));
    expect(JSON.parse(JSON.stringify(snapshot))).toEqual(snapshot);
    expect(snapshotOf(null, [], {})).toEqual({ version: 1, desired: null, replicas: {} });
  });
});

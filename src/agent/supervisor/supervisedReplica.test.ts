import { describe, expect, it } from "vitest";
import {
  graceMsOf,
  isReplacement,
  isStale,
  newRecord,
  probesChanged,
} from "./supervisedReplica.js";
import type { DesiredReplica } from "./supervisorTypes.js";

function desired(overrides: Partial<DesiredReplica> = {}): DesiredReplica {
  return {
    spec: {
      replicaId: "web-0",
      namespace: "default",
      workload: "web",
      driver: "container",
      image: "web:1",
      env: { A: "1", B: "2" },
      ports: [{ name: "http", containerPort: 8080, hostPort: 0, protocol: "tcp" }],
      resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 1 },
    },
    restartPolicy: "Always",
    terminationGracePeriodSeconds: 5,
    generation: 1,
    ...overrides,
  };
}

describe("replica records", () => {
  it("NFR-A1 a new record takes the restored ports, restarts and running generation; it counts as lost only for the same generation", () => {
    const fresh = newRecord(desired(), undefined, 42);
    expect(fresh).toMatchObject({
      id: "web-0",
      intent: "start",
      phase: "Pending",
      message: "waiting to start",
      hostPorts: {},
      restarts: 0,
      restoredRunning: false,
      lastTransitionAtMs: 42,
    });
    const restored = newRecord(
      desired(),
      { hostPorts: { http: 40_000 }, runningGeneration: 1, restarts: 3 },
      42,
    );
    expect(restored).toMatchObject({
      hostPorts: { http: 40_000 },
      runningGeneration: 1,
      restarts: 3,
      restoredRunning: true,
    });
    const outdated = newRecord(
      desired({ generation: 2 }),
      { hostPorts: {}, runningGeneration: 1 },
      0,
    );
    expect(outdated.restoredRunning).toBe(false);
    expect(isStale(outdated)).toBe(true);
    expect(isStale(restored)).toBe(false);
  });

  it("a new generation or run spec replaces the replica, whatever the key order; probe changes only restart probes", () => {
    const base = desired();
    const reordered = desired();
    reordered.spec = { ...base.spec, env: { B: "2", A: "1" } };
    expect(isReplacement(base, reordered)).toBe(false);
    expect(isReplacement(base, desired({ generation: 2 }))).toBe(true);
    const changed = desired();
    changed.spec = { ...base.spec, image: "web:2" };
    expect(isReplacement(base, changed)).toBe(true);
    const probed = desired({
      readiness: {
        action: { tcp: { port: 8080 } },
        periodSeconds: 1,
        timeoutSeconds: 1,
        failureThreshold: 1,
        successThreshold: 1,
        initialDelaySeconds: 0,
      },
    });
    expect(isReplacement(base, probed)).toBe(false);
    expect(probesChanged(base, probed)).toBe(true);
    expect(probesChanged(base, reordered)).toBe(false);
  });

  it("the grace period is the spec's, or 30 s when the spec's is unusable", () => {
    expect(graceMsOf(desired({ terminationGracePeriodSeconds: 2.5 }))).toBe(2500);
    expect(graceMsOf(desired({ terminationGracePeriodSeconds: 0 }))).toBe(0);
    expect(graceMsOf(desired({ terminationGracePeriodSeconds: -1 }))).toBe(30_000);
    expect(graceMsOf(desired({ terminationGracePeriodSeconds: Number.NaN }))).toBe(30_000);
  });
});

import { describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { silentLogger } from "../../observe/logger.js";
import type { PortOwner } from "../drivers/driver.js";
import type { ProbeAction, ProbeFunction, ProbeResult, ProbeSpec } from "../probes/probeTypes.js";
import {
  judgeProbe,
  localProbePort,
  type PortOwnerLookup,
  probeWithPortOwnership,
  ReplicaProbes,
} from "./replicaProbes.js";
import type { DesiredReplica } from "./supervisorTypes.js";

/** Lets promise chains started by timers run to completion. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
}

async function advance(clock: ManualClock, totalMs: number, stepMs = 100): Promise<void> {
  for (let doneMs = 0; doneMs < totalMs; doneMs += stepMs) {
    clock.advance(Math.min(stepMs, totalMs - doneMs));
    await settle();
  }
}

function probeSpec(action: ProbeAction, overrides: Partial<ProbeSpec> = {}): ProbeSpec {
  return {
    action,
    periodSeconds: 1,
    timeoutSeconds: 1,
    failureThreshold: 2,
    successThreshold: 1,
    initialDelaySeconds: 0,
    ...overrides,
  };
}

function desired(overrides: Partial<DesiredReplica> = {}): DesiredReplica {
  return {
    spec: {
      replicaId: "web-0",
      namespace: "default",
      workload: "web",
      driver: "container",
      image: "web:1",
      env: {},
      ports: [{ name: "http", containerPort: 8080, hostPort: 0, protocol: "tcp" }],
      resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 1 },
    },
    restartPolicy: "Always",
    terminationGracePeriodSeconds: 5,
    generation: 1,
    ...overrides,
  };
}

const ok: ProbeResult = { ok: true, message: "HTTP 200" };
const refused: ProbeResult = { ok: false, message: "connection refused", refused: true };

describe("hardening: probes judged by who holds the port", () => {
  const ok = { ok: true, message: "HTTP 200" };
  const refused = { ok: false, message: "connection refused" };

  it("REQ-032 a probe answered on a port held by another program fails and names the holder", () => {
    const verdict = judgeProbe(ok, { kind: "other", holder: "pid 42 (python3)" }, 18080);
    expect(verdict.result).toEqual({
      ok: false,
      message: "port 18080 is held by pid 42 (python3), not by this replica",
    });
    expect(verdict.foreignHolder).toBe("pid 42 (python3)");
  });

  it("REQ-032 the replica's own listener leaves the result as it is; nobody listening is no proof of success", () => {
    expect(judgeProbe(ok, { kind: "replica" }, 1)).toEqual({ result: ok });
    expect(judgeProbe(refused, { kind: "replica" }, 1)).toEqual({ result: refused });
    expect(judgeProbe(refused, { kind: "nobody" }, 1)).toEqual({ result: refused });
    expect(judgeProbe(ok, { kind: "nobody" }, 7).result).toEqual({
      ok: false,
      message: "nothing of this replica listens on port 7",
    });
    expect(judgeProbe(ok, { kind: "unknown", reason: "timed out" }, 7).result.ok).toBe(false);
  });

  it("REQ-032 only http and tcp probes of this node are checked", () => {
    expect(localProbePort({ http: { path: "/", port: 80 } })).toBe(80);
    expect(localProbePort({ tcp: { port: 81, host: "127.0.0.1" } })).toBe(81);
    expect(localProbePort({ tcp: { port: 82, host: "10.0.0.9" } })).toBeUndefined();
    expect(localProbePort({ exec: { command: ["true"] } })).toBeUndefined();
  });
});

describe("probes with the driver's word on who holds the port", () => {
  function lookupOf(owners: Map<number, PortOwner | Error>, asked: number[]): PortOwnerLookup {
    return async (port) => {
      asked.push(port);
      const owner = owners.get(port) ?? { kind: "replica" };
      if (owner instanceof Error) throw owner;
      return owner;
    };
  }

  it("REQ-032 an answered probe of this node asks who holds its port; another program fails it and is reported", async () => {
    const asked: number[] = [];
    const foreign: string[] = [];
    const owners = new Map<number, PortOwner | Error>([
      [18080, { kind: "other", holder: "pid 42 (python3)" }],
    ]);
    const probe = probeWithPortOwnership(
      async () => ok,
      lookupOf(owners, asked),
      (port, holder) => foreign.push(`${port} ${holder}`),
    );
    expect(await probe({ tcp: { port: 18080 } }, { timeoutMs: 1000 })).toEqual({
      ok: false,
      message: "port 18080 is held by pid 42 (python3), not by this replica",
    });
    expect(foreign).toEqual(["18080 pid 42 (python3)"]);
    expect(await probe({ http: { path: "/", port: 18081 } }, { timeoutMs: 1000 })).toEqual(ok);
    expect(asked).toEqual([18080, 18081]);
  });

  it("REQ-032 a refused probe, an exec probe and a remote host ask nobody; a failed lookup fails the probe", async () => {
    const asked: number[] = [];
    let result: ProbeResult = refused;
    const owners = new Map<number, PortOwner | Error>([[9, new Error("engine did not answer")]]);
    const probe = probeWithPortOwnership(
      async () => result,
      lookupOf(owners, asked),
      () => undefined,
    );
    expect(await probe({ tcp: { port: 1 } }, { timeoutMs: 1000 })).toEqual(refused);
    result = ok;
    expect(await probe({ exec: { command: ["true"] } }, { timeoutMs: 1000 })).toEqual(ok);
    expect(await probe({ tcp: { port: 2, host: "10.0.0.9" } }, { timeoutMs: 1000 })).toEqual(ok);
    expect(asked).toEqual([]);
    expect(await probe({ tcp: { port: 9 } }, { timeoutMs: 1000 })).toEqual({
      ok: false,
      message: "cannot tell who listens on port 9: engine did not answer",
    });
  });

  it("without a lookup (a driver that cannot tell) the probe is trusted as it is", () => {
    const probe: ProbeFunction = async () => ok;
    expect(probeWithPortOwnership(probe, undefined, () => undefined)).toBe(probe);
  });
});

describe("a replica's probes under simulated time", () => {
  function harness(spec: Partial<DesiredReplica>) {
    const clock = new ManualClock();
    const results = new Map<number, ProbeResult>();
    const probed: Array<{ port: number; atMs: number }> = [];
    const events: string[] = [];
    const seen: string[] = [];
    const probes = new ReplicaProbes({
      replicaId: "web-0",
      desired: desired(spec),
      hostPorts: { http: 40_000 },
      clock,
      probe: async (action) => {
        const port = "http" in action ? action.http.port : "tcp" in action ? action.tcp.port : 0;
        probed.push({ port, atMs: clock.nowMs() });
        return results.get(port) ?? ok;
      },
      onResult: (kind, result) => seen.push(`${kind} ${result.message}`),
      logger: silentLogger,
      onLiveness: (passing, message) => events.push(`liveness ${passing} ${message}`),
      onReadiness: (passing) => events.push(`readiness ${passing}`),
    });
    return { clock, results, probed, events, seen, probes };
  }

  it("REQ-032 probes the replica's host port, not its container port, and reports liveness flips with the last message", async () => {
    const h = harness({
      liveness: probeSpec({ http: { path: "/healthz", port: 8080 } }, { failureThreshold: 2 }),
    });
    h.probes.start();
    await advance(h.clock, 2500);
    expect(new Set(h.probed.map((p) => p.port))).toEqual(new Set([40_000]));
    expect(h.events).toEqual([]);
    h.results.set(40_000, { ok: false, message: "HTTP 500" });
    await advance(h.clock, 1000);
    expect(h.events).toEqual([]);
    await advance(h.clock, 1000);
    expect(h.events).toEqual(["liveness false HTTP 500"]);
    h.results.delete(40_000);
    await advance(h.clock, 1000);
    expect(h.events).toEqual(["liveness false HTTP 500", "liveness true HTTP 200"]);
    expect(h.seen).toContain("liveness HTTP 500");
  });

  it("REQ-032 readiness waits its initial delay, counted from start(), and flips both ways", async () => {
    const h = harness({
      readiness: probeSpec(
        { tcp: { port: 8080 } },
        { initialDelaySeconds: 3, failureThreshold: 1 },
      ),
    });
    h.clock.advance(10_000);
    const startedAtMs = h.clock.nowMs();
    h.probes.start();
    await advance(h.clock, 2900);
    expect(h.probed).toEqual([]);
    await advance(h.clock, 200);
    expect(h.probed[0]?.atMs).toBe(startedAtMs + 3000);
    expect(h.events).toEqual(["readiness true"]);
    h.results.set(40_000, { ok: false, message: "connection refused" });
    await advance(h.clock, 1000);
    expect(h.events).toEqual(["readiness true", "readiness false"]);
  });

  it("once stopped, nothing more is probed or heard, even from a probe in flight", async () => {
    const clock = new ManualClock();
    const events: string[] = [];
    const inFlight: Array<(result: ProbeResult) => void> = [];
    const probes = new ReplicaProbes({
      replicaId: "web-0",
      desired: desired({ liveness: probeSpec({ tcp: { port: 8080 } }, { failureThreshold: 1 }) }),
      hostPorts: { http: 40_000 },
      clock,
      probe: () => new Promise((resolve) => inFlight.push(resolve)),
      logger: silentLogger,
      onLiveness: (passing) => events.push(`liveness ${passing}`),
      onReadiness: () => undefined,
    });
    probes.start();
    await advance(clock, 100);
    expect(inFlight).toHaveLength(1);
    probes.stop();
    inFlight[0]?.({ ok: false, message: "HTTP 503" });
    await advance(clock, 5000);
    expect(inFlight).toHaveLength(1);
    expect(events).toEqual([]);
  });
});

import { afterEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { seededRng } from "../../lib/rng.js";
import { DriverError, type DriverName, type RuntimeDriver } from "../drivers/driver.js";
import { FakeDriver } from "../drivers/fakeDriver.js";
import type { ProbeAction, ProbeFunction, ProbeResult, ProbeSpec } from "../probes/probeTypes.js";
import { runProbeOnce } from "../probes/runProbeOnce.js";
import type { HostPortAllocator } from "./hostPortReservations.js";
import { ReplicaSupervisor, type ReplicaSupervisorOptions } from "./replicaSupervisor.js";
import type { DesiredReplica, ReplicaReport, SupervisorSnapshot } from "./supervisorTypes.js";

/** Lets promise chains started by timers run to completion. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** Moves simulated time in small steps, settling async work in between. */
async function advance(clock: ManualClock, totalMs: number, stepMs = 100): Promise<void> {
  for (let doneMs = 0; doneMs < totalMs; doneMs += stepMs) {
    clock.advance(Math.min(stepMs, totalMs - doneMs));
    await settle();
  }
}

function desired(
  id: string,
  overrides: Partial<Omit<DesiredReplica, "spec">> & {
    driver?: DriverName;
    image?: string;
    env?: Record<string, string>;
  } = {},
): DesiredReplica {
  const { driver = "container", image = "web:1", env = {}, ...rest } = overrides;
  return {
    spec: {
      replicaId: id,
      namespace: "default",
      workload: "web",
      driver,
      ...(driver === "container" ? { image } : { command: ["/bin/web"] }),
      env,
      ports: [{ name: "http", containerPort: 8080, hostPort: 0, protocol: "tcp" }],
      resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 1 },
    },
    restartPolicy: "Always",
    terminationGracePeriodSeconds: 5,
    generation: 1,
    ...rest,
  };
}

function probeSpec(action: ProbeAction, overrides: Partial<ProbeSpec> = {}): ProbeSpec {
  return {
    action,
    periodSeconds: 1,
    timeoutSeconds: 1,
    failureThreshold: 3,
    successThreshold: 1,
    initialDelaySeconds: 0,
    ...overrides,
  };
}

interface Harness {
  clock: ManualClock;
  container: FakeDriver;
  process: FakeDriver;
  supervisor: ReplicaSupervisor;
  emitted: ReplicaReport[][];
  /** Result per probed host port; default healthy. */
  probeResults: Map<number, ProbeResult>;
  probedPorts: number[];
  report(id: string): ReplicaReport | undefined;
}

const supervisors: ReplicaSupervisor[] = [];
afterEach(async () => {
  await Promise.all(supervisors.splice(0).map((s) => s.stop({ stopReplicas: false })));
});

function harness(
  options: {
    drivers?: RuntimeDriver[];
    clock?: ManualClock;
    firstHostPort?: number;
    allocatePort?: (preferred: number) => Promise<number>;
    hostPorts?: HostPortAllocator;
    onDurableChange?: () => void;
    replicaFiles?: ReplicaSupervisorOptions["replicaFiles"];
  } = {},
): Harness {
  const clock = options.clock ?? new ManualClock();
  const container = new FakeDriver("container", clock);
  const processDriver = new FakeDriver("process", clock);
  const drivers = options.drivers ?? [container, processDriver];
  const emitted: ReplicaReport[][] = [];
  const probeResults = new Map<number, ProbeResult>();
  const probedPorts: number[] = [];
  const probe: ProbeFunction = async (action, runOptions) => {
    if ("exec" in action) return runProbeOnce(action, runOptions);
    const port = "http" in action ? action.http.port : action.tcp.port;
    probedPorts.push(port);
    return probeResults.get(port) ?? { ok: true, message: "HTTP 200" };
  };
  let nextHostPort = options.firstHostPort ?? 40_000;
  const supervisor = new ReplicaSupervisor({
    drivers: new Map(drivers.map((driver) => [driver.name, driver])),
    clock,
    rng: seededRng(42),
    onReport: (reports) => emitted.push(reports),
    allocatePort: options.allocatePort ?? (async () => nextHostPort++),
    ...(options.hostPorts ? { hostPorts: options.hostPorts } : {}),
    probe,
    ...(options.onDurableChange ? { onDurableChange: options.onDurableChange } : {}),
    ...(options.replicaFiles ? { replicaFiles: options.replicaFiles } : {}),
  });
  supervisors.push(supervisor);
  return {
    clock,
    container,
    process: processDriver,
    supervisor,
    emitted,
    probeResults,
    probedPorts,
    report: (id) => supervisor.reports().find((report) => report.replicaId === id),
  };
}

describe("ReplicaSupervisor: starting and restarting", () => {
  it("starts a desired replica and reports it Running and ready", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0", { env: { GREETING: "hi" } })]);
    await h.supervisor.start();

    expect(h.report("web-0")).toMatchObject({
      phase: "Running",
      ready: true,
      restarts: 0,
      reason: "",
      hostPorts: { http: 40_000 },
      driver: "container",
      startedAtMs: h.clock.nowMs(),
    });
    const running = h.container.replicas.get("web-0");
    expect(running?.state).toBe("running");
    expect(running?.spec.ports[0]?.hostPort).toBe(40_000);
    expect(running?.spec.env).toMatchObject({ PORT: "8080", PORT_HTTP: "8080", GREETING: "hi" });
    expect(running?.spec.env.CLOUDLESS_WORKLOAD).toBe(running?.spec.workload);
    expect(h.emitted.at(-1)?.map((report) => report.phase)).toEqual(["Running"]);
  });

  it("gives one process replica its declared port and a second one on the node another port", async () => {
    // Like the real allocator: the preferred port while nobody holds it, else a free one.
    const bound = new Set<number>();
    let next = 40_000;
    const h = harness({
      allocatePort: async (preferred) => {
        const port = preferred > 0 && !bound.has(preferred) ? preferred : next++;
        bound.add(port);
        return port;
      },
    });
    h.supervisor.setDesired([
      desired("job-0", { driver: "process" }),
      desired("job-1", { driver: "process" }),
    ]);
    await h.supervisor.start();
    const ports = ["job-0", "job-1"].map((id) => h.report(id)?.hostPorts.http);
    expect(ports.sort((a = 0, b = 0) => a - b)).toEqual([8080, 40_000]);
    for (const id of ["job-0", "job-1"]) {
      expect(h.report(id)).toMatchObject({ phase: "Running", driver: "process" });
      // A process listens on its host port itself: PORT names it.
      expect(h.process.replicas.get(id)?.spec.env.PORT).toBe(String(h.report(id)?.hostPorts.http));
    }
  });

  it("Always: restarts an exiting replica with growing back-off, reporting CrashLoopBackOff", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0")]);
    await h.supervisor.start();

    const messages: string[] = [];
    for (let crash = 1; crash <= 3; crash++) {
      h.container.exit("web-0", 1);
      await advance(h.clock, 1000);
      const report = h.report("web-0");
      expect(report).toMatchObject({
        phase: "CrashLoopBackOff",
        reason: "CrashLoopBackOff",
        ready: false,
        exitCode: 1,
        restarts: crash - 1,
      });
      messages.push(report?.message ?? "");
      await advance(h.clock, 2 ** crash * 1000);
      expect(h.report("web-0")).toMatchObject({ phase: "Running", restarts: crash });
    }
    expect(messages).toEqual([
      "back-off 1s restarting failed replica (exit code 1)",
      "back-off 2s restarting failed replica (exit code 1)",
      "back-off 4s restarting failed replica (exit code 1)",
    ]);
    // The replica remembers why it was restarted.
    expect(h.report("web-0")).toMatchObject({ reason: "Error", message: expect.any(String) });

    const startTimes = h.container.callsTo("start", "web-0").map((call) => call.atMs);
    const gaps = startTimes.slice(1).map((atMs, i) => atMs - (startTimes[i] as number));
    expect(gaps).toHaveLength(3);
    expect(gaps[1] as number).toBeGreaterThan(gaps[0] as number);
    expect(gaps[2] as number).toBeGreaterThan(gaps[1] as number);
  });

  it("resets the back-off once a replica has run for a while", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0")]);
    await h.supervisor.start();
    for (let crash = 1; crash <= 3; crash++) {
      h.container.exit("web-0", 1);
      await advance(h.clock, 1000 + 2 ** crash * 1000);
    }
    expect(h.report("web-0")?.phase).toBe("Running");
    await advance(h.clock, 11_000);
    h.container.exit("web-0", 2);
    await advance(h.clock, 1000);
    expect(h.report("web-0")?.message).toBe("back-off 1s restarting failed replica (exit code 2)");
  });

  it("OnFailure: a clean exit is Succeeded and not restarted; a failure is restarted", async () => {
    const h = harness();
    h.supervisor.setDesired([
      desired("ok-0", { restartPolicy: "OnFailure" }),
      desired("bad-0", { restartPolicy: "OnFailure" }),
    ]);
    await h.supervisor.start();
    h.container.exit("ok-0", 0);
    h.container.exit("bad-0", 3);
    await advance(h.clock, 30_000);

    expect(h.report("ok-0")).toMatchObject({
      phase: "Succeeded",
      reason: "Completed",
      message: "exited with code 0",
      exitCode: 0,
      ready: false,
      restarts: 0,
    });
    expect(h.container.callsTo("start", "ok-0")).toHaveLength(1);
    expect(h.report("bad-0")).toMatchObject({ phase: "Running", restarts: 1 });
  });

  it("Never: an exited replica is Failed and stays that way", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("once-0", { restartPolicy: "Never" })]);
    await h.supervisor.start();
    h.container.exit("once-0", 1);
    await advance(h.clock, 30_000);
    expect(h.report("once-0")).toMatchObject({
      phase: "Failed",
      reason: "Error",
      message: "exited with code 1",
      exitCode: 1,
      restarts: 0,
    });
    expect(h.container.callsTo("start", "once-0")).toHaveLength(1);
    expect(h.container.replicas.get("once-0")?.state).toBe("exited");
  });

  it("reports an OOM kill as OOMKilled", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("big-0", { restartPolicy: "Never" })]);
    await h.supervisor.start();
    h.container.exit("big-0", 137, { oomKilled: true });
    await advance(h.clock, 1000);
    expect(h.report("big-0")).toMatchObject({
      phase: "Failed",
      reason: "OOMKilled",
      exitCode: 137,
    });
  });

  it("restarts a replica that disappeared from the runtime", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0")]);
    await h.supervisor.start();
    h.container.replicas.delete("web-0");
    await advance(h.clock, 1000);
    expect(h.report("web-0")).toMatchObject({
      phase: "CrashLoopBackOff",
      message: "back-off 1s restarting failed replica (replica disappeared)",
    });
    await advance(h.clock, 2000);
    expect(h.report("web-0")).toMatchObject({ phase: "Running", restarts: 1, reason: "Lost" });
  });
});

describe("ReplicaSupervisor: probes", () => {
  it("REQ-032 restarts a replica whose liveness probe fails failureThreshold times", async () => {
    const h = harness();
    h.supervisor.setDesired([
      desired("web-0", {
        liveness: probeSpec({ http: { path: "/healthz", port: 8080 } }, { failureThreshold: 3 }),
      }),
    ]);
    await h.supervisor.start();
    await advance(h.clock, 5000);
    expect(h.report("web-0")).toMatchObject({ phase: "Running", restarts: 0 });
    // The probe goes to the replica's host port, not its container port.
    expect(new Set(h.probedPorts)).toEqual(new Set([40_000]));

    h.probeResults.set(40_000, { ok: false, message: "HTTP 500" });
    await advance(h.clock, 2000);
    expect(h.report("web-0")?.phase).toBe("Running");
    expect(h.container.callsTo("stop", "web-0")).toHaveLength(0);
    await advance(h.clock, 1000);
    expect(h.container.callsTo("stop", "web-0")).toHaveLength(1);
    expect(h.report("web-0")).toMatchObject({
      phase: "CrashLoopBackOff",
      reason: "LivenessProbeFailed",
      message: "back-off 1s restarting failed replica (liveness probe failed: HTTP 500)",
    });

    h.probeResults.set(40_000, { ok: true, message: "HTTP 200" });
    await advance(h.clock, 1500);
    expect(h.report("web-0")).toMatchObject({
      phase: "Running",
      restarts: 1,
      reason: "LivenessProbeFailed",
      hostPorts: { http: 40_000 },
    });
    await advance(h.clock, 20_000);
    expect(h.report("web-0")?.restarts).toBe(1);
  });

  it("REQ-032 exec liveness probes run through the driver's exec", async () => {
    const h = harness();
    let healthy = true;
    h.container.onExec((_id, command) => {
      expect(command).toEqual(["cat", "/tmp/alive"]);
      return { exitCode: healthy ? 0 : 1, stdout: "", stderr: healthy ? "" : "no such file" };
    });
    h.supervisor.setDesired([
      desired("web-0", {
        restartPolicy: "Never",
        liveness: probeSpec({ exec: { command: ["cat", "/tmp/alive"] } }, { failureThreshold: 1 }),
      }),
    ]);
    await h.supervisor.start();
    await advance(h.clock, 3000);
    expect(h.report("web-0")?.phase).toBe("Running");
    healthy = false;
    await advance(h.clock, 2000);
    expect(h.report("web-0")).toMatchObject({
      phase: "Failed",
      reason: "LivenessProbeFailed",
      message: "killed after its liveness probe failed: exit code 1: no such file",
    });
  });

  it("REQ-032 readiness gates the ready flag: false, then true, false and true again", async () => {
    const h = harness();
    h.probeResults.set(40_000, { ok: false, message: "connection refused" });
    h.supervisor.setDesired([
      desired("web-0", {
        readiness: probeSpec(
          { tcp: { port: 8080 } },
          { failureThreshold: 2, successThreshold: 2, initialDelaySeconds: 2 },
        ),
      }),
    ]);
    await h.supervisor.start();
    expect(h.report("web-0")).toMatchObject({ phase: "Running", ready: false });

    h.probeResults.set(40_000, { ok: true, message: "connected" });
    await advance(h.clock, 2500);
    expect(h.report("web-0")?.ready).toBe(false);
    await advance(h.clock, 1000);
    expect(h.report("web-0")?.ready).toBe(true);
    expect(h.emitted.at(-1)?.[0]?.ready).toBe(true);
    const readyAtMs = h.report("web-0")?.lastTransitionAtMs ?? 0;

    h.probeResults.set(40_000, { ok: false, message: "connection refused" });
    await advance(h.clock, 2000);
    expect(h.report("web-0")).toMatchObject({ phase: "Running", ready: false, restarts: 0 });
    expect(h.report("web-0")?.lastTransitionAtMs).toBeGreaterThan(readyAtMs);

    h.probeResults.set(40_000, { ok: true, message: "connected" });
    await advance(h.clock, 2000);
    expect(h.report("web-0")?.ready).toBe(true);
    expect(h.emitted.map((reports) => reports[0]?.ready)).toEqual([false, true, false, true]);
  });
});

describe("ReplicaSupervisor: the desired set", () => {
  it("adopts a running desired replica without restarting it and removes an undesired one", async () => {
    const h = harness();
    const keep = desired("keep-0");
    h.container.seed(keep.spec);
    h.container.seed(desired("gone-0").spec);
    h.supervisor.setDesired([keep]);
    await h.supervisor.start();

    expect(h.report("keep-0")).toMatchObject({
      phase: "Running",
      reason: "Adopted",
      ready: true,
      restarts: 0,
    });
    expect(h.container.callsTo("start")).toHaveLength(0);
    expect(h.container.callsTo("stop", "keep-0")).toHaveLength(0);
    expect(h.container.callsTo("stop", "gone-0")).toHaveLength(1);
    expect(h.container.callsTo("remove", "gone-0")).toHaveLength(1);
    expect([...h.container.replicas.keys()]).toEqual(["keep-0"]);
    expect(h.supervisor.reports().map((report) => report.replicaId)).toEqual(["keep-0"]);
  });

  it("removes nothing it finds before it has been given a desired set", async () => {
    const h = harness();
    h.container.seed(desired("unknown-0").spec);
    await h.supervisor.start();
    await advance(h.clock, 5000);
    expect(h.container.replicas.get("unknown-0")?.state).toBe("running");

    h.supervisor.setDesired([]);
    await advance(h.clock, 100);
    expect(h.container.replicas.has("unknown-0")).toBe(false);
  });

  it("keeps an adopted replica's restart policy: a Never replica found exited is not rerun", async () => {
    const h = harness();
    const job = desired("job-0", { restartPolicy: "Never" });
    h.container.seed(job.spec, "exited", 0);
    h.supervisor.setDesired([job]);
    await h.supervisor.start();
    await advance(h.clock, 5000);
    expect(h.report("job-0")).toMatchObject({ phase: "Succeeded", exitCode: 0 });
    expect(h.container.callsTo("start")).toHaveLength(0);
  });

  it("stops and removes a replica dropped from the desired set", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("a-0"), desired("b-0")]);
    await h.supervisor.start();
    h.supervisor.setDesired([desired("a-0")]);
    await settle();

    expect(h.container.callsTo("stop", "b-0")).toHaveLength(1);
    expect(h.container.callsTo("remove", "b-0")).toHaveLength(1);
    expect(h.container.replicas.has("b-0")).toBe(false);
    expect(h.supervisor.reports().map((report) => report.replicaId)).toEqual(["a-0"]);
    expect(h.emitted.at(-1)?.map((report) => report.replicaId)).toEqual(["a-0"]);
    expect(h.container.callsTo("stop", "a-0")).toHaveLength(0);
  });

  it("replaces a replica whose generation changed, keeping its host port", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0")]);
    await h.supervisor.start();
    h.container.exit("web-0", 1);
    await advance(h.clock, 1000);
    await advance(h.clock, 2000);
    expect(h.report("web-0")?.restarts).toBe(1);

    h.supervisor.setDesired([desired("web-0", { generation: 2, image: "web:2" })]);
    await settle();
    expect(h.container.callsTo("stop", "web-0")).toHaveLength(1);
    expect(h.container.replicas.get("web-0")?.spec.image).toBe("web:2");
    expect(h.report("web-0")).toMatchObject({
      phase: "Running",
      restarts: 0,
      hostPorts: { http: 40_000 },
    });
  });

  it("applies probe changes without restarting the replica", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0")]);
    await h.supervisor.start();
    h.probeResults.set(40_000, { ok: false, message: "HTTP 503" });
    h.supervisor.setDesired([desired("web-0", { readiness: probeSpec({ tcp: { port: 8080 } }) })]);
    await advance(h.clock, 2000);
    expect(h.report("web-0")).toMatchObject({ phase: "Running", ready: false });
    expect(h.container.callsTo("start")).toHaveLength(1);
  });

  it("does not emit a report when nothing changed", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0")]);
    await h.supervisor.start();
    const before = h.emitted.length;
    await advance(h.clock, 10_000);
    expect(h.emitted).toHaveLength(before);
  });
});

describe("ReplicaSupervisor: failures stay contained", () => {
  it("reports DriverUnavailable for one driver's replicas while the other driver's keep working", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0"), desired("job-0", { driver: "process" })]);
    await h.supervisor.start();

    h.container.setAvailable(false, "podman socket gone");
    await advance(h.clock, 1000);
    expect(h.report("web-0")).toMatchObject({
      reason: "DriverUnavailable",
      message: "container driver unavailable: podman socket gone",
    });

    h.process.exit("job-0", 1);
    await advance(h.clock, 4000);
    expect(h.report("job-0")).toMatchObject({ phase: "Running", restarts: 1, reason: "Error" });

    h.container.setAvailable(true);
    await advance(h.clock, 1000);
    expect(h.report("web-0")).toMatchObject({ phase: "Running", reason: "", restarts: 0 });
    expect(h.container.callsTo("start", "web-0")).toHaveLength(1);
  });

  it("reports ImageNotFound and retries with back-off, not in a storm", async () => {
    const h = harness();
    h.container.failStarts(
      new DriverError(
        "imageNotFound",
        "image web:1 is not present locally and could not be pulled",
      ),
    );
    h.supervisor.setDesired([desired("web-0")]);
    await h.supervisor.start();
    expect(h.report("web-0")).toMatchObject({
      phase: "Pending",
      reason: "ImageNotFound",
      ready: false,
      message: "image web:1 is not present locally and could not be pulled (back-off 1s)",
    });

    await advance(h.clock, 60_000, 250);
    // Back-off 1, 2, 4, 8, 16, 32 s: attempts at about 0, 1, 3, 7, 15, 31 s in 60 s.
    const attempts = h.container.callsTo("start", "web-0").length;
    expect(attempts).toBeGreaterThanOrEqual(5);
    expect(attempts).toBeLessThanOrEqual(7);
    expect(h.report("web-0")?.reason).toBe("ImageNotFound");

    h.container.failStarts(undefined);
    await advance(h.clock, 70_000, 500);
    expect(h.report("web-0")).toMatchObject({ phase: "Running", restarts: 0 });
  });

  it("bounds a hung driver call with a deadline while other replicas proceed", async () => {
    const h = harness();
    const release = h.container.hang("start", "slow-0");
    h.supervisor.setDesired([desired("slow-0"), desired("fast-0")]);
    const started = h.supervisor.start();
    await settle();
    expect(h.report("fast-0")?.phase).toBe("Running");
    expect(h.report("slow-0")?.phase).toBe("Starting");

    await advance(h.clock, 30_000, 1000);
    await started;
    expect(h.report("slow-0")).toMatchObject({
      phase: "Pending",
      reason: "DriverTimeout",
      message: "container start did not answer within 30000 ms (back-off 1s)",
    });
    // One start in flight per replica: no further calls were piled up while it hung.
    expect(h.container.callsTo("start", "slow-0")).toHaveLength(1);

    release();
    await advance(h.clock, 2000);
    // The late start did complete; the replica is picked up as running, not started twice.
    expect(h.report("slow-0")?.phase).toBe("Running");
    expect(h.container.callsTo("start", "slow-0")).toHaveLength(1);
  });

  it("keeps running when onReport throws", async () => {
    const clock = new ManualClock();
    const driver = new FakeDriver("container", clock);
    const supervisor = new ReplicaSupervisor({
      drivers: new Map([["container", driver]]),
      clock,
      rng: seededRng(1),
      onReport: () => {
        throw new Error("coordinator link down");
      },
      allocatePort: async () => 40_000,
    });
    supervisors.push(supervisor);
    supervisor.setDesired([desired("web-0")]);
    await supervisor.start();
    driver.exit("web-0", 1);
    await advance(clock, 3000);
    expect(supervisor.reports()[0]).toMatchObject({ phase: "Running", restarts: 1 });
  });
});

describe("ReplicaSupervisor: lifecycle and state", () => {
  it("snapshot and restore let a new agent adopt replicas with their host ports", async () => {
    const clock = new ManualClock();
    const first = harness({ clock });
    first.supervisor.setDesired([desired("web-0"), desired("web-1")]);
    await first.supervisor.start();
    const saved = JSON.parse(JSON.stringify(first.supervisor.snapshot()));
    await first.supervisor.stop({ stopReplicas: false });
    expect(first.container.replicas.get("web-0")?.state).toBe("running");

    const second = harness({ clock, drivers: [first.container], firstHostPort: 50_000 });
    second.supervisor.restore(saved);
    await second.supervisor.start();
    expect(second.supervisor.reports()).toMatchObject([
      { replicaId: "web-0", phase: "Running", reason: "Adopted", hostPorts: { http: 40_000 } },
      { replicaId: "web-1", phase: "Running", reason: "Adopted", hostPorts: { http: 40_001 } },
    ]);
    expect(first.container.callsTo("start")).toHaveLength(2);
  });

  it("NFR-A1 host ports and the running generation are reported as durable before the next sync", async () => {
    // The agent writes its state file on this signal without waiting for the 2 s runtime
    // interval: a restart right after a start must find the ports the process listens on.
    const snapshots: SupervisorSnapshot[] = [];
    let supervisor: ReplicaSupervisor | undefined;
    const h = harness({
      onDurableChange: () => {
        if (supervisor) snapshots.push(structuredClone(supervisor.snapshot()));
      },
    });
    supervisor = h.supervisor;
    h.supervisor.setDesired([desired("web-0")]);
    await h.supervisor.start();
    expect(snapshots.length).toBeGreaterThanOrEqual(2);
    // Ports first (before the process can listen on them), then the generation it runs.
    expect(snapshots[0]?.replicas["web-0"]).toMatchObject({ hostPorts: { http: 40_000 } });
    expect(snapshots[0]?.replicas["web-0"]?.runningGeneration).toBeUndefined();
    expect(snapshots.at(-1)?.replicas["web-0"]).toMatchObject({
      hostPorts: { http: 40_000 },
      runningGeneration: 1,
    });
  });

  it("NFR-A1 after a restore, the coordinator's identical set keeps adopted replicas untouched, restart counts included", async () => {
    const clock = new ManualClock();
    const first = harness({ clock });
    first.supervisor.setDesired([desired("web-0"), desired("web-1")]);
    await first.supervisor.start();
    first.container.exit("web-1", 1);
    await advance(clock, 3000);
    expect(first.report("web-1")).toMatchObject({ phase: "Running", restarts: 1 });
    const saved = JSON.parse(JSON.stringify(first.supervisor.snapshot()));
    await first.supervisor.stop({ stopReplicas: false });
    const startsBefore = first.container.callsTo("start").length;

    const second = harness({ clock, drivers: [first.container] });
    second.supervisor.restore(saved);
    await second.supervisor.start();
    // The coordinator comes back and sends the same set (its objects, not the snapshot's).
    second.supervisor.setDesired([desired("web-0"), desired("web-1")]);
    await advance(clock, 5000, 500);
    expect(second.supervisor.reports()).toMatchObject([
      { replicaId: "web-0", phase: "Running", reason: "Adopted", restarts: 0 },
      { replicaId: "web-1", phase: "Running", reason: "Adopted", restarts: 1 },
    ]);
    expect(first.container.callsTo("start")).toHaveLength(startsBefore);
    expect(first.container.callsTo("stop")).toHaveLength(0);
  });

  it("NFR-A1 a replica that vanished while the agent was down is started again under its restart policy", async () => {
    const clock = new ManualClock();
    const first = harness({ clock });
    first.supervisor.setDesired([
      desired("always-0"),
      desired("never-0", { restartPolicy: "Never" }),
    ]);
    await first.supervisor.start();
    const saved = JSON.parse(JSON.stringify(first.supervisor.snapshot()));
    await first.supervisor.stop({ stopReplicas: false });
    // Both disappear while no agent runs (a reboot, someone removed them).
    first.container.replicas.clear();

    const second = harness({ clock, drivers: [first.container] });
    second.supervisor.restore(saved);
    await second.supervisor.start();
    expect(second.report("always-0")).toMatchObject({ phase: "CrashLoopBackOff" });
    expect(second.report("never-0")).toMatchObject({ phase: "Failed", reason: "Lost" });
    await advance(clock, 3000);
    expect(second.report("always-0")).toMatchObject({
      phase: "Running",
      restarts: 1,
      reason: "Lost",
    });
    expect(first.container.replicas.has("never-0")).toBe(false);
  });

  it("replaces an adopted replica that runs an outdated generation", async () => {
    const clock = new ManualClock();
    const first = harness({ clock });
    first.supervisor.setDesired([desired("web-0")]);
    await first.supervisor.start();
    const saved = first.supervisor.snapshot();
    await first.supervisor.stop({ stopReplicas: false });
    // The coordinator moved on while this agent was down.
    saved.desired = [desired("web-0", { generation: 2, image: "web:2" })];

    const second = harness({ clock, drivers: [first.container] });
    second.supervisor.restore(saved);
    await second.supervisor.start();
    expect(first.container.replicas.get("web-0")?.spec.image).toBe("web:2");
    expect(second.report("web-0")).toMatchObject({ phase: "Running", reason: "" });
  });

  it("stop without stopReplicas leaves replicas running and makes no more driver calls", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0", { liveness: probeSpec({ tcp: { port: 8080 } }) })]);
    await h.supervisor.start();
    await h.supervisor.stop({ stopReplicas: false });
    const calls = h.container.calls.length;
    const probes = h.probedPorts.length;
    await advance(h.clock, 30_000, 1000);
    expect(h.container.calls).toHaveLength(calls);
    expect(h.probedPorts).toHaveLength(probes);
    expect(h.container.replicas.get("web-0")?.state).toBe("running");
  });

  it("stop with stopReplicas stops and removes them and reports Stopped", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0")]);
    await h.supervisor.start();
    await h.supervisor.stop({ stopReplicas: true });
    expect(h.container.replicas.size).toBe(0);
    expect(h.report("web-0")).toMatchObject({ phase: "Stopped", ready: false });
    expect(h.emitted.at(-1)?.[0]?.phase).toBe("Stopped");
  });
});

/**
 * A host as the supervisor's port allocator sees it: `held` ports belong to someone
 * else (another agent's replica, another program); every call is recorded.
 */
function scriptedHostPorts(firstFree = 40_000) {
  const held = new Set<number>();
  const reserved = new Map<number, string>();
  const log: string[] = [];
  let next = firstFree;
  const allocator: HostPortAllocator = {
    allocate: async (preferred, owner) => {
      let port = preferred > 0 && !held.has(preferred) && !reserved.has(preferred) ? preferred : 0;
      while (port === 0 || held.has(port) || reserved.has(port)) port = next++;
      reserved.set(port, owner);
      log.push(`allocate ${port} ${owner}`);
      return port;
    },
    reuse: async (port, owner) => {
      const ok = !held.has(port) && (reserved.get(port) ?? owner) === owner;
      if (ok) reserved.set(port, owner);
      else if (reserved.get(port) === owner) reserved.delete(port);
      log.push(`reuse ${port} ${owner} ${ok}`);
      return ok;
    },
    claim: async (port, owner) => {
      log.push(`claim ${port} ${owner}`);
      reserved.set(port, owner);
      return true;
    },
    release: async (port, owner) => {
      log.push(`release ${port} ${owner}`);
      if (reserved.get(port) === owner) reserved.delete(port);
    },
  };
  return { allocator, held, reserved, log };
}

describe("ReplicaSupervisor: hardening, replica identity on the wire", () => {
  it("REQ-032 a readiness probe answered on the replica's port by another program fails, the replica is never ready there, and it restarts on a new port it is told in $PORT", async () => {
    const host = scriptedHostPorts();
    const h = harness({ hostPorts: host.allocator });
    h.supervisor.setDesired([
      desired("web-0", {
        driver: "process",
        readiness: probeSpec({ http: { path: "/", port: 8080 } }),
      }),
    ]);
    // The declared port is free when the replica starts; another program binds it
    // before the replica does, and answers every probe with 200.
    await h.supervisor.start();
    expect(h.report("web-0")).toMatchObject({ phase: "Running", hostPorts: { http: 8080 } });
    h.process.setPortOwner(8080, { kind: "other", holder: "pid 4242 (python3)" });
    await advance(h.clock, 500);
    expect(h.process.callsTo("stop", "web-0")).toHaveLength(1);
    expect(h.report("web-0")).toMatchObject({
      phase: "CrashLoopBackOff",
      reason: "PortConflict",
      hostPorts: {},
      message:
        "back-off 1s restarting failed replica (host port 8080 is held by pid 4242 (python3))",
    });
    expect(host.log).toContain("release 8080 web-0");
    await advance(h.clock, 2000);
    expect(h.report("web-0")).toMatchObject({
      phase: "Running",
      ready: true,
      restarts: 1,
      hostPorts: { http: 40_000 },
    });
    expect(h.process.replicas.get("web-0")?.spec.env.PORT).toBe("40000");
    // Never ready while its port was the other program's, never Running without a port.
    const reports = h.emitted.flat();
    expect(reports.filter((r) => r.ready && r.hostPorts.http === 8080)).toEqual([]);
    expect(reports.filter((r) => r.phase === "Running" && r.hostPorts.http === undefined)).toEqual(
      [],
    );
    expect(host.log).toEqual(["allocate 8080 web-0", "release 8080 web-0", "allocate 40000 web-0"]);
  });

  it("REQ-032 a refused probe asks nobody who holds the port (nothing listened); an answered one always does", async () => {
    const h = harness();
    h.probeResults.set(40_000, { ok: false, message: "connection refused", refused: true });
    h.supervisor.setDesired([
      desired("web-0", { readiness: probeSpec({ http: { path: "/", port: 8080 } }) }),
    ]);
    await h.supervisor.start();
    await advance(h.clock, 3000);
    expect(h.container.callsTo("portOwner")).toHaveLength(0);
    h.probeResults.set(40_000, { ok: false, message: "HTTP 404" });
    await advance(h.clock, 1000);
    expect(h.container.callsTo("portOwner").length).toBeGreaterThan(0);
  });

  it("REQ-032 a probe on a port that is not the replica's fails while another program holds it, and the replica is not moved", async () => {
    const h = harness();
    h.supervisor.setDesired([desired("web-0", { readiness: probeSpec({ tcp: { port: 9999 } }) })]);
    h.container.setPortOwner(9999, { kind: "other", holder: "pid 7 (sshd)" });
    await h.supervisor.start();
    await advance(h.clock, 5000);
    expect(h.report("web-0")).toMatchObject({ phase: "Running", ready: false, restarts: 0 });
    expect(h.container.callsTo("stop", "web-0")).toHaveLength(0);
    h.container.setPortOwner(9999, undefined);
    await advance(h.clock, 2000);
    expect(h.report("web-0")?.ready).toBe(true);
  });

  it("REQ-030 a replica that exits because its port was taken after it started (EADDRINUSE) restarts on a new port, not on the taken one forever", async () => {
    const host = scriptedHostPorts();
    const h = harness({ hostPorts: host.allocator });
    h.supervisor.setDesired([desired("web-0", { driver: "process" })]);
    await h.supervisor.start();
    expect(h.report("web-0")?.hostPorts).toEqual({ http: 8080 });
    // Another agent's replica got 8080 first; this one's listen fails and it exits.
    host.held.add(8080);
    h.process.exit("web-0", 1);
    await advance(h.clock, 3000);
    expect(h.report("web-0")).toMatchObject({
      phase: "Running",
      restarts: 1,
      hostPorts: { http: 40_000 },
    });
    expect(h.process.replicas.get("web-0")?.spec.env.PORT).toBe("40000");
    expect(host.log).toEqual([
      "allocate 8080 web-0",
      "reuse 8080 web-0 false",
      "allocate 40000 web-0",
      "release 8080 web-0",
    ]);
    // A plain crash keeps the port: it is still free and still the replica's.
    h.process.exit("web-0", 1);
    await advance(h.clock, 5000);
    expect(h.report("web-0")).toMatchObject({ restarts: 2, hostPorts: { http: 40_000 } });
  });

  it("REQ-030 a replica's ports are released when it is removed, and a restored agent claims its replicas' ports before allocating any", async () => {
    const host = scriptedHostPorts();
    const first = harness({ hostPorts: host.allocator });
    first.supervisor.setDesired([desired("web-0"), desired("web-1")]);
    await first.supervisor.start();
    const snapshot = first.supervisor.snapshot();
    await first.supervisor.stop({ stopReplicas: false });

    const restoredHost = scriptedHostPorts(41_000);
    const second = harness({
      hostPorts: restoredHost.allocator,
      drivers: [first.container],
      clock: first.clock,
    });
    second.supervisor.restore(snapshot);
    await second.supervisor.start();
    expect(restoredHost.log.slice(0, 2).sort()).toEqual(["claim 40000 web-0", "claim 40001 web-1"]);
    expect(restoredHost.log.filter((line) => line.startsWith("allocate"))).toEqual([]);

    second.supervisor.setDesired([desired("web-1")]);
    await advance(second.clock, 1000);
    expect(second.report("web-0")).toBeUndefined();
    expect(restoredHost.log).toContain("release 40000 web-0");
    await second.supervisor.stop({ stopReplicas: true });
    expect(restoredHost.log).toContain("release 40001 web-1");
    expect(restoredHost.reserved.size).toBe(0);
  });
});

describe("ReplicaSupervisor: secrets and configs (REQ-063)", () => {
  it("REQ-063 a replica does not start until its files are written: a failure is Pending with the source named, retried with back-off; the mounts and env reach the driver only", async () => {
    let failures = 1;
    const calls: string[] = [];
    const h = harness({
      replicaFiles: async (spec, driver) => {
        calls.push(`${spec.replicaId}@${driver.name}`);
        if (failures > 0) {
          failures -= 1;
          throw Object.assign(
            new Error("cannot read secret db from the coordinator: unavailable"),
            {
              reason: "SecretUnavailable",
            },
          );
        }
        return {
          mounts: [{ source: "/data/secrets-tmpfs/web-0/db", target: "/run/secrets/db" }],
          env: { DB_PASSWORD: "from-the-secret" },
        };
      },
    });
    const want = desired("web-0");
    want.spec.files = [{ kind: "secret", name: "db", mountPath: "/run/secrets/db" }];
    h.supervisor.setDesired([want, desired("plain-0")]);
    await h.supervisor.start();
    expect(h.report("web-0")).toMatchObject({ phase: "Pending", reason: "SecretUnavailable" });
    expect(h.report("web-0")?.message).toMatch(
      /^cannot read secret db from the coordinator: unavailable \(back-off/,
    );
    expect(h.container.replicas.has("web-0")).toBe(false);
    // A replica without secrets or configs never calls the hook.
    expect(h.report("plain-0")?.phase).toBe("Running");
    await advance(h.clock, 2_000);
    expect(h.report("web-0")?.phase).toBe("Running");
    expect(calls).toEqual(["web-0@container", "web-0@container"]);
    const started = h.container.replicas.get("web-0")?.spec;
    expect(started?.mounts).toEqual([
      { source: "/data/secrets-tmpfs/web-0/db", target: "/run/secrets/db" },
    ]);
    expect(started?.env.DB_PASSWORD).toBe("from-the-secret");
    // The desired set (what the state file keeps) holds no value.
    expect(JSON.stringify(h.supervisor.snapshot())).not.toContain("from-the-secret");
  });
});

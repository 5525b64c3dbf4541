import { describe, expect, it } from "vitest";
import { createAgentMetrics } from "../../observe/metrics.js";
import { DriverError, type LogLine, type RuntimeDriver } from "./driver.js";
import { InstrumentedDriver } from "./instrumentedDriver.js";

function fakeDriver(overrides: Partial<RuntimeDriver> = {}): RuntimeDriver {
  return {
    name: "process",
    health: async () => ({ ok: true }),
    start: async () => undefined,
    stop: async () => undefined,
    remove: async () => undefined,
    status: async () => ({ state: "running", startedAtMs: 1 }),
    list: async () => ["r1"],
    logs: (): AsyncIterable<LogLine> =>
      (async function* () {
        yield { stream: "stdout", line: "hello" } satisfies LogLine;
      })(),
    exec: async () => ({ exitCode: 0, stdout: "", stderr: "" }),
    ...overrides,
  };
}

async function operations(metrics: ReturnType<typeof createAgentMetrics>) {
  const found: Record<string, number> = {};
  for (const value of (await metrics.driverOperations.get()).values) {
    const { operation, result } = value.labels;
    found[`${operation}/${result}`] = value.value;
  }
  return found;
}

async function timed(metrics: ReturnType<typeof createAgentMetrics>) {
  const found: Record<string, number> = {};
  for (const value of (await metrics.driverOperationDuration.get()).values) {
    if (value.metricName?.endsWith("_count")) found[String(value.labels.operation)] = value.value;
  }
  return found;
}

describe("InstrumentedDriver", () => {
  it("REQ-032 passes portOwner through, counted, only when the inner driver has it", async () => {
    const metrics = createAgentMetrics({ defaultMetrics: false });
    const without = new InstrumentedDriver(fakeDriver(), metrics);
    expect(without.portOwner).toBeUndefined();
    const asked: Array<[string, number]> = [];
    const owning = new InstrumentedDriver(
      fakeDriver({
        portOwner: async (replicaId, port) => {
          asked.push([replicaId, port]);
          return { kind: "other", holder: "pid 1 (init)" };
        },
      }),
      metrics,
    );
    expect(await owning.portOwner?.("r1", 8080)).toEqual({ kind: "other", holder: "pid 1 (init)" });
    expect(asked).toEqual([["r1", 8080]]);
    expect(await operations(metrics)).toMatchObject({ "portOwner/ok": 1 });
  });

  it("REQ-070 passes calls through and counts them by operation and result", async () => {
    const metrics = createAgentMetrics({ defaultMetrics: false });
    const driver = new InstrumentedDriver(fakeDriver(), metrics);
    expect(driver.name).toBe("process");
    expect(await driver.health()).toEqual({ ok: true });
    await driver.start({
      replicaId: "r1",
      namespace: "default",
      workload: "w",
      driver: "process",
      env: {},
      ports: [],
      resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0 },
    });
    expect(await driver.status("r1")).toEqual({ state: "running", startedAtMs: 1 });
    expect(await driver.list()).toEqual(["r1"]);
    expect((await driver.exec("r1", ["true"], 1000)).exitCode).toBe(0);
    await driver.stop("r1", 1000);
    await driver.remove("r1");
    const lines: string[] = [];
    for await (const line of driver.logs("r1", { follow: false })) lines.push(line.line);
    expect(lines).toEqual(["hello"]);

    expect(await operations(metrics)).toEqual({
      "health/ok": 1,
      "start/ok": 1,
      "status/ok": 1,
      "list/ok": 1,
      "exec/ok": 1,
      "stop/ok": 1,
      "remove/ok": 1,
      "logs/ok": 1,
    });
    // Log streams are counted, not timed.
    expect(await timed(metrics)).toEqual({
      health: 1,
      start: 1,
      status: 1,
      list: 1,
      exec: 1,
      stop: 1,
      remove: 1,
    });
  });

  it("REQ-070 failures are labelled by DriverError kind (a bounded set), and rethrown unchanged", async () => {
    const metrics = createAgentMetrics({ defaultMetrics: false });
    const imageMissing = new DriverError("imageNotFound", "no such image");
    const driver = new InstrumentedDriver(
      fakeDriver({
        health: async () => ({ ok: false, reason: "socket gone" }),
        start: async () => {
          throw imageMissing;
        },
        stop: async () => {
          throw new Error("boom");
        },
        logs: () =>
          (async function* (): AsyncGenerator<LogLine> {
            yield* [];
            throw new DriverError("unavailable", "engine down");
          })(),
      }),
      metrics,
    );
    expect(await driver.health()).toEqual({ ok: false, reason: "socket gone" });
    await expect(
      driver.start({
        replicaId: "r1",
        namespace: "default",
        workload: "w",
        driver: "process",
        env: {},
        ports: [],
        resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0 },
      }),
    ).rejects.toBe(imageMissing);
    await expect(driver.stop("r1", 10)).rejects.toThrow("boom");
    await expect(
      (async () => {
        for await (const _ of driver.logs("r1", { follow: true })) {
          // nothing arrives
        }
      })(),
    ).rejects.toThrow("engine down");
    expect(await operations(metrics)).toEqual({
      "health/unhealthy": 1,
      "start/imageNotFound": 1,
      "stop/error": 1,
      "logs/unavailable": 1,
    });
  });
});

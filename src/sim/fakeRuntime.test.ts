import { describe, expect, it } from "vitest";
import type { ReplicaRunSpec } from "../agent/drivers/driver.js";
import { FakeRuntime } from "./fakeRuntime.js";

function spec(replicaId: string): ReplicaRunSpec {
  return {
    replicaId,
    namespace: "bench",
    workload: "w1",
    driver: "container",
    image: "bench/pause:1",
    env: {},
    ports: [],
    resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0 },
  };
}

describe("FakeRuntime (hollow node runtime)", () => {
  it("reports a started replica running, once, and tells the listener", async () => {
    const started: string[] = [];
    const runtime = new FakeRuntime({
      startDelayMs: 0,
      nowMs: () => 1_000,
      onStarted: (event) => started.push(`${event.namespace}/${event.workload}/${event.replicaId}`),
    });
    expect(await runtime.status("r1")).toEqual({ state: "missing" });
    await Promise.all([runtime.start(spec("r1")), runtime.start(spec("r1"))]);
    await runtime.start(spec("r1"));
    expect(await runtime.status("r1")).toEqual({ state: "running", startedAtMs: 1_000 });
    expect(started).toEqual(["bench/w1/r1"]);
    expect(runtime.runningCount).toBe(1);
    expect(await runtime.list()).toEqual(["r1"]);
  });

  it("stops like an engine would (exit 143) and removes only stopped replicas", async () => {
    const runtime = new FakeRuntime({ startDelayMs: 0, nowMs: () => 5 });
    await runtime.start(spec("r1"));
    await expect(runtime.remove("r1")).rejects.toThrow(/running/);
    await runtime.stop("r1", 1000);
    expect(await runtime.status("r1")).toMatchObject({ state: "exited", exitCode: 143 });
    await runtime.remove("r1");
    expect(await runtime.list()).toEqual([]);
    await runtime.stop("gone", 0);
    await runtime.remove("gone");
  });

  it("is healthy, answers exec on running replicas and serves a log line", async () => {
    const runtime = new FakeRuntime({ startDelayMs: 0 });
    expect(await runtime.health()).toEqual({ ok: true });
    await expect(runtime.exec("r1", ["true"], 1000)).rejects.toThrow(/not running/);
    await runtime.start(spec("r1"));
    expect((await runtime.exec("r1", ["echo", "hi"], 1000)).exitCode).toBe(0);
    const lines = [];
    for await (const line of runtime.logs("r1", { follow: false })) lines.push(line);
    expect(lines).toHaveLength(1);
  });
});

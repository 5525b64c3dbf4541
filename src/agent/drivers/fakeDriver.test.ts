import { describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { DriverError, type LogLine, type ReplicaRunSpec } from "./driver.js";
import { FakeDriver } from "./fakeDriver.js";

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

async function collect(lines: AsyncIterable<LogLine>): Promise<LogLine[]> {
  const collected: LogLine[] = [];
  for await (const line of lines) collected.push(line);
  return collected;
}

/** Lets promise chains started by timers run to completion. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe("FakeDriver as a hollow node's runtime", () => {
  it("reports a started replica running, once, and tells the listener", async () => {
    const started: string[] = [];
    const driver = new FakeDriver("container", new ManualClock(1_000), {
      onStarted: (event) => started.push(`${event.namespace}/${event.workload}/${event.replicaId}`),
    });
    expect(await driver.status("r1")).toEqual({ state: "missing" });
    await Promise.all([driver.start(spec("r1")), driver.start(spec("r1"))]);
    await driver.start(spec("r1"));
    expect(await driver.status("r1")).toEqual({ state: "running", startedAtMs: 1_000 });
    expect(started).toEqual(["bench/w1/r1"]);
    expect(driver.runningCount).toBe(1);
    expect(await driver.list()).toEqual(["r1"]);
  });

  it("reads as running only once the start delay has passed on its clock; a second start waits for the first", async () => {
    const clock = new ManualClock(0);
    const started: number[] = [];
    const driver = new FakeDriver("container", clock, {
      startDelayMs: 200,
      onStarted: (event) => started.push(event.atMs),
    });
    let firstDone = false;
    let secondDone = false;
    void driver.start(spec("r1")).then(() => {
      firstDone = true;
    });
    await settle();
    void driver.start(spec("r1")).then(() => {
      secondDone = true;
    });
    await settle();
    expect(await driver.status("r1")).toEqual({ state: "missing" });
    clock.advance(199);
    await settle();
    expect([firstDone, secondDone]).toEqual([false, false]);
    clock.advance(1);
    await settle();
    expect([firstDone, secondDone]).toEqual([true, true]);
    expect(await driver.status("r1")).toEqual({ state: "running", startedAtMs: 200 });
    expect(started).toEqual([200]);
  });

  it("stops like an engine would (exit 143) and removes only stopped replicas", async () => {
    const driver = new FakeDriver("container", new ManualClock(5));
    await driver.start(spec("r1"));
    await expect(driver.remove("r1")).rejects.toThrow(/running/);
    await driver.stop("r1", 1000);
    expect(await driver.status("r1")).toMatchObject({ state: "exited", exitCode: 143 });
    await driver.remove("r1");
    expect(await driver.list()).toEqual([]);
    await driver.stop("gone", 0);
    await driver.remove("gone");
  });

  it("is healthy, answers exec on running replicas and serves a log line", async () => {
    const driver = new FakeDriver("container", new ManualClock());
    expect(await driver.health()).toEqual({ ok: true });
    await expect(driver.exec("r1", ["true"], 1000)).rejects.toThrow(/not running/);
    await driver.start(spec("r1"));
    expect(await driver.exec("r1", ["echo", "hi"], 1000)).toEqual({
      exitCode: 0,
      stdout: "echo hi\n",
      stderr: "",
    });
    expect(await collect(driver.logs("r1", { follow: false }))).toEqual([
      { stream: "stdout", line: "fake replica r1: nothing runs here" },
    ]);
  });

  it("keeps no call log when told not to (a fleet makes millions of calls)", async () => {
    const driver = new FakeDriver("container", new ManualClock(), { recordCalls: false });
    await driver.start(spec("r1"));
    await driver.status("r1");
    expect(driver.calls).toEqual([]);
  });
});

describe("FakeDriver as a scripted runtime for supervisor tests", () => {
  it("records calls with their time, and scripts exits, failing starts, crashes and outages", async () => {
    const clock = new ManualClock(100);
    const driver = new FakeDriver("process", clock);
    await driver.start(spec("r1"));
    clock.advance(50);
    driver.exit("r1", 3, { oomKilled: true });
    expect(await driver.status("r1")).toEqual({
      state: "exited",
      startedAtMs: 100,
      exitCode: 3,
      finishedAtMs: 150,
      oomKilled: true,
    });
    expect(() => driver.exit("r1", 1)).toThrow(/not running/);
    expect(driver.callsTo("start", "r1")).toEqual([
      { method: "start", replicaId: "r1", atMs: 100 },
    ]);

    driver.crashOnStart("r2", 7);
    await driver.start(spec("r2"));
    expect(await driver.status("r2")).toMatchObject({ state: "exited", exitCode: 7 });

    driver.failStarts(new DriverError("imageNotFound", "no image"));
    await expect(driver.start(spec("r3"))).rejects.toThrow("no image");
    driver.failStarts(undefined);

    driver.setAvailable(false, "socket gone");
    expect(await driver.health()).toEqual({ ok: false, reason: "socket gone" });
    await expect(driver.list()).rejects.toMatchObject({ kind: "unavailable" });
    driver.setAvailable(true);
    expect(await driver.list()).toEqual(["r1", "r2"]);
  });

  it("holds a hung method until released, and answers port owners as scripted", async () => {
    const driver = new FakeDriver("container", new ManualClock());
    driver.seed(spec("r1"));
    const release = driver.hang("status", "r1");
    let answered = false;
    void driver.status("r1").then(() => {
      answered = true;
    });
    await settle();
    expect(answered).toBe(false);
    expect(driver.callsTo("status", "r1")).toHaveLength(1);
    release();
    await settle();
    expect(answered).toBe(true);

    expect(await driver.portOwner("r1", 8080)).toEqual({ kind: "replica" });
    driver.setPortOwner(8080, { kind: "other", holder: "pid 7 (sshd)" });
    expect(await driver.portOwner("r1", 8080)).toEqual({ kind: "other", holder: "pid 7 (sshd)" });
    driver.setPortOwner(8080, undefined);
    await driver.stop("r1", 0);
    expect(await driver.portOwner("r1", 8080)).toEqual({ kind: "nobody" });

    driver.appendLog("r1", { stream: "stderr", line: "boom" });
    expect(await collect(driver.logs("r1", { follow: false }))).toEqual([
      { stream: "stderr", line: "boom" },
    ]);
  });
});

import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, rmdir, stat, writeFile } from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { waitFor } from "../../../test/helpers/processes.js";
import { ManualClock } from "../../lib/clock.js";
import { detectCgroupLayout, isInCgroup, prepareParent } from "./cgroups.js";
import { DriverError, type LogLine, type ReplicaRunSpec } from "./driver.js";
import { ReplicaOwner } from "./ownership.js";
import {
  createProcessDriver,
  type ProcessDriver,
  type ProcessDriverOptions,
} from "./processDriver.js";

// A parent of its own, so the tests never touch a real agent's replicas.
const cgroupParent = `cloudless-test-${process.pid}`;
const layout = detectCgroupLayout("/sys/fs/cgroup");
const cgroupProblem =
  process.platform !== "linux"
    ? "cgroups need Linux"
    : process.getuid?.() !== 0
      ? "writing cgroups needs root"
      : await prepareParent(layout, cgroupParent);
if (cgroupProblem) console.warn(`process driver cgroup tests skipped: ${cgroupProblem}`);

const drivers: ProcessDriver[] = [];
const dataDirs: string[] = [];

async function newDriver(
  overrides: Partial<ProcessDriverOptions> = {},
): Promise<{ driver: ProcessDriver; dataDir: string }> {
  const dataDir = overrides.dataDir ?? (await mkdtemp(path.join(tmpdir(), "cloudless-procdrv-")));
  if (!dataDirs.includes(dataDir)) dataDirs.push(dataDir);
  const driver = createProcessDriver({ cgroupParent, ...overrides, dataDir });
  drivers.push(driver);
  return { driver, dataDir };
}

afterEach(async () => {
  // Every process, cgroup and directory a test made goes, whatever its outcome.
  for (const driver of drivers.splice(0)) {
    for (const id of await driver.list().catch(() => [])) {
      await driver.remove(id).catch(() => undefined);
    }
    driver.close();
  }
  for (const dir of dataDirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

/** Cluster ids of the ownership tests: their replicas' cgroups go under cgroupParent/<id>. */
const clusterA = "a1a1a1a1a1a1a1a1";
const clusterB = "b2b2b2b2b2b2b2b2";

afterAll(async () => {
  const roots =
    layout.version === 2
      ? [layout.root]
      : layout.version === 1
        ? [layout.cpuRoot, layout.memoryRoot]
        : [];
  for (const root of roots) {
    for (const cluster of [clusterA, clusterB]) {
      await rmdir(path.join(root, cgroupParent, cluster)).catch(() => undefined);
    }
    await rmdir(path.join(root, cgroupParent)).catch(() => undefined);
  }
});

let counter = 0;
function replicaId(): string {
  counter += 1;
  return `pt-${Date.now().toString(36)}-${counter}`;
}

function spec(overrides: Partial<ReplicaRunSpec> & { replicaId: string }): ReplicaRunSpec {
  return {
    namespace: "default",
    workload: "job",
    driver: "process",
    env: {},
    ports: [],
    resources: { cpuMillicores: 250, memoryMiB: 64, storageGiB: 0 },
    ...overrides,
  };
}

async function collect(iterable: AsyncIterable<LogLine>): Promise<LogLine[]> {
  const lines: LogLine[] = [];
  for await (const line of iterable) lines.push(line);
  return lines;
}

async function logText(driver: ProcessDriver, id: string): Promise<string> {
  return (await collect(driver.logs(id, { follow: false }))).map((entry) => entry.line).join("\n");
}

async function pidOf(dataDir: string, id: string): Promise<number> {
  return Number((await readFile(path.join(dataDir, "replicas", id, "pid"), "utf8")).trim());
}

function read(file: string): string {
  return readFileSync(file, "utf8").trim();
}

describe("process driver without usable cgroups", () => {
  it("REQ-011 refuses to run without limits by default, and runs when enforceLimits is false", async () => {
    const fakeRoot = await mkdtemp(path.join(tmpdir(), "cloudless-nocgroup-"));
    dataDirs.push(fakeRoot);
    const strict = (await newDriver({ cgroupRoot: fakeRoot })).driver;
    const health = await strict.health();
    expect(health.ok).toBe(false);
    if (!health.ok) expect(health.reason).toContain("cgroup limits cannot be enforced");
    const id = replicaId();
    const error = await strict
      .start(spec({ replicaId: id, command: ["/bin/sleep", "30"] }))
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(DriverError);
    expect((error as DriverError).kind).toBe("failed");
    expect(await strict.status(id)).toEqual({ state: "missing" });

    const lenient = (await newDriver({ cgroupRoot: fakeRoot, enforceLimits: false })).driver;
    expect(await lenient.health()).toEqual({ ok: true });
    expect(lenient.cgroupPaths(id)).toBeUndefined();
    await lenient.start(spec({ replicaId: id, command: ["/bin/sleep", "30"] }));
    expect((await lenient.status(id)).state).toBe("running");
    await lenient.remove(id);
    expect(await lenient.status(id)).toEqual({ state: "missing" });
  });

  it("stamps a replica's start and end with the injected clock", async () => {
    const fakeRoot = await mkdtemp(path.join(tmpdir(), "cloudless-nocgroup-"));
    dataDirs.push(fakeRoot);
    const clock = new ManualClock(1_000_000);
    const { driver } = await newDriver({ cgroupRoot: fakeRoot, enforceLimits: false, clock });
    const id = replicaId();
    await driver.start(spec({ replicaId: id, command: ["/bin/sleep", "30"] }));
    expect(await driver.status(id)).toMatchObject({ state: "running", startedAtMs: 1_000_000 });
    clock.advance(5_000);
    await driver.stop(id, 1000);
    expect(await driver.status(id)).toMatchObject({
      state: "exited",
      startedAtMs: 1_000_000,
      finishedAtMs: 1_005_000,
    });
  });

  it("rejects specs it cannot run as invalid", async () => {
    const { driver } = await newDriver({ enforceLimits: false });
    const noCommand = await driver.start(spec({ replicaId: "a" })).catch((caught) => caught);
    expect((noCommand as DriverError).kind).toBe("invalid");
    const missing = await driver
      .start(spec({ replicaId: "b", command: ["definitely-not-a-program-xyz"] }))
      .catch((caught) => caught);
    expect((missing as DriverError).kind).toBe("invalid");
    expect((missing as DriverError).message).toContain("definitely-not-a-program-xyz");
    const badId = await driver
      .start(spec({ replicaId: "../escape", command: ["/bin/true"] }))
      .catch((caught) => caught);
    expect((badId as DriverError).kind).toBe("invalid");
  });
});

describe.skipIf(cgroupProblem !== undefined)(
  `process driver with cgroup v${layout.version}`,
  () => {
    it("REQ-011 puts the process in its cgroups, with the limits, before the workload runs", async () => {
      const { driver, dataDir } = await newDriver();
      expect(await driver.health()).toEqual({ ok: true });
      const id = replicaId();
      await driver.start(
        spec({
          replicaId: id,
          command: ["/bin/sh", "-c", 'echo "$PWD"; sleep 30'],
          resources: { cpuMillicores: 250, memoryMiB: 64, storageGiB: 0 },
        }),
      );
      const paths = driver.cgroupPaths(id);
      expect(paths).toBeDefined();
      if (!paths) return;
      const pid = await pidOf(dataDir, id);
      expect(pid).toBeGreaterThan(0);
      if (paths.version === 1) {
        expect(read(path.join(paths.cpuDir, "cpu.cfs_period_us"))).toBe("100000");
        expect(read(path.join(paths.cpuDir, "cpu.cfs_quota_us"))).toBe(String(250 * 100));
        expect(read(path.join(paths.memoryDir, "memory.limit_in_bytes"))).toBe(
          String(64 * 2 ** 20),
        );
      } else {
        expect(read(path.join(paths.cpuDir, "cpu.max"))).toBe("25000 100000");
        expect(read(path.join(paths.memoryDir, "memory.max"))).toBe(String(64 * 2 ** 20));
      }
      for (const procs of paths.procsFiles) {
        expect(read(procs).split("\n")).toContain(String(pid));
      }
      expect(readFileSync(`/proc/${pid}/cgroup`, "utf8")).toContain(`/${cgroupParent}/${id}`);
      expect((await driver.status(id)).state).toBe("running");
      expect(await driver.list()).toEqual([id]);

      // The program's very first view of itself is already inside the cgroup: cat is
      // exec'd by the wrapper, so /proc/self/cgroup is read by the workload itself.
      const first = replicaId();
      await driver.start(spec({ replicaId: first, command: ["/bin/cat", "/proc/self/cgroup"] }));
      await waitFor("cat to exit", async () => (await driver.status(first)).state === "exited");
      const view = await logText(driver, first);
      const expectedLine = paths.version === 1 ? /:memory:.*\/pt-/ : /^0::.*\/pt-/m;
      expect(view).toMatch(expectedLine);
      expect(view).toContain(`/${cgroupParent}/${first}`);
    });

    it("REQ-052 gives each replica a private working directory that remove() deletes", async () => {
      const { driver } = await newDriver();
      const ids = [replicaId(), replicaId()];
      for (const id of ids) {
        await driver.start(
          spec({ replicaId: id, command: ["/bin/sh", "-c", 'echo "$PWD"; sleep 30'] }),
        );
      }
      const [first, second] = ids.map((id) => driver.workDir(id));
      expect(first).not.toBe(second);
      for (const id of ids) {
        const workDir = driver.workDir(id);
        // The work dir is the workload's user's alone; the replica dir above it may only
        // be passed through (its files are the agent's, 0600).
        expect((await stat(workDir)).mode & 0o777).toBe(0o700);
        expect((await stat(workDir)).uid).toBeGreaterThanOrEqual(61184);
        expect((await stat(driver.replicaDir(id))).mode & 0o777).toBe(0o711);
        await waitFor("the pwd line", async () => (await logText(driver, id)) === workDir);
      }
      const firstId = ids[0] ?? "";
      const paths = driver.cgroupPaths(firstId);
      await driver.remove(firstId);
      expect(existsSync(driver.replicaDir(firstId))).toBe(false);
      expect(existsSync(paths?.cpuDir ?? "")).toBe(false);
      expect(existsSync(paths?.memoryDir ?? "")).toBe(false);
      expect(await driver.status(firstId)).toEqual({ state: "missing" });
      expect(await driver.list()).toEqual([ids[1]]);
      // The other replica is untouched.
      expect((await driver.status(ids[1] ?? "")).state).toBe("running");
      await driver.remove(firstId); // idempotent
    });

    it("REQ-011 has a process that exceeds its memory limit OOM-killed", async () => {
      const { driver } = await newDriver();
      const id = replicaId();
      await driver.start(
        spec({
          replicaId: id,
          command: [
            process.execPath,
            "-e",
            "const held = []; for (let i = 0; i < 50; i++) held.push(Buffer.alloc(4 << 20, 1)); console.log('survived');",
          ],
          resources: { cpuMillicores: 1000, memoryMiB: 64, storageGiB: 0 },
        }),
      );
      const status = await waitFor("the process to end", async () => {
        const current = await driver.status(id);
        return current.state === "exited" ? current : undefined;
      });
      expect(status.oomKilled).toBe(true);
      expect(status.exitCode).toBe(137);
      expect(await logText(driver, id)).not.toContain("survived");
    });

    it("captures stdout and stderr, tails them and follows until aborted or exited", async () => {
      const { driver } = await newDriver();
      const id = replicaId();
      await driver.start(
        spec({
          replicaId: id,
          command: ["/bin/sh", "-c"],
          args: [
            'for i in 1 2 3 4 5; do echo "out $i"; done; echo "err 1" >&2; i=6; while true; do echo "out $i"; i=$((i+1)); sleep 0.1; done',
          ],
        }),
      );
      await waitFor("the first lines", async () => (await logText(driver, id)).includes("err 1"));
      const all = await collect(driver.logs(id, { follow: false }));
      expect(all.slice(0, 5).map((entry) => entry.line)).toEqual([
        "out 1",
        "out 2",
        "out 3",
        "out 4",
        "out 5",
      ]);
      expect(all).toContainEqual({ stream: "stderr", line: "err 1" });

      const tail = await collect(driver.logs(id, { follow: false, tailLines: 2 }));
      expect(tail.filter((entry) => entry.stream === "stdout")).toHaveLength(2);
      expect(tail.filter((entry) => entry.stream === "stderr")).toEqual([
        { stream: "stderr", line: "err 1" },
      ]);

      const controller = new AbortController();
      const followed: string[] = [];
      for await (const entry of driver.logs(id, {
        follow: true,
        tailLines: 0,
        signal: controller.signal,
      })) {
        followed.push(entry.line);
        if (followed.length === 3) controller.abort();
      }
      expect(followed).toHaveLength(3);
      const numbers = followed.map((line) => Number(line.replace("out ", "")));
      expect(numbers[1]).toBe((numbers[0] ?? 0) + 1);

      // A follower ends by itself once the process is gone.
      const follower = collect(driver.logs(id, { follow: true, tailLines: 1 }));
      await driver.stop(id, 1_000);
      const rest = await follower;
      expect(rest.length).toBeGreaterThanOrEqual(1);
    });

    it("runs exec in the replica's working directory, cgroup and environment, with a deadline", async () => {
      const { driver } = await newDriver();
      const id = replicaId();
      await driver.start(
        spec({ replicaId: id, command: ["/bin/sleep", "30"], env: { GREETING: "hello" } }),
      );
      const pwd = await driver.exec(id, ["pwd"], 5_000);
      expect(pwd).toEqual({ exitCode: 0, stdout: `${driver.workDir(id)}\n`, stderr: "" });
      const inside = await driver.exec(id, ["/bin/cat", "/proc/self/cgroup"], 5_000);
      expect(inside.stdout).toContain(`/${cgroupParent}/${id}`);
      const env = await driver.exec(
        id,
        ["/bin/sh", "-c", 'echo "$GREETING"; echo bad >&2; exit 4'],
        5_000,
      );
      expect(env).toEqual({ exitCode: 4, stdout: "hello\n", stderr: "bad\n" });

      const slow = await driver.exec(id, ["/bin/sleep", "30"], 300).catch((caught) => caught);
      expect(slow).toBeInstanceOf(DriverError);
      expect((slow as DriverError).message).toContain("did not finish within 300 ms");

      await driver.stop(id, 0);
      const stopped = await driver.exec(id, ["true"], 1_000).catch((caught) => caught);
      expect((stopped as DriverError).kind).toBe("failed");
    });

    it("stops with SIGTERM, then SIGKILL after the grace period, and records exit codes", async () => {
      const { driver } = await newDriver();
      // Each shell says when its trap is set: a SIGTERM that comes before would end it
      // at once (it did, on a loaded machine), which is not what this test is about. It
      // writes into its work dir, the only place a sandboxed replica may write.
      const trapped = (id: string) => path.join(driver.workDir(id), "trapped");
      const polite = replicaId();
      await driver.start(
        spec({
          replicaId: polite,
          command: [
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; : > trapped; while true; do sleep 0.1; done",
          ],
        }),
      );
      const stubborn = replicaId();
      await driver.start(
        spec({
          replicaId: stubborn,
          command: ["/bin/sh", "-c", "trap '' TERM; : > trapped; while true; do sleep 0.1; done"],
        }),
      );
      await waitFor(
        "both shells to set their traps",
        async () => existsSync(trapped(polite)) && existsSync(trapped(stubborn)),
      );
      await driver.start(spec({ replicaId: polite, command: ["/bin/false"] })); // no-op: running
      await driver.stop(polite, 5_000);
      expect(await driver.status(polite)).toMatchObject({ state: "exited", exitCode: 0 });

      const startedMs = Date.now();
      await driver.stop(stubborn, 500);
      expect(Date.now() - startedMs).toBeGreaterThanOrEqual(450);
      const killed = await driver.status(stubborn);
      expect(killed).toMatchObject({ state: "exited", exitCode: 137, oomKilled: false });
      expect(killed.finishedAtMs).toBeGreaterThanOrEqual(killed.startedAtMs ?? 0);
      await driver.stop(stubborn, 500); // idempotent

      // An exited replica starts again in the same working directory.
      await driver.start(spec({ replicaId: polite, command: ["/bin/sh", "-c", "exit 3"] }));
      await waitFor(
        "the second run to end",
        async () => (await driver.status(polite)).state === "exited",
      );
      expect(await driver.status(polite)).toMatchObject({ state: "exited", exitCode: 3 });
    });

    it("NFR-U1 hardening: a hurry (second Ctrl-C) during the grace period kills a replica that ignores SIGTERM at once, its own child or adopted (ADR 0028)", async () => {
      const { driver, dataDir } = await newDriver();
      // Markers in the replica's work dir, the only place a sandboxed replica may write.
      const trapped = (id: string) => path.join(driver.workDir(id), "trapped");
      const termed = (id: string) => path.join(driver.workDir(id), "termed");
      // Notes each SIGTERM in a file and carries on: only SIGKILL ends it.
      const stubborn = () => [
        "/bin/sh",
        "-c",
        "trap ': > termed' TERM; : > trapped; while true; do sleep 0.1; done",
      ];
      const own = replicaId();
      const adopted = replicaId();
      await driver.start(spec({ replicaId: own, command: stubborn() }));
      await driver.start(spec({ replicaId: adopted, command: stubborn() }));
      await waitFor(
        "both shells to set their traps",
        async () => existsSync(trapped(own)) && existsSync(trapped(adopted)),
      );
      // The second replica through a new driver on the same data dir: not its child.
      const { driver: restarted } = await newDriver({ dataDir });
      for (const [stopper, id, name] of [
        [driver, own, "own"],
        [restarted, adopted, "adopted"],
      ] as const) {
        const hurry = new AbortController();
        // A grace far longer than the test: only the hurry can end the stop in time.
        const stopped = stopper.stop(id, 600_000, hurry.signal);
        await waitFor(`replica ${name} to get SIGTERM`, async () => existsSync(termed(id)));
        expect((await stopper.status(id)).state).toBe("running");
        hurry.abort();
        await stopped;
        expect((await stopper.status(id)).state).toBe("exited");
      }
      expect((await driver.status(own)).exitCode).toBe(137);
      // Already aborted: no grace at all.
      const late = replicaId();
      await driver.start(spec({ replicaId: late, command: stubborn() }));
      await waitFor("the shell to set its trap", async () => existsSync(trapped(late)));
      await driver.stop(late, 600_000, AbortSignal.abort());
      expect(await driver.status(late)).toMatchObject({ state: "exited", exitCode: 137 });
    });

    it("adopts running replicas after an agent restart (a new driver on the same data dir)", async () => {
      const { driver: before, dataDir } = await newDriver();
      const id = replicaId();
      await before.start(spec({ replicaId: id, command: ["/bin/sleep", "30"] }));
      const pid = await pidOf(dataDir, id);
      const exited = replicaId();
      await before.start(spec({ replicaId: exited, command: ["/bin/sh", "-c", "exit 5"] }));
      await waitFor(
        "the short one to end",
        async () => (await before.status(exited)).state === "exited",
      );
      before.close();

      const { driver: after } = await newDriver({ dataDir });
      expect(await after.list()).toEqual([id, exited].sort());
      const adopted = await after.status(id);
      expect(adopted.state).toBe("running");
      expect(adopted.startedAtMs).toBeGreaterThan(0);
      // The exit code written by the earlier agent survives the restart.
      expect(await after.status(exited)).toMatchObject({ state: "exited", exitCode: 5 });
      expect((await after.exec(id, ["pwd"], 5_000)).stdout.trim()).toBe(after.workDir(id));

      await after.stop(id, 1_000);
      expect((await after.status(id)).state).toBe("exited");
      await waitFor("the process to be gone", () => {
        try {
          process.kill(pid, 0);
          return false;
        } catch {
          return true;
        }
      });
      await after.remove(id);
      expect(await after.list()).toEqual([exited]);
    });

    it("does not adopt a pid that now belongs to another process", async () => {
      const { driver: before, dataDir } = await newDriver();
      const id = replicaId();
      await before.start(spec({ replicaId: id, command: ["/bin/sleep", "30"] }));
      await before.stop(id, 0);
      // Pretend the pid was reused by this test process, which is not in the replica's cgroup.
      const record = path.join(dataDir, "replicas", id, "process.json");
      const json = JSON.parse(await readFile(record, "utf8")) as Record<string, unknown>;
      await writeFile(record, JSON.stringify({ ...json, pid: process.pid }));
      await rm(path.join(dataDir, "replicas", id, "exit.json"), { force: true });
      const { driver: after } = await newDriver({ dataDir });
      const status = await after.status(id);
      expect(status.state).toBe("exited");
      expect(status.exitCode).toBeUndefined();
    });

    it("bounds log files by rotating them", async () => {
      const { driver } = await newDriver({ maxLogBytes: 4096, logCheckIntervalMs: 50 });
      const id = replicaId();
      await driver.start(
        spec({
          replicaId: id,
          command: [
            "/bin/sh",
            "-c",
            "while true; do echo 0123456789012345678901234567890123456789; sleep 0.01; done",
          ],
        }),
      );
      const logFile = path.join(driver.replicaDir(id), "stdout.log");
      await waitFor("a rotation", async () => existsSync(`${logFile}.1`), 20_000);
      // Checked every 50 ms while ~4 KiB/s arrive, so the live file stays near the bound.
      for (let check = 0; check < 5; check += 1) {
        expect((await stat(logFile)).size).toBeLessThan(4096 * 4);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    });

    it("REQ-030 hardening: replicas are marked with their owner, their cgroup sits under <parent>/<cluster id>, and an agent of another cluster or enrollment on the same data dir neither lists, adopts, stops nor removes them", async () => {
      const ownerA = new ReplicaOwner(clusterA, "shared-host", "uid-a");
      const { driver: agentA, dataDir } = await newDriver({ owner: ownerA });
      const id = replicaId();
      await agentA.start(spec({ replicaId: id, command: ["/bin/sleep", "600"] }));
      const pid = await pidOf(dataDir, id);
      const marks = JSON.parse(
        await readFile(path.join(agentA.replicaDir(id), "owner.json"), "utf8"),
      );
      expect(marks).toEqual({ cluster: clusterA, node: "shared-host", nodeUid: "uid-a" });
      const cgroup = agentA.cgroupPaths(id);
      expect(cgroup?.memoryDir).toContain(`/${cgroupParent}/${clusterA}/${id}`);
      if (cgroup) expect(isInCgroup(pid, cgroup, `/${cgroupParent}/${clusterA}/${id}`)).toBe(true);

      const strangers = [
        new ReplicaOwner(clusterB, "shared-host", "uid-b"),
        new ReplicaOwner(clusterA, "shared-host", "uid-a2"),
      ];
      for (const owner of strangers) {
        owner.setStateLookup(() => true);
        const { driver: stranger } = await newDriver({ dataDir, owner });
        expect(await stranger.list()).toEqual([]);
        expect(await stranger.status(id)).toEqual({ state: "missing" });
        await stranger.stop(id, 0);
        await stranger.remove(id);
        const refused = await stranger
          .start(spec({ replicaId: id, command: ["/bin/sleep", "600"] }))
          .catch((caught: unknown) => caught);
        expect((refused as DriverError).message).toContain("another cluster or node");
        const execRefused = await stranger.exec(id, ["true"], 5_000).catch((caught) => caught);
        expect(execRefused).toBeInstanceOf(DriverError);
        expect(existsSync(agentA.replicaDir(id))).toBe(true);
        process.kill(pid, 0); // still alive
      }
      // The owner's next agent (a restart) adopts the same process.
      agentA.close();
      const { driver: restarted } = await newDriver({
        dataDir,
        owner: new ReplicaOwner(clusterA, "shared-host", "uid-a"),
      });
      expect(await restarted.list()).toEqual([id]);
      expect((await restarted.status(id)).state).toBe("running");
      expect(await pidOf(dataDir, id)).toBe(pid);
    });

    it("NFR-A1 hardening: a replica an older agent made (no owner.json) is adopted only when the agent's own state lists it, in the cgroup it was started in", async () => {
      const { driver: legacy, dataDir } = await newDriver();
      const id = replicaId();
      await legacy.start(spec({ replicaId: id, command: ["/bin/sleep", "600"] }));
      const pid = await pidOf(dataDir, id);
      legacy.close();
      const owner = new ReplicaOwner(clusterA, "shared-host", "uid-a");
      const { driver: upgraded } = await newDriver({ dataDir, owner });
      expect(await upgraded.list()).toEqual([]);
      expect(await upgraded.status(id)).toEqual({ state: "missing" });
      await upgraded.remove(id);
      process.kill(pid, 0); // untouched
      owner.setStateLookup((replica) => replica === id);
      expect(await upgraded.list()).toEqual([id]);
      // Adopted where it runs (cgroupParent/<id>), not where a new one would (…/<cluster>/<id>).
      expect((await upgraded.status(id)).state).toBe("running");
      expect(await pidOf(dataDir, id)).toBe(pid);
      await upgraded.stop(id, 0);
      expect((await upgraded.status(id)).state).toBe("exited");
    });
  },
);

/** A port free a moment ago. */
async function freeTcpPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "0.0.0.0", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A replica command whose listener is a child of the replica's shell, as a forking server's worker. */
function listenerCommand(port: number): string[] {
  const listen = `require("net").createServer((s) => s.end()).listen(${port}, "0.0.0.0")`;
  return ["/bin/sh", "-c", `"${process.execPath}" -e '${listen}'; sleep 600`];
}

async function waitListening(port: number): Promise<void> {
  await waitFor(
    `a listener on port ${port}`,
    () =>
      new Promise<boolean>((resolve) => {
        const socket = net.connect({ host: "127.0.0.1", port });
        socket.once("connect", () => {
          socket.destroy();
          resolve(true);
        });
        socket.once("error", () => resolve(false));
      }),
    15_000,
    50,
  );
}

describe("process driver: who holds a replica's port (REQ-032, ADR 0032)", () => {
  const foreign: net.Server[] = [];
  afterEach(async () => {
    await Promise.all(
      foreign
        .splice(0)
        .map((server) => new Promise<void>((resolve) => server.close(() => resolve()))),
    );
  });

  async function checkOwnership(driver: ProcessDriver): Promise<void> {
    const mine = replicaId();
    const other = replicaId();
    const [minePort, otherPort, testPort, unusedPort] = await Promise.all([
      freeTcpPort(),
      freeTcpPort(),
      freeTcpPort(),
      freeTcpPort(),
    ]);
    await driver.start(spec({ replicaId: mine, command: listenerCommand(minePort) }));
    await driver.start(spec({ replicaId: other, command: listenerCommand(otherPort) }));
    const server = net.createServer();
    foreign.push(server);
    await new Promise<void>((resolve) => server.listen(testPort, "127.0.0.1", resolve));
    await waitListening(minePort);
    await waitListening(otherPort);

    expect(await driver.portOwner?.(mine, minePort)).toEqual({ kind: "replica" });
    // Asked again, the remembered owner is confirmed (one readlink) and still right.
    expect(await driver.portOwner?.(mine, minePort)).toEqual({ kind: "replica" });
    // Named by its program (argv[0]), not by its main thread's name ("MainThread" on Node 24).
    const testProgram = path.basename(process.argv0);
    expect(await driver.portOwner?.(mine, testPort)).toEqual({
      kind: "other",
      holder: `pid ${process.pid} (${testProgram})`,
    });
    // Another replica's listener is not this replica's: the case of two replicas on one port.
    const otherOwner = await driver.portOwner?.(mine, otherPort);
    expect(otherOwner).toMatchObject({
      kind: "other",
      holder: expect.stringMatching(/^pid \d+ \(node\)$/),
    });
    expect(await driver.portOwner?.(other, otherPort)).toEqual({ kind: "replica" });
    expect(await driver.portOwner?.(mine, unusedPort)).toEqual({ kind: "nobody" });
    // A replica that stopped owns nothing: its port, taken over, is someone else's.
    await driver.stop(mine, 1000);
    const takeover = net.createServer();
    foreign.push(takeover);
    // Without a cgroup, stop() returns when the main process is gone; its child may
    // take a moment longer to close the port.
    await waitFor(
      `port ${minePort} to be free for the taker`,
      () =>
        new Promise<boolean>((resolve) => {
          takeover.once("error", () => resolve(false));
          takeover.listen(minePort, "0.0.0.0", () => resolve(true));
        }),
      10_000,
      50,
    );
    expect(await driver.portOwner?.(mine, minePort)).toMatchObject({ kind: "other" });
  }

  it.skipIf(cgroupProblem !== undefined)(
    "REQ-032 with cgroups: the replica's own listener (held by a child process) is the replica's; another replica's or program's is named; a free port is nobody's",
    async () => {
      await checkOwnership((await newDriver()).driver);
    },
  );

  it("REQ-032 without cgroups, the replica's session decides what is the replica's", async () => {
    const fakeRoot = await mkdtemp(path.join(tmpdir(), "cloudless-nocgroup-"));
    dataDirs.push(fakeRoot);
    await checkOwnership((await newDriver({ cgroupRoot: fakeRoot, enforceLimits: false })).driver);
  });
});

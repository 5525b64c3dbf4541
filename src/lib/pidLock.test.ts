import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { acquirePidLock, processStartTicks, readLockHolder } from "./pidLock.js";

describe("pid locks name their holder (ADR 0029)", () => {
  let dir: string;
  let lockPath: string;
  const children: ChildProcess[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-pidlock-"));
    lockPath = path.join(dir, "agent.lock");
  });
  afterEach(async () => {
    for (const child of children.splice(0)) child.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  });

  /**
   * A real process that stays alive. With a program name it runs a script file of that
   * name, as `node …/bin/cloudless agent` runs the cloudless program.
   */
  async function liveProcess(programName?: string): Promise<number> {
    let argv = ["-e", "setTimeout(() => {}, 60_000)"];
    if (programName !== undefined) {
      const script = path.join(dir, programName);
      await writeFile(script, "setTimeout(() => {}, 60_000);\n");
      argv = [script, "agent"];
    }
    const child = spawn(process.execPath, argv, { stdio: "ignore" });
    children.push(child);
    await new Promise((resolve) => child.once("spawn", resolve));
    return child.pid as number;
  }

  async function deadPid(): Promise<number> {
    const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
    await new Promise((resolve) => child.once("exit", resolve));
    return child.pid as number;
  }

  it("NFR-U1 hardening: the lock file names its holder (pid, start time, command), is 0600, and goes on release", async () => {
    const lock = await acquirePidLock(lockPath, "agent data dir X");
    const written = JSON.parse(await readFile(lockPath, "utf8"));
    expect(written.pid).toBe(process.pid);
    expect(written.startTicks).toBe(processStartTicks(process.pid));
    expect(written.startTicks).toMatch(/^\d+$/);
    expect(typeof written.command).toBe("string");
    expect(Date.parse(written.acquiredAt)).not.toBeNaN();
    expect((await stat(lockPath)).mode & 0o777).toBe(0o600);
    await lock.release();
    await expect(stat(lockPath)).rejects.toThrow(/ENOENT/);
  });

  it("NFR-U1 hardening: a live holder is refused with one line naming it", async () => {
    const pid = await liveProcess();
    const holder = {
      pid,
      startTicks: processStartTicks(pid),
      command: "cloudless agent",
      acquiredAt: "2026-01-02T03:04:05.000Z",
    };
    await writeFile(lockPath, JSON.stringify(holder));
    await expect(acquirePidLock(lockPath, "agent data dir X")).rejects.toThrow(
      `agent data dir X is in use by process ${pid} (cloudless agent, since 2026-01-02T03:04:05.000Z); stop it first or use another --data-dir`,
    );
    expect(JSON.parse(await readFile(lockPath, "utf8"))).toEqual(holder);
    expect((await readLockHolder(lockPath))?.live).toBe(true);
  });

  it("NFR-U1 hardening: a dead holder, a recycled pid (other start time), an old bare-pid lock of a non-cloudless process and garbage are stale and taken over", async () => {
    const live = await liveProcess();
    const liveCloudless = await liveProcess("cloudless");
    const stale = [
      JSON.stringify({ pid: await deadPid(), startTicks: "1", command: "cloudless agent" }),
      JSON.stringify({ pid: live, startTicks: "1", command: "cloudless agent" }),
      String(live),
      "not a lock",
      "",
    ];
    for (const content of stale) {
      await writeFile(lockPath, content);
      expect((await readLockHolder(lockPath))?.live, content).toBe(false);
      const lock = await acquirePidLock(lockPath, "agent data dir X");
      expect(JSON.parse(await readFile(lockPath, "utf8")).pid).toBe(process.pid);
      await lock.release();
    }
    // An old bare-pid lock of a live cloudless process still holds.
    await writeFile(lockPath, String(liveCloudless));
    await expect(acquirePidLock(lockPath, "agent data dir X")).rejects.toThrow(
      `agent data dir X is in use by process ${liveCloudless}; stop it first`,
    );
  });

  it("NFR-U1 hardening: release leaves a lock another holder took over alone", async () => {
    const lock = await acquirePidLock(lockPath, "agent data dir X");
    const pid = await liveProcess();
    const other = JSON.stringify({ pid, startTicks: processStartTicks(pid) });
    await writeFile(lockPath, other);
    await lock.release();
    expect(await readFile(lockPath, "utf8")).toBe(other);
  });
});

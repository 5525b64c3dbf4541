/**
 * The process driver launches a sandboxed replica only after the egress module's
 * `beforeLaunch` resolved (REQ-061, ADR 0057): real sandboxed processes, a hook the test
 * holds open. A rejection fails the start and nothing runs.
 */
import { mkdtemp, readFile, rm, rmdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { waitFor } from "../../../test/helpers/processes.js";
import { detectCgroupLayout, prepareParent } from "../drivers/cgroups.js";
import type { ReplicaRunSpec } from "../drivers/driver.js";
import { createProcessDriver, type ProcessDriver } from "../drivers/processDriver.js";
import { findSandboxBinaries } from "../sandbox/launch.js";

const cgroupParent = `cloudless-egress-test-${process.pid}`;
const layout = detectCgroupLayout("/sys/fs/cgroup");
const binaries = findSandboxBinaries();
const problem =
  "problem" in binaries
    ? binaries.problem
    : ((await prepareParent(layout, cgroupParent)) ?? undefined);
if (problem) console.warn(`egress launch tests skipped: ${problem}`);

const drivers: ProcessDriver[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const driver of drivers.splice(0)) {
    for (const id of await driver.list().catch(() => [])) {
      await driver.remove(id).catch(() => undefined);
    }
    driver.close();
  }
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

afterAll(async () => {
  const roots =
    layout.version === 2
      ? [layout.root]
      : layout.version === 1
        ? [layout.cpuRoot, layout.memoryRoot]
        : [];
  for (const root of roots) await rmdir(path.join(root, cgroupParent)).catch(() => undefined);
});

async function driverWith(
  beforeLaunch: (workloadKey: string, uid: number) => Promise<void>,
): Promise<{ driver: ProcessDriver; dataDir: string }> {
  const dataDir = await mkdtemp(path.join(tmpdir(), "cloudless-egress-launch-"));
  dirs.push(dataDir);
  const driver = createProcessDriver({ dataDir, cgroupParent, beforeLaunch });
  drivers.push(driver);
  return { driver, dataDir };
}

function spec(replicaId: string): ReplicaRunSpec {
  return {
    replicaId,
    namespace: "default",
    workload: "web",
    driver: "process",
    command: ["/bin/sh", "-c", "id -u; sleep 30"],
    env: {},
    ports: [],
    resources: { cpuMillicores: 100, memoryMiB: 32, storageGiB: 0 },
  };
}

describe.skipIf(problem !== undefined)(
  "REQ-061 a replica is launched after its egress rules",
  () => {
    it("REQ-061 the launch waits for beforeLaunch, which gets the workload and the uid the replica then runs as", async () => {
      let release: () => void = () => {};
      const calls: [string, number][] = [];
      const { driver, dataDir } = await driverWith((key, uid) => {
        calls.push([key, uid]);
        return new Promise<void>((resolve) => {
          release = resolve;
        });
      });
      const id = `eg-${Date.now().toString(36)}`;
      let started = false;
      const starting = driver.start(spec(id)).then(() => {
        started = true;
      });
      await waitFor("beforeLaunch to be called", () => calls.length === 1);
      const [key, uid] = calls[0] as [string, number];
      expect(key).toBe("default/web");
      // The uid table is already on disk when the hook runs: the egress module reads it.
      const table = JSON.parse(await readFile(path.join(dataDir, "replica-uids.json"), "utf8"));
      expect(table.workloads["default/web"].uid).toBe(uid);
      // Held: nothing is launched while the rules are not in place.
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(started).toBe(false);
      expect((await driver.status(id)).state).not.toBe("running");
      release();
      await starting;
      await waitFor(
        "the replica to run",
        async () => (await driver.status(id)).state === "running",
      );
      const out = await waitFor("the replica's uid on stdout", async () => {
        for await (const line of driver.logs(id, { follow: false })) return line.line;
        return undefined;
      });
      expect(Number(out)).toBe(uid);
    });

    it("REQ-061 a rejected beforeLaunch fails the start with its reason and launches nothing", async () => {
      const { driver } = await driverWith(async () => {
        throw new Error("egress policy applies to workload default/web but cannot be enforced");
      });
      const id = `eg-${Date.now().toString(36)}-x`;
      await expect(driver.start(spec(id))).rejects.toThrow("cannot be enforced");
      expect((await driver.status(id)).state).not.toBe("running");
    });
  },
);

/**
 * Secrets and configs in real sandboxed process replicas (REQ-063, ADR 0055): the files
 * are written by ReplicaFiles on the secrets tmpfs, bound read-only by bwrap at the mount
 * path, and read by the replica itself; an update is swapped in under a running process.
 */
import { mkdtemp, readFile, rm, rmdir, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { waitFor } from "../../../test/helpers/processes.js";
import { silentLogger } from "../../observe/logger.js";
import { detectCgroupLayout, prepareParent } from "../drivers/cgroups.js";
import type { LogLine, ReplicaFileSource, ReplicaRunSpec } from "../drivers/driver.js";
import { createProcessDriver, type ProcessDriver } from "../drivers/processDriver.js";
import { findSandboxBinaries } from "../sandbox/launch.js";
import { ReplicaFiles, type SourceContent } from "./replicaFiles.js";
import { isMountPoint } from "./secretsTmpfs.js";

const cgroupParent = `cloudless-files-test-${process.pid}`;
const layout = detectCgroupLayout("/sys/fs/cgroup");
const binaries = findSandboxBinaries();
const problem =
  "problem" in binaries
    ? binaries.problem
    : ((await prepareParent(layout, cgroupParent)) ?? undefined);
if (problem) console.warn(`replica files sandbox tests skipped: ${problem}`);

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
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

async function setup() {
  const dataDir = await mkdtemp(path.join(tmpdir(), "cloudless-files-"));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  const driver = createProcessDriver({ dataDir, cgroupParent });
  const sources = new Map<string, SourceContent>();
  const files = new ReplicaFiles({
    dataDir,
    logger: silentLogger,
    fetch: async (request) => {
      const found = sources.get(`${request.kind}/${request.name}`);
      if (!found) throw new Error(`no ${request.kind} ${request.name}`);
      return found;
    },
  });
  cleanups.push(async () => {
    for (const id of await driver.list()) {
      await driver.stop(id, 1_000).catch(() => undefined);
      await driver.remove(id).catch(() => undefined);
      await files.remove(id);
    }
    driver.close();
    await files.close();
  });
  /** Starts a replica the way the supervisor does: its files first, then the driver. */
  const start = async (spec: ReplicaRunSpec) => {
    const prepared = await files.prepare(spec, await driver.replicaUser?.(spec));
    await driver.start({ ...spec, mounts: prepared.mounts, env: { ...spec.env, ...prepared.env } });
  };
  return { dataDir, driver, files, sources, start };
}

function content(version: number, data: Record<string, string>): SourceContent {
  return {
    version: BigInt(version),
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v)])),
  };
}

let counter = 0;
function replicaSpec(workload: string, script: string, files: ReplicaFileSource[] = []) {
  counter += 1;
  return {
    replicaId: `files-${Date.now().toString(36)}-${counter}`,
    namespace: "default",
    workload,
    driver: "process",
    command: ["/bin/sh", "-c", script],
    env: {},
    ports: [],
    resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0 },
    files,
  } satisfies ReplicaRunSpec;
}

async function logText(driver: ProcessDriver, id: string): Promise<string> {
  const lines: LogLine[] = [];
  for await (const line of driver.logs(id, { follow: false })) lines.push(line);
  return lines.map((entry) => entry.line).join("\n");
}

const dbSecret: ReplicaFileSource = {
  kind: "secret",
  name: "db",
  mountPath: "/run/secrets/db",
  env: [{ name: "DB_USER", key: "user" }],
};
const appConfig: ReplicaFileSource = {
  kind: "config",
  name: "app",
  mountPath: "/run/configs/app",
  onChange: "reload",
};

describe.skipIf(problem !== undefined)(
  "REQ-063 secrets and configs in sandboxed process replicas",
  () => {
    it("REQ-063 NFR-S1 a replica reads its secret from a 0400 file of its own user at the mount path, env from a key, and sees updates in place with the same pid; another workload cannot read it", async () => {
      const { dataDir, driver, files, sources, start } = await setup();
      sources.set("secret/db", content(1, { password: "pw-one-7f3a", user: "app-user" }));
      sources.set("config/app", content(1, { "level.conf": "level=info" }));
      const spec = replicaSpec(
        "alpha",
        [
          'echo "env=$DB_USER"',
          "while true; do",
          '  echo "secret=$(cat /run/secrets/db/password) mode=$(stat -L -c %a:%u /run/secrets/db/password) config=$(cat /run/configs/app/level.conf)"',
          "  sleep 0.1",
          "done",
        ].join("\n"),
        [dbSecret, appConfig],
      );
      await start(spec);
      const id = spec.replicaId;
      const uid = (await stat(driver.workDir(id))).uid;
      await waitFor("the replica to print its secret", async () =>
        (await logText(driver, id)).includes(
          `secret=pw-one-7f3a mode=400:${uid} config=level=info`,
        ),
      );
      expect(await logText(driver, id)).toContain("env=app-user");
      // On a tmpfs, not on the node's disk.
      expect(await isMountPoint(files.secretsRoot)).toBe(true);
      const pid = await readFile(path.join(driver.replicaDir(id), "pid"), "utf8");

      // Updates: swapped in while the process runs.
      sources.set("secret/db", content(2, { password: "pw-two-91bc", user: "app-user" }));
      sources.set("config/app", content(2, { "level.conf": "level=debug" }));
      const swapStartedMs = Date.now();
      await files.sourcesChanged([
        { kind: "secret", namespace: "default", name: "db", version: 2n },
        { kind: "config", namespace: "default", name: "app", version: 2n },
      ]);
      await waitFor("the replica to print the new values", async () =>
        (await logText(driver, id)).includes(
          `secret=pw-two-91bc mode=400:${uid} config=level=debug`,
        ),
      );
      expect(Date.now() - swapStartedMs).toBeLessThan(2_000);
      expect(await readFile(path.join(driver.replicaDir(id), "pid"), "utf8")).toBe(pid);
      expect((await driver.status(id)).state).toBe("running");
      // exec in the replica sees its mounts too.
      const exec = await driver.exec(id, ["cat", "/run/secrets/db/password"], 10_000);
      expect(exec.stdout).toBe("pw-two-91bc");
      // Never a mix: every line shows both old or both new values.
      for (const line of (await logText(driver, id)).split("\n")) {
        if (line.includes("pw-one-7f3a")) expect(line).toContain("mode=400");
        expect(line.includes("pw-two-91bc") && line.includes("pw-one-7f3a")).toBe(false);
      }

      // Another workload: neither the mount path nor the host path is readable.
      const other = replicaSpec(
        "beta",
        [
          `cat /run/secrets/db/password && echo mount=ok || echo mount=failed`,
          `cat ${files.sourceDir(id, dbSecret)}/password && echo host=ok || echo host=failed`,
        ].join("\n"),
      );
      await start(other);
      await waitFor(
        "the other replica to exit",
        async () => (await driver.status(other.replicaId)).state === "exited",
      );
      const otherLog = await logText(driver, other.replicaId);
      expect(otherLog).toContain("mount=failed");
      expect(otherLog).toContain("host=failed");
      expect(otherLog).not.toContain("pw-two-91bc");
      expect(dataDir).toBeTruthy();
    });
  },
);

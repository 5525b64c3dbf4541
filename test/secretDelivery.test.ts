/**
 * Secrets delivered into real sandboxed process replicas (REQ-063, NFR-S1, ADR 0055): the
 * agent fetches them with ReadReplicaSecret before the replica starts, writes them on its
 * secrets tmpfs as 0400 files of the replica's user, binds them read-only at the mount
 * path and sets environment variables from keys; `secret update` reaches the running
 * replica in place (same pid), also after the agent was killed with -9 and restarted; the
 * files go with the replica and the tmpfs with the last of them. The replicas print
 * digests of what they read, never values, and every value joins the run's log audit.
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { lstat, readdir, readFile, readlink, stat } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isMountPoint } from "../src/agent/replicaFiles/secretsTmpfs.js";
import {
  fastAgentFlags,
  removeProcessReplicas,
  replicaDir,
  replicaPid,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

function digest(value: string): string {
  return createHash("sha256").update(value).digest("hex");
}

/** A value no log would hold by chance (the audit needs at least 12 characters). */
function secretValue(label: string): string {
  return `${label}-${randomBytes(12).toString("hex")}`;
}

/**
 * Prints, every 0.2 s, the digests of the secret file and of the variable, and the file's
 * mode and owner as the replica sees them.
 */
const readerScript = [
  'echo "env=$(printf %s "$DB_USER" | sha256sum | cut -c1-64)"',
  "while true; do",
  '  echo "file=$(sha256sum < /run/secrets/db/password | cut -c1-64) mode=$(stat -L -c %a:%u /run/secrets/db/password)"',
  "  sleep 0.2",
  "done",
].join("\n");

describe("REQ-063 secrets delivered into process replicas", { timeout: 180_000 }, () => {
  let resources: TestResources;
  let agentDirs: string[];

  beforeEach(() => {
    resources = new TestResources();
    agentDirs = [];
  });
  afterEach(async () => {
    await resources.cleanup();
    await removeProcessReplicas(agentDirs);
  });

  it("REQ-063 NFR-S1 a replica reads its secret from a 0400 file of its own user and from env; secret update swaps it in place with the same pid, also after kill -9 of the agent; another workload cannot read it; files and tmpfs go with the replicas", async () => {
    const cluster = await TestCluster.start(resources);
    const first = secretValue("delivered");
    const second = secretValue("updated");
    const third = secretValue("after-restart");
    const user = secretValue("db-user");
    const created = await cluster.cli([
      "secret",
      "create",
      "db",
      "--from-literal",
      `password=${first}`,
      "--from-literal",
      `user=${user}`,
    ]);
    expect(created.code, created.stderr).toBe(0);

    const agentDir = await cluster.agentDir("node1");
    agentDirs.push(agentDir);
    // A grace for the kill -9 below: the node is held, so the restarted agent adopts the
    // same replica instead of the coordinator replacing it (docs/operations/agents.md).
    const agentFlags = [...fastAgentFlags, "--driver", "process", "--restart-grace", "30s"];
    let agent = await cluster.startAgent("node1", {
      token: await cluster.createToken(),
      extra: agentFlags,
    });
    await cluster.waitForStatus("node1", "Ready", 30_000);

    const specDir = await resources.tempDir("cloudless-specs-");
    const apply = async (name: string, spec: Record<string, unknown>) => {
      const file = await writeSpec(specDir, name, workloadDoc(name, "default", spec));
      const applied = await cluster.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
    };
    await apply("reader", {
      command: ["/bin/sh", "-c", readerScript],
      replicas: 1,
      secrets: [{ name: "db", env: [{ name: "DB_USER", key: "user" }] }],
    });
    const reader = (
      await waitForWorkload(cluster, "default", "reader", "a replica running", (w) =>
        w.replicas.some((r) => r.phase === "Running"),
      )
    ).replicas[0];
    const id = reader?.id ?? "";
    const stdout = path.join(replicaDir(agentDir, id), "stdout.log");
    const uid = (await stat(path.join(replicaDir(agentDir, id), "work"))).uid;
    const sees = (value: string) => async () =>
      (await readFile(stdout, "utf8").catch(() => "")).includes(
        `file=${digest(value)} mode=400:${uid}`,
      );
    await waitFor("the replica to read the secret from its file", sees(first), 30_000);
    expect(await readFile(stdout, "utf8")).toContain(`env=${digest(user)}`);

    // On the host: a tmpfs, a 0400 file of the replica's user in a 0500 dir.
    const secretsRoot = path.join(agentDir, "secrets-tmpfs");
    expect(await isMountPoint(secretsRoot)).toBe(true);
    const secretDir = path.join(secretsRoot, id, "db");
    const version = await readlink(path.join(secretDir, "..data"));
    const file = await lstat(path.join(secretDir, version, "password"));
    expect(file.mode & 0o777).toBe(0o400);
    expect(file.uid).toBe(uid);
    expect((await lstat(secretDir)).mode & 0o777).toBe(0o500);
    // `workload get` and the agent's state file name the secret, never a value.
    const shown = await cluster.cli(["workload", "get", "reader", "-o", "json"]);
    const state = await readFile(path.join(agentDir, "agent-state.json"), "utf8");
    for (const text of [shown.stdout, state]) {
      for (const value of [first, user]) expect(text).not.toContain(value);
    }

    // Another workload on the node: not at the mount path, not at the host path.
    await apply("prying", {
      command: [
        "/bin/sh",
        "-c",
        `cat /run/secrets/db/password && echo mount=ok || echo mount=failed; cat ${secretDir}/password && echo host=ok || echo host=failed; sleep 600`,
      ],
      replicas: 1,
    });
    const prying = (
      await waitForWorkload(cluster, "default", "prying", "a replica running", (w) =>
        w.replicas.some((r) => r.phase === "Running"),
      )
    ).replicas[0];
    const pryingLog = path.join(replicaDir(agentDir, prying?.id ?? ""), "stdout.log");
    await waitFor("the other replica to try", async () =>
      (await readFile(pryingLog, "utf8").catch(() => "")).includes("host="),
    );
    const tried = await readFile(pryingLog, "utf8");
    expect(tried).toContain("mount=failed");
    expect(tried).toContain("host=failed");

    // secret update: the running replica sees the new value, same process.
    const pid = await replicaPid(agentDir, id);
    const updated = await cluster.cli([
      "secret",
      "update",
      "db",
      "--from-literal",
      `password=${second}`,
      "--from-literal",
      `user=${user}`,
    ]);
    expect(updated.code, updated.stderr).toBe(0);
    const updateStartedMs = Date.now();
    await waitFor("the running replica to see the updated secret", sees(second), 20_000);
    const swapMs = Date.now() - updateStartedMs;
    expect(await replicaPid(agentDir, id)).toBe(pid);

    // kill -9 of the agent: the replica runs on with its files and the tmpfs stays; the
    // restarted agent adopts it (same id, same process) and swaps its files on the next
    // update.
    agent.kill("SIGKILL");
    await agent.exited();
    expect(await isMountPoint(secretsRoot)).toBe(true);
    expect(await readFile(path.join(secretDir, "password"), "utf8")).toBe(second);
    agent = await cluster.startAgent("node1", { extra: agentFlags });
    await cluster.waitForStatus("node1", "Ready", 30_000);
    const current = async () =>
      (
        await waitForWorkload(
          cluster,
          "default",
          "reader",
          "one replica running",
          (w) => w.replicas.length === 1 && w.replicas.some((r) => r.phase === "Running"),
        )
      ).replicas[0]?.id ?? "";
    const afterRestart = await current();
    expect(afterRestart).toBe(id);
    const stdoutAfter = path.join(replicaDir(agentDir, afterRestart), "stdout.log");
    const seesAfter = (value: string) => async () =>
      (await readFile(stdoutAfter, "utf8").catch(() => "")).includes(
        `file=${digest(value)} mode=400:${uid}`,
      );
    await waitFor("the replica after the restart to read the secret", seesAfter(second), 30_000);
    const pidAfter = await replicaPid(agentDir, afterRestart);
    expect(pidAfter).toBe(pid);
    const again = await cluster.cli([
      "secret",
      "update",
      "db",
      "--from-literal",
      `password=${third}`,
      "--from-literal",
      `user=${user}`,
    ]);
    expect(again.code, again.stderr).toBe(0);
    await waitFor("the replica after the restart to see the next update", seesAfter(third), 30_000);
    expect(await replicaPid(agentDir, afterRestart)).toBe(pidAfter);
    expect(await current()).toBe(afterRestart);
    const log = await readFile(stdout, "utf8");
    // Every line whole: one version or the other, never a half-written file.
    for (const line of log.split("\n").filter((l) => l.startsWith("file="))) {
      expect([digest(first), digest(second), digest(third)]).toContain(line.slice(5, 69));
    }

    // The workload goes: so do its files; the agent stopping with no replica left takes
    // the tmpfs with it.
    for (const name of ["reader", "prying"]) {
      const deleted = await cluster.cli(["workload", "delete", name]);
      expect(deleted.code, deleted.stderr).toBe(0);
    }
    await waitFor(
      "the replica's files to go",
      async () => !existsSync(path.join(secretsRoot, id)),
      30_000,
    );
    await waitFor(
      "the replicas to be removed",
      async () => (await readdir(path.join(agentDir, "replicas")).catch(() => [])).length === 0,
      30_000,
    );
    await agent.stop(10_000);
    expect(await isMountPoint(secretsRoot)).toBe(false);
    const logs = cluster.coordinator.stderr + agent.stderr;
    for (const value of [first, second, third, user]) expect(logs).not.toContain(value);
    console.log(`REQ-063 secret update reached the running replica in ${swapMs} ms`);
  });
});

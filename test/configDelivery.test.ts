/**
 * Configuration objects reach real sandboxed process replicas (issue 15, "configuration with
 * hot reload", ADR 0055/0056): the agent reads the config with ReadReplicaConfig before
 * the replica starts and binds it read-only at its mount path; `config update` swaps the
 * files of the running replica in place, atomically, within 2 s and without a restart
 * (same pid). The replica prints what it reads every 0.1 s, with a timestamp, so the test
 * measures when the update was first seen inside the replica.
 */
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
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

/**
 * Every 0.1 s, resolves `..data` once and reads both keys from that version, as a program
 * that reloads its configuration would; a version whose dir was already removed (swapped
 * out between the readlink and the cat) prints nothing. Two plain `cat`s of the key links
 * could straddle a swap; reading one resolved version cannot, unless the swap mixed them.
 */
const readerScript = [
  "while true; do",
  "  v=$(readlink /run/configs/app/..data) &&",
  "    g=$(cat /run/configs/app/$v/greeting 2>/dev/null) &&",
  "    c=$(cat /run/configs/app/$v/colour 2>/dev/null) &&",
  '    echo "seen $(date +%s%3N) $g/$c"',
  "  sleep 0.1",
  "done",
].join("\n");

/** The first time (ms since the epoch, the replica's clock) `text` was seen, if it was. */
function firstSeenMs(log: string, text: string): number | undefined {
  for (const line of log.split("\n")) {
    const match = /^seen (\d+) (.*)$/.exec(line);
    if (match && match[2] === text) return Number(match[1]);
  }
  return undefined;
}

describe("configuration with hot reload, process replicas", { timeout: 180_000 }, () => {
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

  it("config hot reload: a config update reaches a running replica's files within 2 s with the same pid, both keys together", async () => {
    const cluster = await TestCluster.start(resources);
    const tag = randomBytes(4).toString("hex");
    const created = await cluster.cli([
      "config",
      "create",
      "app",
      "--from-literal",
      `greeting=hello-${tag}`,
      "--from-literal",
      `colour=blue-${tag}`,
    ]);
    expect(created.code, created.stderr).toBe(0);

    const agentDir = await cluster.agentDir("node1");
    agentDirs.push(agentDir);
    await cluster.startAgent("node1", {
      token: await cluster.createToken(),
      extra: [...fastAgentFlags, "--driver", "process"],
    });
    await cluster.waitForStatus("node1", "Ready", 30_000);

    const specDir = await resources.tempDir("cloudless-specs-");
    const file = await writeSpec(
      specDir,
      "reader",
      workloadDoc("reader", "default", {
        command: ["/bin/sh", "-c", readerScript],
        replicas: 1,
        configs: [{ name: "app" }],
      }),
    );
    const applied = await cluster.cli(["workload", "apply", "-f", file]);
    expect(applied.code, applied.stderr).toBe(0);
    const replica = (
      await waitForWorkload(cluster, "default", "reader", "a replica running", (w) =>
        w.replicas.some((r) => r.phase === "Running"),
      )
    ).replicas[0];
    const id = replica?.id ?? "";
    const stdout = path.join(replicaDir(agentDir, id), "stdout.log");
    const log = () => readFile(stdout, "utf8").catch(() => "");
    const before = `hello-${tag}/blue-${tag}`;
    await waitFor(
      "the replica to read the config",
      async () => firstSeenMs(await log(), before) !== undefined,
      30_000,
    );
    const pid = await replicaPid(agentDir, id);

    const after = `bonjour-${tag}/red-${tag}`;
    const updateStartedMs = Date.now();
    const updated = await cluster.cli([
      "config",
      "update",
      "app",
      "--from-literal",
      `greeting=bonjour-${tag}`,
      "--from-literal",
      `colour=red-${tag}`,
      "-o",
      "json",
    ]);
    expect(updated.code, updated.stderr).toBe(0);
    // The coordinator's commit time of the update (same machine, same clock): the CLI's own
    // start-up is not part of the delivery.
    const committedMs = Date.parse((JSON.parse(updated.stdout) as { updatedAt: string }).updatedAt);
    expect(Number.isFinite(committedMs)).toBe(true);
    await waitFor(
      "the running replica to see the updated config",
      async () => firstSeenMs(await log(), after) !== undefined,
      20_000,
    );
    const seenMs = firstSeenMs(await log(), after) ?? Number.NaN;
    const delayMs = seenMs - committedMs;
    console.log(
      `config update seen inside the replica ${delayMs} ms after its commit (${seenMs - updateStartedMs} ms after the CLI started)`,
    );
    expect(delayMs).toBeLessThanOrEqual(2_000);
    expect(await replicaPid(agentDir, id)).toBe(pid);
    // Never one key old and the other new: every line is one version or the other.
    const lines = (await log()).split("\n").filter((line) => line.startsWith("seen "));
    const mixed = lines.filter((line) => !line.endsWith(before) && !line.endsWith(after));
    expect(mixed).toEqual([]);
  });
});

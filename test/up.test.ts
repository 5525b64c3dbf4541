import { stat } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { EventJson, NodeJson } from "./helpers/cluster.js";
import { ManagedProcess, runCli, TestResources, waitFor } from "./helpers/processes.js";
import {
  findAgentProcesses,
  killProcesses,
  lines,
  processesUsing,
  readProc,
  withDeadline,
} from "./helpers/system.js";

const upReadyTimeoutMs = 30_000;
const shutdownDeadlineMs = 10_000;

describe("cloudless up", () => {
  let resources: TestResources;
  let dataDir: string | undefined;

  beforeEach(() => {
    resources = new TestResources();
    dataDir = undefined;
  });
  afterEach(async () => {
    await resources.cleanup();
    // If `up` died without stopping its children, don't leave them running.
    if (dataDir) await killProcesses(await processesUsing(dataDir));
  });

  /** Starts `cloudless up` and waits until it says the cluster is up. */
  async function startUp(dir: string): Promise<{ up: ManagedProcess; url: string }> {
    const up = resources.track(
      // --no-sample: this test is about the cluster itself, not the sample workload.
      new ManagedProcess([
        "up",
        "--data-dir",
        dir,
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--no-sample",
      ]),
    );
    const url = await waitFor(
      "cloudless up to report the cluster is up",
      () => {
        if (!up.running) throw new Error(`cloudless up exited early: ${up.stderr}`);
        return /Cluster "[^"]+" is up at (https:\/\/\S+)/.exec(up.stdout)?.[1];
      },
      upReadyTimeoutMs,
      100,
    );
    return { up, url };
  }

  function client(dir: string, args: string[]) {
    return runCli(args, { env: { CLOUDLESS_CONFIG: path.join(dir, "admin.conf") } });
  }

  async function clientJson<T>(dir: string, args: string[]): Promise<T> {
    const result = await client(dir, [...args, "-o", "json"]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    return JSON.parse(result.stdout) as T;
  }

  async function interruptAndWait(up: ManagedProcess): Promise<number | null> {
    up.kill("SIGINT");
    return withDeadline(up.exited(), shutdownDeadlineMs, "cloudless up to exit after SIGINT");
  }

  it("NFR-U1 REQ-072 cloudless up starts a single-node cluster with a Ready local node", async () => {
    const dir = await resources.tempDir("cloudless-up-");
    dataDir = dir;
    const agentDir = path.join(dir, "agent");
    const { up, url } = await startUp(dir);
    expect(new URL(url).hostname).toBe("127.0.0.1");
    expect(Number(new URL(url).port)).toBeGreaterThan(0);

    // Progress on stderr: each step on its own line, ending in "done (N ms)".
    const progress = lines(up.stderr).filter((line) => line.startsWith("•"));
    for (const line of progress) expect(line).toMatch(/^• .+ … done \(\d+ ms\)$/);
    const steps = progress.map((line) => line.replace(/ … .*$/, ""));
    expect(steps[0]).toBe(`• starting coordinator (data dir ${dir})`);
    const tokenStep = steps.indexOf("• creating a bootstrap token for the local agent");
    const readyStep = steps.indexOf("• waiting for the local node to be Ready");
    expect(tokenStep).toBeGreaterThan(0);
    expect(readyStep).toBeGreaterThan(tokenStep);
    expect(up.stdout).toContain(`export CLOUDLESS_CONFIG=${path.join(dir, "admin.conf")}`);

    // The admin config works and shows exactly the local node, Ready, with measured capacity.
    const nodes = await clientJson<NodeJson[]>(dir, ["node", "list"]);
    expect(nodes).toHaveLength(1);
    const [node] = nodes as [NodeJson];
    expect(node.status).toBe("Ready");
    expect(node.capacity.cpuMillicores).toBeGreaterThan(0);
    expect(node.capacity.memoryMiB).toBeGreaterThan(0);
    expect(node.capacity.storageGiB).toBeGreaterThan(0);
    expect(node.capacity.egressMbps).toBeGreaterThan(0);
    expect(node.enrollments).toBe(1);
    expect(up.stdout).toContain(`node ${node.name}: Ready`);

    // Secrets are private to the owner.
    expect((await stat(path.join(dir, "admin.conf"))).mode & 0o777).toBe(0o600);
    expect((await stat(path.join(dir, "pki", "ca.key"))).mode & 0o777).toBe(0o600);

    // The human table: a header, then the node's row.
    const table = await client(dir, ["node", "list"]);
    expect(table.code).toBe(0);
    const [header, ...rows] = lines(table.stdout);
    expect(header?.split(/\s+/).slice(0, 2)).toEqual(["NAME", "STATUS"]);
    expect(header?.split(/\s+/)).toEqual(
      expect.arrayContaining(["REGION", "ZONE", "CPU", "MEMORY", "STORAGE", "EGRESS", "AGE"]),
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]?.split(/\s+/).slice(0, 2)).toEqual([node.name, "Ready"]);

    // The local agent is a child of `up`.
    const agents = await findAgentProcesses(agentDir);
    expect(agents).toHaveLength(1);
    const agentPid = (agents[0] as { pid: number }).pid;
    expect(agents[0]?.ppid).toBe(up.pid);

    // Ctrl-C stops both: `up` exits 0 and leaves no agent behind.
    expect(await interruptAndWait(up)).toBe(0);
    expect(up.stderr).toContain("• stopping local agent and coordinator");
    expect(up.stderr).not.toMatch(/^error:/m);
    expect(await readProc(agentPid)).toBeUndefined();
    // Nothing `up` started (agent, or anything else using the data dir) outlives it.
    expect(await processesUsing(dir)).toEqual([]);

    // Restart on the same data dir: the same node comes back Ready, without a new token.
    const second = await startUp(dir);
    const secondProgress = lines(second.up.stderr).filter((line) => line.startsWith("•"));
    expect(secondProgress.join("\n")).not.toContain("creating a bootstrap token");
    expect(secondProgress.join("\n")).toContain("• waiting for the local node to be Ready");
    for (const line of secondProgress) expect(line).toMatch(/^• .+ … done \(\d+ ms\)$/);
    const after = await clientJson<NodeJson[]>(dir, ["node", "list"]);
    expect(after).toHaveLength(1);
    expect(after[0]?.name).toBe(node.name);
    expect(after[0]?.uid).toBe(node.uid);
    expect(after[0]?.status).toBe("Ready");
    expect(after[0]?.enrollments).toBe(1);
    const events = await clientJson<EventJson[]>(dir, ["events", "--limit", "10000"]);
    const enrollments = events.filter(
      (e) => e.type === "EnrollmentAccepted" && e.subject === `node/${node.name}`,
    );
    expect(enrollments).toHaveLength(1);
    expect(events.filter((e) => e.type === "EnrollmentAccepted")).toHaveLength(1);

    const secondAgents = await findAgentProcesses(agentDir);
    expect(secondAgents).toHaveLength(1);
    expect(await interruptAndWait(second.up)).toBe(0);
    expect(await readProc((secondAgents[0] as { pid: number }).pid)).toBeUndefined();
    expect(await processesUsing(dir)).toEqual([]);
  });
});

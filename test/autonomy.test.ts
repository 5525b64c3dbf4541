/**
 * Agent autonomy (NFR-A1, F2) and coordinator endpoint failover (issue 4, items 2 and 3),
 * with a real coordinator (SQLite store), a real agent and process-driver replicas
 * (busybox httpd). The long (≥ 2 min) outage is the chaos suite's; it reuses
 * coordinatorOutage() from helpers/autonomy.ts with a longer outageMs.
 */
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import * as net from "node:net";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { coordinatorOutage, isAlive, killProcessGroup } from "./helpers/autonomy.js";
import {
  fastAgentFlags,
  removeProcessReplicas,
  replicaPid,
  startAgents,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { ManagedProcess, runCli, TestResources, waitFor } from "./helpers/processes.js";
import { httpGet, writeSpec } from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;
const node = "auto-node";

/** busybox httpd on $PORT, serving a page from its private work dir. */
const httpdCommand = [
  "/bin/sh",
  "-c",
  "mkdir -p www && echo ok > www/index.html && exec /bin/busybox httpd -f -p $PORT -h www",
];

function allReady(count: number) {
  return (w: WorkloadJson) =>
    w.replicas.length === count && w.replicas.every((r) => r.phase === "Running" && r.ready);
}

/** A port nothing listens on: bound once by us, then closed. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Log lines (JSON) of a process's stderr whose msg matches. */
function logLines(stderr: string, pattern: RegExp): Record<string, unknown>[] {
  return stderr
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((entry) => pattern.test(String(entry.msg)));
}

describe.skipIf(!isRoot)("NFR-A1 agent autonomy through coordinator outages", () => {
  let resources: TestResources;
  let cluster: TestCluster;
  let agentDir: string;
  let namespace: string;

  beforeEach(async () => {
    resources = new TestResources();
    namespace = `a-${randomBytes(3).toString("hex")}`;
    cluster = await TestCluster.start(resources);
    await startAgents(cluster, [{ name: node, drivers: ["process"] }]);
    agentDir = await cluster.agentDir(node);
  }, 60_000);

  afterEach(async () => {
    // Killed agents leave their replicas running (that is the point); remove them.
    for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
    if (agentDir) await removeProcessReplicas([agentDir]);
    await resources?.cleanup();
  }, 60_000);

  async function deployWeb(replicas: number): Promise<WorkloadJson> {
    const dir = await resources.tempDir("cloudless-specs-");
    const file = await writeSpec(
      dir,
      "web",
      workloadDoc("web", namespace, {
        command: httpdCommand,
        ports: [{ name: "http", containerPort: 18_380 }],
        replicas,
        readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
      }),
    );
    const applied = await cluster.cli(["workload", "apply", "-f", file]);
    expect(applied.code, applied.stderr).toBe(0);
    return waitForWorkload(cluster, namespace, "web", `${replicas} ready`, allReady(replicas));
  }

  it("NFR-A1 F2 with the coordinator down, replicas keep answering a client loop, a killed replica is restarted by its agent, and after the coordinator returns no healthy replica restarted", {
    timeout: 150_000,
  }, async () => {
    await deployWeb(3);
    const result = await coordinatorOutage({
      cluster,
      namespace,
      workload: "web",
      agentDataDir: agentDir,
      outageMs: 12_000,
      killOneReplica: true,
    });
    const { before, after, victim, samples } = result;
    console.log(
      `outage ${result.outageMs} ms, ${samples.rounds} sampling rounds; per replica ${JSON.stringify(Object.fromEntries(samples.perReplica))}; expected failures of the killed replica: ${samples.expected.length}`,
    );
    expect(result.outageMs).toBeGreaterThanOrEqual(12_000);
    // Every request succeeded except those to the killed replica between its kill and
    // its first answer from the restarted process.
    expect(samples.unexpected).toEqual([]);
    expect(samples.expected.length).toBeGreaterThan(0);
    expect(samples.expected.every((failure) => failure.replicaId === victim)).toBe(true);
    expect(samples.rounds).toBeGreaterThan(50);
    for (const counts of samples.perReplica.values()) expect(counts.ok).toBeGreaterThan(50);

    // Same replicas, same processes; the healthy ones never restarted.
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    for (const [id, was] of before) {
      const now = after.get(id);
      if (id === victim) {
        expect(now?.pid).toBe(result.victimRestartedPid);
        expect(now?.pid).not.toBe(was.pid);
        expect(now?.restarts).toBe(was.restarts + 1);
        continue;
      }
      expect(now).toEqual(was);
      expect(isAlive(was.pid)).toBe(true);
    }
    expect(result.workloadAfter.status.readyReplicas).toBe(3);
    // The agent kept its stream alive through the outage by itself (no agent restart).
    expect(cluster.agents.get(node)?.running).toBe(true);
  });

  it("NFR-A1 F2 an agent restarted (kill -9) while the coordinator is down brings its replicas back from its state on disk", {
    timeout: 150_000,
  }, async () => {
    const deployed = await deployWeb(2);
    const [kept, lost] = deployed.replicas.map((r) => ({
      id: r.id,
      port: r.hostPorts.http as number,
      restarts: r.restarts,
    }));
    if (!kept || !lost) throw new Error("expected two replicas");
    const keptPid = await replicaPid(agentDir, kept.id);
    const lostPid = await replicaPid(agentDir, lost.id);
    const state = JSON.parse(await readFile(path.join(agentDir, "agent-state.json"), "utf8"));
    expect(
      state.supervisor.desired.map((d: { spec: { replicaId: string } }) => d.spec.replicaId).sort(),
    ).toEqual([kept.id, lost.id].sort());
    // The ports each process listens on are on disk as soon as it started, not 2 s later.
    expect(state.supervisor.replicas[lost.id].hostPorts).toEqual({ http: lost.port });

    cluster.coordinator.kill("SIGKILL");
    await cluster.coordinator.exited();
    const agent = cluster.agents.get(node);
    agent?.kill("SIGKILL");
    await agent?.exited();
    // kill -9 is a crash, not a leave: the replicas outlive the agent.
    expect(isAlive(keptPid)).toBe(true);
    expect(await httpGet(kept.port)).toBe(200);
    // One replica dies while neither agent nor coordinator runs.
    killProcessGroup(lostPid);
    await waitFor("the lost replica to be gone", () => !isAlive(lostPid), 5_000, 50);

    const restarted = await cluster.startAgent(node, {
      extra: [...fastAgentFlags, "--driver", "process"],
    });
    // Both answer again with no coordinator anywhere.
    await waitFor(
      "both replicas to answer with the coordinator still down",
      async () => {
        const keptStatus = await httpGet(kept.port).catch((e) => String(e?.cause ?? e));
        const lostStatus = await httpGet(lost.port).catch((e) => String(e?.cause ?? e));
        if (keptStatus === 200 && lostStatus === 200) return true;
        throw new Error(`kept :${kept.port} → ${keptStatus}; lost :${lost.port} → ${lostStatus}`);
      },
      30_000,
      200,
    );
    expect(cluster.coordinator.running).toBe(false);
    // Adopted: the surviving replica is the same process. Restarted: the lost one is new.
    expect(await replicaPid(agentDir, kept.id)).toBe(keptPid);
    const newLostPid = await replicaPid(agentDir, lost.id);
    expect(newLostPid).not.toBe(lostPid);
    expect(isAlive(newLostPid)).toBe(true);
    expect(
      logLines(restarted.stderr, /restored desired replicas from the state file/),
    ).toHaveLength(1);
    expect(logLines(restarted.stderr, /adopted running replica/).map((e) => e.replica)).toContain(
      kept.id,
    );

    await cluster.startCoordinator();
    const back = await waitForWorkload(
      cluster,
      namespace,
      "web",
      "both Running and ready after the coordinator returned",
      (w) => allReady(2)(w) && (w.replicas.find((r) => r.id === lost.id)?.restarts ?? 0) > 0,
    );
    const byId = new Map(back.replicas.map((r) => [r.id, r]));
    expect(byId.get(kept.id)).toMatchObject({ restarts: kept.restarts, phase: "Running" });
    expect(byId.get(lost.id)).toMatchObject({ restarts: lost.restarts + 1, phase: "Running" });
    // Reconnecting changed nothing: still the same processes.
    expect(await replicaPid(agentDir, kept.id)).toBe(keptPid);
    expect(await replicaPid(agentDir, lost.id)).toBe(newLostPid);
  });

  it("NFR-A1 bad input: a corrupt agent state file costs one warning line, and the agent starts and joins", {
    timeout: 90_000,
  }, async () => {
    const agent = cluster.agents.get(node);
    agent?.kill("SIGKILL");
    await agent?.exited();
    await writeFile(path.join(agentDir, "agent-state.json"), '{"version":1,"nodeName":');
    const restarted = await cluster.startAgent(node, {
      extra: [...fastAgentFlags, "--driver", "process"],
    });
    await waitFor(
      "the agent to heartbeat again",
      () => /connected; heartbeating/.test(restarted.stderr) && restarted.running,
      30_000,
    );
    await cluster.waitForStatus(node, "Ready");
    const warnings = restarted.stderr.split("\n").filter((line) => /agent state file/.test(line));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/ignoring the agent state file .*is not JSON/);
    // It works on: a workload still deploys and answers.
    const deployed = await deployWeb(1);
    expect(await httpGet(deployed.replicas[0]?.hostPorts.http as number)).toBe(200);
  });
});

describe.skipIf(!isRoot)("NFR-A1 several coordinator URLs", () => {
  let resources: TestResources;

  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    await resources.cleanup();
  }, 60_000);

  it("NFR-A1 the agent rotates through several coordinator URLs and follows a leader redirect: with the first URL dead it joins and heartbeats through the second; the CLI fails over too", {
    timeout: 90_000,
  }, async () => {
    const cluster = await TestCluster.start(resources);
    const dead = `https://127.0.0.1:${await closedPort()}`;
    const dir = await cluster.agentDir("multi");
    const agent = resources.track(
      new ManagedProcess(
        [
          "agent",
          "--join",
          dead,
          "--join",
          cluster.url,
          "--name",
          "multi",
          "--data-dir",
          dir,
          "--log-level",
          "info",
          ...fastAgentFlags,
        ],
        { CLOUDLESS_TOKEN: await cluster.createToken() },
      ),
    );
    await cluster.waitForStatus("multi", "Ready", 30_000);
    const identity = JSON.parse(await readFile(path.join(dir, "identity.json"), "utf8"));
    expect(identity.servers).toEqual([dead, cluster.url]);
    // The dead URL was tried first and the agent moved on to the live one.
    const moves = logLines(agent.stderr, /heartbeat stream ended; reconnecting/);
    expect(moves[0]).toMatchObject({ from: dead, to: cluster.url, outcome: "failed" });

    // CLI: a config listing the dead coordinator first still works.
    const config = parse(await readFile(cluster.configPath, "utf8")) as Record<string, unknown>;
    const failoverConfig = path.join(dir, "failover.conf");
    await writeFile(failoverConfig, JSON.stringify({ ...config, servers: [dead, cluster.url] }), {
      mode: 0o600,
    });
    const listed = await runCli(["node", "list", "-o", "json"], {
      env: { CLOUDLESS_CONFIG: failoverConfig },
    });
    expect(listed.code, listed.stderr).toBe(0);
    expect((JSON.parse(listed.stdout) as { name: string }[]).map((n) => n.name)).toContain("multi");

    // And when none answers, one line naming every coordinator tried.
    const deadToo = `https://127.0.0.1:${await closedPort()}`;
    const allDead = path.join(dir, "dead.conf");
    await writeFile(allDead, JSON.stringify({ ...config, servers: [dead, deadToo] }), {
      mode: 0o600,
    });
    const failed = await runCli(["node", "list"], { env: { CLOUDLESS_CONFIG: allDead } });
    expect(failed.code).not.toBe(0);
    const lines = failed.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(dead);
    expect(lines[0]).toContain(deadToo);
    expect(lines[0]).toMatch(/cannot reach any coordinator/);
  });
});

/**
 * Agent restarts without churn (issue 12, ADR 0031), with a real coordinator, real agents
 * and process-driver replicas: an agent killed (kill -9) and restarted within its
 * --restart-grace keeps every replica (same pids, same replica ids); one that stays away
 * past it has its replicas replaced as before (REQ-031); `--on-stop restart` stops the
 * agent without stopping its replicas, and the next agent adopts them.
 */
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isAlive } from "./helpers/autonomy.js";
import {
  fastAgentFlags,
  removeProcessReplicas,
  replicaPid,
  startAgents,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { type NodeJson, TestCluster } from "./helpers/cluster.js";
import { type ManagedProcess, TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;
/** Restart grace of the agent that comes back: long enough for a loaded machine's restart. */
const restartGrace = "20s";
/** Restart grace of the agent that stays away: short, so the test does not wait long. */
const shortGrace = "3s";

interface NodeView extends NodeJson {
  lostDeadline?: string;
  restartGraceMs?: number;
}

function allRunning(count: number) {
  return (w: WorkloadJson) =>
    w.replicas.length === count && w.replicas.every((r) => r.phase === "Running" && r.ready);
}

describe.skipIf(!isRoot)("agent restarts without churn (ADR 0031)", { timeout: 240_000 }, () => {
  let resources: TestResources;
  let cluster: TestCluster;
  let namespace: string;
  const dataDirs: string[] = [];

  beforeAll(async () => {
    resources = new TestResources();
    namespace = `rs-${randomBytes(3).toString("hex")}`;
    cluster = await TestCluster.start(resources);
  }, 60_000);

  afterAll(async () => {
    for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
    // Killed agents and `--on-stop restart` leave their replicas running; remove them.
    await removeProcessReplicas(dataDirs);
    await resources?.cleanup();
  }, 60_000);

  /** A process workload pinned to one node by its label, every replica Running. */
  async function deploy(name: string, node: string, replicas: number): Promise<WorkloadJson> {
    const dir = await resources.tempDir("cloudless-specs-");
    const file = await writeSpec(
      dir,
      name,
      workloadDoc(name, namespace, {
        command: ["/bin/sh", "-c", "exec sleep 3600"],
        replicas,
        ...(node ? { placement: { nodeSelector: { pin: node } } } : {}),
      }),
    );
    const applied = await cluster.cli(["workload", "apply", "-f", file]);
    expect(applied.code, applied.stderr).toBe(0);
    return waitForWorkload(
      cluster,
      namespace,
      name,
      `${replicas} Running`,
      allRunning(replicas),
      60_000,
    );
  }

  async function pidsOf(node: string, workload: WorkloadJson): Promise<Map<string, number>> {
    const dir = await cluster.agentDir(node);
    const pids = new Map<string, number>();
    for (const replica of workload.replicas)
      pids.set(replica.id, await replicaPid(dir, replica.id));
    return pids;
  }

  async function nodeView(name: string): Promise<NodeView> {
    return cluster.cliJson<NodeView>(["node", "get", name]);
  }

  /**
   * Samples the node until a sample taken after `afterMs`, asserting every one: a
   * restarting node must hold NotReady with `reason` all along — never Lost, never Left.
   * Returns how many samples were taken.
   */
  async function holdsNotReady(name: string, reason: string, afterMs: number): Promise<number> {
    let samples = 0;
    let sampledAtMs: number;
    do {
      sampledAtMs = Date.now();
      const node = await nodeView(name);
      expect(node.status).toBe("NotReady");
      expect(node.statusReason).toBe(reason);
      expect(node.lostDeadline).toBeDefined();
      samples += 1;
    } while (sampledAtMs < afterMs);
    return samples;
  }

  async function restartAgent(name: string, extra: string[]): Promise<ManagedProcess> {
    const agent = await cluster.startAgent(name, {
      extra: [...fastAgentFlags, "--driver", "process", ...extra],
    });
    await cluster.waitForStatus(name, "Ready", 30_000);
    return agent;
  }

  it("NFR-A1 REQ-031 an agent killed with kill -9 and restarted within its --restart-grace keeps every replica (same pids, same replica ids, no restarts); one kept away past its grace has its replicas replaced elsewhere", async () => {
    const keeperFlags = ["--label", "pin=keeper", "--restart-grace", restartGrace];
    const leaverFlags = ["--label", "pin=leaver", "--restart-grace", shortGrace];
    await startAgents(cluster, [
      { name: "keeper", drivers: ["process"], extra: keeperFlags },
      { name: "leaver", drivers: ["process"], extra: leaverFlags },
    ]);
    dataDirs.push(await cluster.agentDir("keeper"), await cluster.agentDir("leaver"));
    expect((await nodeView("keeper")).restartGraceMs).toBe(20_000);

    // --- within the grace: nothing moves ---------------------------------------------
    const kept = await deploy("kept", "keeper", 3);
    const keptPids = await pidsOf("keeper", kept);
    const keeper = cluster.agents.get("keeper");
    keeper?.kill("SIGKILL");
    await keeper?.exited();
    const killedAtMs = Date.now();
    // Away well past the coordinator's stream-loss grace (1 s), which used to mean Lost.
    expect(await holdsNotReady("keeper", "Reconnecting", killedAtMs + 4_000)).toBeGreaterThan(1);
    for (const pid of keptPids.values()) expect(isAlive(pid)).toBe(true);
    const restarted = await restartAgent("keeper", keeperFlags);
    const after = await waitForWorkload(
      cluster,
      namespace,
      "kept",
      "3 Running after the agent came back",
      allRunning(3),
    );
    expect(after.replicas.map((r) => r.id).sort()).toEqual([...keptPids.keys()].sort());
    for (const replica of after.replicas) {
      expect(replica.node).toBe("keeper");
      expect(replica.restarts).toBe(0);
    }
    expect(await pidsOf("keeper", after)).toEqual(keptPids);
    for (const pid of keptPids.values()) expect(isAlive(pid)).toBe(true);
    expect(restarted.stderr).not.toMatch(/removing replica nobody wants/);
    const keeperEvents = (await cluster.events()).filter((e) => e.subject === "node/keeper");
    expect(keeperEvents.map((e) => e.type)).not.toContain("NodeLost");
    expect(
      keeperEvents.find((e) => e.type === "NodeNotReady" && e.reason === "Reconnecting")?.attributes
        ?.lostDeadline,
    ).toBeDefined();

    // --- past the grace: replaced, as a lost node's replicas always were ---------------
    // Placed on the leaver (the keeper cordoned meanwhile), free to move anywhere after.
    const cordoned = await cluster.cli(["node", "cordon", "keeper"]);
    expect(cordoned.code, cordoned.stderr).toBe(0);
    const moved = await deploy("moved", "", 2);
    expect(moved.replicas.every((r) => r.node === "leaver")).toBe(true);
    const movedPids = await pidsOf("leaver", moved);
    const uncordoned = await cluster.cli(["node", "uncordon", "keeper"]);
    expect(uncordoned.code, uncordoned.stderr).toBe(0);
    const leaver = cluster.agents.get("leaver");
    leaver?.kill("SIGKILL");
    await leaver?.exited();
    const lost = await cluster.waitForStatus("leaver", "Lost", 20_000);
    expect(lost.statusReason).toBe("NoReconnect");
    const replaced = await waitForWorkload(
      cluster,
      namespace,
      "moved",
      "replaced on keeper",
      (w) => allRunning(2)(w) && w.replicas.every((r) => r.node === "keeper"),
    );
    for (const id of movedPids.keys()) {
      expect(replaced.replicas.map((r) => r.id)).not.toContain(id);
    }
    // The leaver comes back later: it stops the replicas that were replaced.
    await restartAgent("leaver", leaverFlags);
    for (const [id, pid] of movedPids) {
      await waitFor(`replaced replica ${id} (pid ${pid}) to be stopped`, () => !isAlive(pid));
    }
  });

  it("NFR-A1 an agent stopped with --on-stop restart leaves its replicas running, the node is NotReady (Restarting), not Left, and the restarted agent adopts them (same pids and ids)", async () => {
    const flags = ["--label", "pin=planned", "--on-stop", "restart"];
    await startAgents(cluster, [{ name: "planned", drivers: ["process"], extra: flags }]);
    dataDirs.push(await cluster.agentDir("planned"));
    const workload = await deploy("planned", "planned", 2);
    const pids = await pidsOf("planned", workload);
    const agent = cluster.agents.get("planned");
    agent?.kill("SIGTERM");
    expect(await agent?.exited()).toBe(0);
    const stoppedAtMs = Date.now();
    for (const pid of pids.values()) expect(isAlive(pid)).toBe(true);
    const node = await nodeView("planned");
    expect(node.status).toBe("NotReady");
    expect(node.statusReason).toBe("Restarting");
    // Promised back within 30 s (the default of a planned restart).
    const deadlineMs = Date.parse(node.lostDeadline ?? "");
    expect(deadlineMs - stoppedAtMs).toBeGreaterThan(25_000);
    expect(deadlineMs - stoppedAtMs).toBeLessThanOrEqual(31_000);
    await holdsNotReady("planned", "Restarting", stoppedAtMs + 2_500);
    expect(
      (await cluster.events()).some(
        (e) =>
          e.subject === "node/planned" && e.type === "NodeNotReady" && e.reason === "Restarting",
      ),
    ).toBe(true);

    // As if enrolled before node uids were sent: the agent relearns its uid from the hello's
    // ack, and meanwhile adopts its replicas because its own state lists them (ADR 0030).
    const identityFile = path.join(await cluster.agentDir("planned"), "identity.json");
    const identity = JSON.parse(await readFile(identityFile, "utf8")) as Record<string, unknown>;
    expect(identity.nodeUid).toBe(node.uid);
    delete identity.nodeUid;
    await writeFile(identityFile, JSON.stringify(identity));
    const restarted = await restartAgent("planned", flags);
    const after = await waitForWorkload(
      cluster,
      namespace,
      "planned",
      "2 Running after the planned restart",
      allRunning(2),
    );
    expect(after.replicas.map((r) => r.id).sort()).toEqual([...pids.keys()].sort());
    expect(after.replicas.every((r) => r.restarts === 0 && r.node === "planned")).toBe(true);
    expect(await pidsOf("planned", after)).toEqual(pids);
    expect(restarted.stderr).toMatch(/adopted running replica/);
    await waitFor("the agent to save its relearned node uid", async () => {
      const saved = JSON.parse(await readFile(identityFile, "utf8")) as { nodeUid?: string };
      return saved.nodeUid === node.uid;
    });
    const types = (await cluster.events())
      .filter((e) => e.subject === "node/planned")
      .map((e) => e.type);
    expect(types).not.toContain("NodeLeft");
    expect(types).not.toContain("NodeLost");
  });
});

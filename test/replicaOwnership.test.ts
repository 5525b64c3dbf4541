/**
 * Replica ownership (issue 12, ADR 0030) with real coordinators, agents and Podman: two
 * clusters whose agents share one host — and, since the default node name is the host
 * name, one node name — never list, adopt, stop or remove each other's replicas, through
 * agent restarts (an agent's orphan scan runs when it starts). Containers on one engine,
 * and process replicas of two agents with separate data dirs.
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { clusterIdFromCaPem } from "../src/api/identity.js";
import { loadClientConfig } from "../src/client/config.js";
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
import { TestCluster } from "./helpers/cluster.js";
import { ensurePodman, type PodmanAvailability, podman } from "./helpers/podman.js";
import { TestResources } from "./helpers/processes.js";
import { removeNamespaceContainers, writeSpec } from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;
/** Both clusters' agents carry this name, as two default-named agents on one host would. */
const sharedName = "shared-host";

function allRunning(count: number) {
  return (w: WorkloadJson) =>
    w.replicas.length === count && w.replicas.every((r) => r.phase === "Running" && r.ready);
}

/** One cluster on this host: its coordinator, its agent named `sharedName`, its workload. */
interface Side {
  cluster: TestCluster;
  clusterId: string;
  namespace: string;
}

describe.skipIf(!isRoot)(
  "replica ownership: two clusters with the same node name on one host (ADR 0030)",
  { timeout: 300_000 },
  () => {
    let podmanService: PodmanAvailability;
    let resources: TestResources;
    const dataDirs: string[] = [];
    const namespaces: string[] = [];

    beforeAll(async () => {
      podmanService = await ensurePodman();
      if (!podmanService.available) throw new Error(`podman unavailable: ${podmanService.reason}`);
      resources = new TestResources();
    }, 300_000);

    afterAll(async () => {
      await resources?.cleanup();
      for (const namespace of namespaces) await removeNamespaceContainers(namespace);
      await removeProcessReplicas(dataDirs);
      if (podmanService?.available) await podmanService.stop();
    }, 120_000);

    async function side(driver: "container" | "process", extra: string[] = []): Promise<Side> {
      const cluster = await TestCluster.start(resources);
      const namespace = `own-${randomBytes(3).toString("hex")}`;
      namespaces.push(namespace);
      await startAgents(cluster, [
        {
          name: sharedName,
          drivers: [driver],
          ...(driver === "container" && podmanService.available
            ? { socket: podmanService.socketPath }
            : {}),
          extra,
        },
      ]);
      dataDirs.push(await cluster.agentDir(sharedName));
      const config = await loadClientConfig(cluster.configPath);
      return { cluster, clusterId: clusterIdFromCaPem(config.caPem), namespace };
    }

    async function deploy(
      { cluster, namespace }: Side,
      name: string,
      spec: Record<string, unknown>,
      replicas: number,
    ): Promise<WorkloadJson> {
      const dir = await resources.tempDir("cloudless-specs-");
      const file = await writeSpec(dir, name, workloadDoc(name, namespace, { ...spec, replicas }));
      const applied = await cluster.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
      return waitForWorkload(cluster, namespace, name, `${replicas} Running`, allRunning(replicas));
    }

    /** kill -9 of the side's agent and a restart on the same data dir, until Ready again. */
    async function crashAndRestart({ cluster }: Side, driver: "container" | "process") {
      const agent = cluster.agents.get(sharedName);
      agent?.kill("SIGKILL");
      await agent?.exited();
      const restarted = await cluster.startAgent(sharedName, {
        extra: [
          ...fastAgentFlags,
          "--driver",
          driver,
          ...(driver === "container" && podmanService.available
            ? ["--container-socket", podmanService.socketPath]
            : []),
          "--restart-grace",
          "30s",
        ],
      });
      await cluster.waitForStatus(sharedName, "Ready", 30_000);
      return restarted;
    }

    /** Container id, running flag and labels of a replica's container, from podman. */
    async function container(replicaId: string) {
      const inspected = await podman(["container", "inspect", `cloudless-${replicaId}`]);
      expect(inspected.code, inspected.stderr).toBe(0);
      const [info] = JSON.parse(inspected.stdout) as {
        Id: string;
        State: { Running: boolean };
        Config: { Labels: Record<string, string> };
      }[];
      if (!info) throw new Error(`no container for ${replicaId}`);
      return { id: info.Id, running: info.State.Running, labels: info.Config.Labels };
    }

    it("REQ-030 two clusters' agents named alike on one Podman never remove each other's containers, and each adopts its own after a kill -9 restart", async () => {
      const image = podmanService.available ? podmanService.image : "";
      const sleeper = { image, command: ["/bin/sleep", "3600"] };
      const a = await side("container", ["--restart-grace", "30s"]);
      const inA = await deploy(a, "alpha", sleeper, 2);
      // B's agent joins with A's containers already there, labelled with its node name too:
      // its first desired set starts an orphan scan (the bug: it removed A's containers).
      const b = await side("container", ["--restart-grace", "30s"]);
      const inB = await deploy(b, "beta", sleeper, 2);

      // Every container carries its cluster and its node's uid beside the shared node name.
      const uidA = (await a.cluster.node(sharedName))?.uid;
      const uidB = (await b.cluster.node(sharedName))?.uid;
      expect(uidA).toBeTruthy();
      expect(uidB).not.toBe(uidA);
      expect(a.clusterId).not.toBe(b.clusterId);
      const before = new Map<string, string>();
      for (const [workload, clusterId, uid] of [
        [inA, a.clusterId, uidA],
        [inB, b.clusterId, uidB],
      ] as const) {
        for (const replica of workload.replicas) {
          const found = await container(replica.id);
          expect(found.running).toBe(true);
          expect(found.labels).toMatchObject({
            "cloudless.node": sharedName,
            "cloudless.cluster": clusterId,
            "cloudless.node-uid": uid,
          });
          before.set(replica.id, found.id);
        }
      }

      // Each agent restarts (its orphan scan runs at start, with its desired set from disk),
      // away longer than the stream-loss grace: the other cluster's containers, with the
      // same node label, are not its to remove, and its own are adopted, not replaced.
      const restartedB = await crashAndRestart(b, "container");
      const restartedA = await crashAndRestart(a, "container");
      for (const [side_, workload, restarted] of [
        [a, inA, restartedA],
        [b, inB, restartedB],
      ] as const) {
        const after = await waitForWorkload(
          side_.cluster,
          side_.namespace,
          workload.name,
          "Running after the agent restarts",
          allRunning(2),
        );
        expect(after.replicas.map((r) => r.id).sort()).toEqual(
          workload.replicas.map((r) => r.id).sort(),
        );
        expect(after.replicas.every((r) => r.restarts === 0)).toBe(true);
        expect(restarted.stderr).not.toMatch(/removing replica nobody wants/);
      }
      for (const [replicaId, containerId] of before) {
        const found = await container(replicaId);
        expect(found.id, `container of ${replicaId}`).toBe(containerId);
        expect(found.running, `container of ${replicaId}`).toBe(true);
      }
    });

    it("REQ-030 process replicas of two clusters' agents named alike on one host, with separate data dirs, never touch each other's processes", async () => {
      const sleeper = { command: ["/bin/sh", "-c", "exec sleep 3600"] };
      const a = await side("process", ["--restart-grace", "30s"]);
      const inA = await deploy(a, "alpha", sleeper, 2);
      const b = await side("process", ["--restart-grace", "30s"]);
      const inB = await deploy(b, "beta", sleeper, 2);
      const dirA = await a.cluster.agentDir(sharedName);
      const dirB = await b.cluster.agentDir(sharedName);
      const pids = new Map<string, number>();
      for (const replica of inA.replicas) pids.set(replica.id, await replicaPid(dirA, replica.id));
      for (const replica of inB.replicas) pids.set(replica.id, await replicaPid(dirB, replica.id));

      const restartedB = await crashAndRestart(b, "process");
      const restartedA = await crashAndRestart(a, "process");
      for (const [side_, workload, dir, restarted] of [
        [a, inA, dirA, restartedA],
        [b, inB, dirB, restartedB],
      ] as const) {
        const after = await waitForWorkload(
          side_.cluster,
          side_.namespace,
          workload.name,
          "Running after the agent restarts",
          allRunning(2),
        );
        expect(after.replicas.map((r) => r.id).sort()).toEqual(
          workload.replicas.map((r) => r.id).sort(),
        );
        for (const replica of after.replicas) {
          expect(await replicaPid(dir, replica.id)).toBe(pids.get(replica.id));
        }
        expect(restarted.stderr).not.toMatch(/removing replica nobody wants/);
      }
      for (const [replicaId, pid] of pids) expect(isAlive(pid), replicaId).toBe(true);
    });
  },
);

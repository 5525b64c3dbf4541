import { randomBytes } from "node:crypto";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { TestCluster } from "./helpers/cluster.js";
import { ensurePodman, type PodmanAvailability } from "./helpers/podman.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import {
  adminClients,
  getWorkload,
  httpGet,
  removeNamespaceContainers,
  waitForReady,
  webSpec,
  writeSpec,
} from "./helpers/workloads.js";

let podmanService: PodmanAvailability;

beforeAll(async () => {
  podmanService = await ensurePodman();
  if (!podmanService.available)
    console.warn(`skipping container workload tests: ${podmanService.reason}`);
}, 300_000);

afterAll(async () => {
  if (podmanService?.available) await podmanService.stop();
});

describe("workloads end to end in real Podman containers", () => {
  let resources: TestResources;
  let namespace: string;

  beforeEach(() => {
    resources = new TestResources();
    namespace = `t-${randomBytes(3).toString("hex")}`;
  });
  afterEach(async () => {
    await resources.cleanup();
    if (podmanService.available) await removeNamespaceContainers(namespace);
  });

  async function threeZoneCluster() {
    if (!podmanService.available) throw new Error("podman unavailable");
    const cluster = await TestCluster.start(resources);
    for (const zone of ["a", "b", "c"]) {
      await cluster.startAgent(`node-${zone}`, {
        token: await cluster.createToken(),
        zone,
        region: "eu",
        extra: ["--container-socket", podmanService.socketPath, "--driver", "container"],
      });
    }
    for (const zone of ["a", "b", "c"]) await cluster.waitForStatus(`node-${zone}`, "Ready");
    return cluster;
  }

  it.skipIf(process.getuid?.() !== 0)(
    "REQ-021 REQ-022 REQ-030 REQ-031 F1 six replicas spread over zones a, b, c run 2 per zone; after kill -9 of a node they run and are ready elsewhere",
    async () => {
      if (!podmanService.available) return;
      const cluster = await threeZoneCluster();
      const clients = await adminClients(cluster.configPath);
      const dir = await resources.tempDir();
      const file = await writeSpec(
        dir,
        "web",
        webSpec({
          name: "web",
          namespace,
          image: podmanService.image,
          replicas: 6,
          spreadAcrossZones: true,
        }),
      );
      const applied = await cluster.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
      expect(applied.stdout).toContain("workload/web created");

      const workload = await waitForReady(clients, namespace, "web", 6, 90_000);
      const perNode = new Map<string, number>();
      for (const replica of workload.replicas) {
        perNode.set(replica.node, (perNode.get(replica.node) ?? 0) + 1);
      }
      expect(Object.fromEntries(perNode)).toEqual({ "node-a": 2, "node-b": 2, "node-c": 2 });
      // Every replica answers on its host port: real containers, really serving.
      for (const replica of workload.replicas) {
        expect(replica.phase).toBe("Running");
        expect(replica.driver).toBe("container");
        expect(await httpGet(replica.hostPorts.http as number)).toBe(200);
      }

      // F1: node-b dies without a word.
      const killedAtMs = Date.now();
      const victim = cluster.agents.get("node-b");
      victim?.kill("SIGKILL");
      const recovered = await waitForReady(clients, namespace, "web", 6, 60_000, (w) =>
        w.replicas.every((r) => r.node !== "node-b"),
      );
      const elapsedMs = Date.now() - killedAtMs;
      console.log(
        `REQ-031 F1: replicas of the killed node running and ready elsewhere after ${elapsedMs} ms`,
      );
      const zones = recovered.replicas.map((r) => r.node).sort();
      expect(zones.filter((n) => n === "node-a")).toHaveLength(3);
      expect(zones.filter((n) => n === "node-c")).toHaveLength(3);
      const events = await cluster.events();
      expect(events.map((e) => e.type)).toEqual(
        expect.arrayContaining(["NodeLost", "ReplicasRescheduled", "ReplicasPlaced"]),
      );
    },
    240_000,
  );

  it.skipIf(process.getuid?.() !== 0)(
    "REQ-023 a rolling update v1 → v2 with minAvailable = replicas − 1 never drops below minAvailable ready (sampled every 100 ms)",
    async () => {
      if (!podmanService.available) return;
      const cluster = await threeZoneCluster();
      const clients = await adminClients(cluster.configPath);
      const dir = await resources.tempDir();
      const replicas = 4;
      const minAvailable = replicas - 1;
      const spec = (version: string) =>
        webSpec({
          name: "roll",
          namespace,
          image: podmanService.available ? podmanService.image : "",
          replicas,
          minAvailable,
          version,
          maxSurge: 1,
          maxUnavailable: 1,
        });
      const v1 = await writeSpec(dir, "v1", spec("v1"));
      expect((await cluster.cli(["workload", "apply", "-f", v1])).code).toBe(0);
      await waitForReady(clients, namespace, "roll", replicas, 90_000);

      // Sample ready counts throughout the rollout.
      const samples: { atMs: number; ready: number; updated: number }[] = [];
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const workload = await getWorkload(clients, namespace, "roll").catch(() => undefined);
          if (!workload) break;
          samples.push({
            atMs: Date.now(),
            ready: workload.status?.readyReplicas ?? 0,
            updated: workload.status?.updatedReplicas ?? 0,
          });
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      })();
      const v2 = await writeSpec(dir, "v2", spec("v2"));
      const applied = await cluster.cli(["workload", "apply", "-f", v2]);
      expect(applied.stdout).toContain("workload/roll updated");
      const status = await cluster.cli(
        ["workload", "rollout", "status", "roll", "-n", namespace, "--timeout", "3m"],
        {},
        200_000,
      );
      expect(status.code, status.stderr).toBe(0);
      expect(status.stdout).toContain("rolled out (revision 2)");
      // The rollout's start and completion are both in the event stream (REQ-071).
      await waitFor("a RolloutCompleted event", async () => {
        const events = await cluster.events();
        const forRoll = events.filter((e) => e.subject === `workload/${namespace}/roll`);
        return (
          forRoll.some((e) => e.type === "WorkloadUpdated" && e.message.includes("revision 2")) &&
          forRoll.some((e) => e.type === "RolloutCompleted" && e.message.startsWith("revision 2"))
        );
      });
      sampling = false;
      await sampler;

      const final = await getWorkload(clients, namespace, "roll");
      expect(final.replicas).toHaveLength(replicas);
      expect(final.replicas.every((r) => r.revision === 2n && r.ready)).toBe(true);
      const lowest = Math.min(...samples.map((s) => s.ready));
      console.log(
        `REQ-023: ${samples.length} samples over ${samples.at(-1)!.atMs - samples[0]!.atMs} ms, lowest ready count ${lowest} (minAvailable ${minAvailable})`,
      );
      expect(samples.length).toBeGreaterThan(10);
      for (const sample of samples) expect(sample.ready).toBeGreaterThanOrEqual(minAvailable);

      // rollout undo goes back to the v1 spec as revision 3.
      const undo = await cluster.cli(["workload", "rollout", "undo", "roll", "-n", namespace]);
      expect(undo.code, undo.stderr).toBe(0);
      await waitFor(
        "the undo to roll out",
        async () => {
          const w = await getWorkload(clients, namespace, "roll");
          const envVersion = (w.spec as { spec?: { env?: Record<string, string> } }).spec?.env
            ?.VERSION;
          return (
            w.status?.revision === 3n &&
            w.status.phase === "Running" &&
            envVersion === "v1" &&
            w.replicas.every((r) => r.revision === 3n)
          );
        },
        120_000,
        250,
      );
    },
    300_000,
  );
});

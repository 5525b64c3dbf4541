import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadClientConfig } from "../client/config.js";
import { createClients, createCoordinatorTransport } from "../client/transport.js";
import { type Coordinator, startCoordinator } from "../control/coordinator.js";
import { HollowFleet } from "./hollowFleet.js";

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("HollowFleet", () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const step of cleanup.splice(0).reverse()) await step().catch(() => undefined);
  });

  it("joins real agents with a fake runtime, runs replicas, and kills or silences nodes", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "cloudless-hollow-test-"));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const coordinator: Coordinator = await startCoordinator({
      dataDir: path.join(dir, "coordinator"),
      host: "127.0.0.1",
      port: 0,
      clusterName: "hollow-test",
    });
    cleanup.push(() => coordinator.stop());
    const tokens: string[] = [];
    for (let i = 0; i < 3; i++) {
      const created = await coordinator.services.tokens.create({
        ttlMs: 600_000,
        description: "hollow test",
        createdBy: "admin/test",
      });
      tokens.push(created.token);
    }
    const acked = new Set<string>();
    const running = new Map<string, string>();
    const fleet = new HollowFleet({
      joinUrl: coordinator.url,
      tokens,
      count: 3,
      prefix: "hollow",
      zones: ["a", "b", "c"],
      dataRoot: path.join(dir, "nodes"),
      replicaStartMs: 10,
      listener: {
        heartbeatAck: (name) => acked.add(name),
        replicaRunning: (event) => running.set(event.replicaId, event.node),
      },
    });
    cleanup.push(() => fleet.stop());
    expect(await fleet.start()).toEqual({ started: 3, failed: 0 });
    await waitFor("every node to be acknowledged", () => acked.size === 3);
    const nodes = await coordinator.services.nodes.list();
    expect(nodes.map((n) => [n.name, n.status, n.zone, n.capacity.cpuMillicores])).toEqual([
      ["hollow-00000", "Ready", "a", 4000],
      ["hollow-00001", "Ready", "b", 4000],
      ["hollow-00002", "Ready", "c", 4000],
    ]);

    const config = await loadClientConfig(coordinator.adminConfigPath);
    const clients = createClients(
      createCoordinatorTransport({ baseUrl: coordinator.url, ...config }),
    );
    await clients.workloads.applyWorkload({
      specText: JSON.stringify({
        apiVersion: "cloudless/v1",
        kind: "Workload",
        metadata: { name: "pause", namespace: "bench" },
        spec: {
          image: "bench/pause:1",
          resources: { cpuMillicores: 100, memoryMiB: 64 },
          replicas: 3,
          placement: { antiAffinity: true },
        },
      }),
    });
    await waitFor("three replicas running on three nodes", () => running.size === 3);
    expect(new Set(running.values()).size).toBe(3);
    await waitFor("the coordinator to show them Running", async () => {
      const { workload } = await clients.workloads.getWorkload({
        name: "pause",
        namespace: "bench",
      });
      return workload?.replicas.filter((r) => r.phase === "Running").length === 3;
    });

    const status = async (name: string) => (await coordinator.services.nodes.get(name))?.status;
    expect(fleet.kill(["hollow-00000"])).toEqual(["hollow-00000"]);
    await waitFor(
      "the killed node to be Lost",
      async () => (await status("hollow-00000")) === "Lost",
    );
    expect(fleet.silence(["hollow-00001"])).toEqual(["hollow-00001"]);
    await waitFor(
      "the silenced node to be Lost",
      async () => (await status("hollow-00001")) === "Lost",
    );
    expect(await status("hollow-00002")).toBe("Ready");
    expect(fleet.counts()).toMatchObject({ running: 2, killed: 1, silenced: 1 });
  });
});

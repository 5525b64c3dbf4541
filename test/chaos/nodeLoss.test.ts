/**
 * F1 (REQ-031) on separate hosts: a coordinator (SQLite store) on one lab host, four agents
 * on four more hosts in zones a and b, a process-driver workload whose replicas listen on
 * their host's own address. A node is lost, by kill -9 of its agent or by a silent cut of
 * its link, and the replicas must run and be ready on the surviving hosts again. Each
 * scenario prints how long that took; the only time limit is the deadline of the wait.
 */
import { afterEach, describe, expect, it } from "vitest";
import {
  getWorkloadJson,
  type ReplicaJson,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "../helpers/behaviour.js";
import { TestCluster } from "../helpers/cluster.js";
import {
  assertNoLeaks,
  type LabHost,
  type LabProcess,
  NetLab,
  netlabUnavailableReason,
} from "../helpers/netlab.js";
import { waitFor } from "../helpers/processes.js";
import { adminClients, getWorkload, writeSpec } from "../helpers/workloads.js";

const unavailable = await netlabUnavailableReason();
if (unavailable) console.log(`F1 chaos scenarios skipped: ${unavailable}`);

const coordinatorPort = 7443;
const replicas = 4;
const agentHosts = [
  { name: "node-a1", zone: "a" },
  { name: "node-a2", zone: "a" },
  { name: "node-b1", zone: "b" },
  { name: "node-b2", zone: "b" },
];
/** Every replica serves its own host port ($PORT) on all of its host's addresses. */
const server =
  "require('http').createServer((q,s)=>s.end('ok '+process.env.PORT)).listen(process.env.PORT)";

interface Scenario {
  lab: NetLab;
  cluster: TestCluster;
  agents: Map<string, LabProcess>;
  namespace: string;
}

describe.skipIf(unavailable !== undefined)("F1 node loss on a multi-host lab", () => {
  let lab: NetLab | undefined;

  afterEach(async () => {
    // The lab kills every process in its hosts, replicas included, and removes their
    // cgroups and its temp dirs (the agents' data dirs among them).
    await lab?.dispose();
    if (lab) await assertNoLeaks(lab.id);
    lab = undefined;
  });

  async function startScenario(namespace: string): Promise<Scenario> {
    lab = await NetLab.create([{ name: "coord", zone: "a" }, ...agentHosts]);
    const resources = lab.resources;
    const coordHost = lab.host("coord");
    const dataDir = await resources.tempDir("cloudless-coord-");
    const coordinator = coordHost.cloudless([
      "coordinator",
      "--data-dir",
      dataDir,
      "--host",
      coordHost.ip,
      "--port",
      String(coordinatorPort),
      "--log-level",
      "info",
    ]);
    const url = await waitFor(
      "the coordinator to listen on its lab host",
      () => {
        if (!coordinator.running) throw new Error(`coordinator exited: ${coordinator.stderr}`);
        return /listening on (https:\/\/\S+)/.exec(coordinator.stderr)?.[1];
      },
      30_000,
      50,
    );
    expect(url).toBe(`https://${coordHost.ip}:${coordinatorPort}`);
    // The CLI runs in the root namespace and reaches the coordinator over the bridge.
    const cluster = new TestCluster(resources, dataDir);
    cluster.coordinator = coordinator;
    cluster.url = url;
    cluster.port = coordinatorPort;

    const agents = new Map<string, LabProcess>();
    for (const { name, zone } of agentHosts) {
      const agentDir = await resources.tempDir(`cloudless-agent-${name}-`);
      const agent = lab
        .host(name)
        .cloudless(
          [
            "agent",
            "--join",
            url,
            "--name",
            name,
            "--data-dir",
            agentDir,
            "--zone",
            zone,
            "--region",
            "eu",
            "--egress-mbps",
            "100",
            "--driver",
            "process",
            "--log-level",
            "info",
          ],
          { CLOUDLESS_TOKEN: await cluster.createToken() },
        );
      agents.set(name, agent);
      cluster.agents.set(name, agent);
    }
    for (const { name } of agentHosts) await cluster.waitForStatus(name, "Ready", 60_000);

    const specDir = await resources.tempDir("cloudless-specs-");
    const file = await writeSpec(
      specDir,
      "web",
      workloadDoc("web", namespace, {
        command: [process.execPath, "-e", server],
        ports: [{ name: "http", containerPort: 18_080 }],
        resources: { cpuMillicores: 100, memoryMiB: 96 },
        replicas,
        placement: { spreadAcrossZones: true },
        readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
      }),
    );
    const applied = await cluster.cli(["workload", "apply", "-f", file]);
    expect(applied.code, applied.stderr).toBe(0);
    return { lab, cluster, agents, namespace };
  }

  function allReadyOn(hosts: string[]) {
    return (w: WorkloadJson) =>
      w.replicas.length === replicas &&
      w.replicas.every((r) => r.phase === "Running" && r.ready && hosts.includes(r.node));
  }

  /** Every replica answers HTTP on its own host's lab address, from the root namespace. */
  async function expectServingOnHostAddresses(s: Scenario, workload: WorkloadJson) {
    for (const replica of workload.replicas as ReplicaJson[]) {
      const host = s.lab.host(replica.node) as LabHost;
      const port = replica.hostPorts.http as number;
      const response = await fetch(`http://${host.ip}:${port}/`, {
        signal: AbortSignal.timeout(5_000),
      });
      expect(await response.text()).toBe(`ok ${port}`);
    }
  }

  /** The host with the most replicas: its loss moves the most work. */
  function busiestNode(workload: WorkloadJson): string {
    const counts = new Map<string, number>();
    for (const replica of workload.replicas) {
      counts.set(replica.node, (counts.get(replica.node) ?? 0) + 1);
    }
    return [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] as string;
  }

  async function runScenario(
    namespace: string,
    label: string,
    loseNode: (s: Scenario, victim: string) => Promise<void>,
  ): Promise<void> {
    const s = await startScenario(namespace);
    const allNodes = agentHosts.map((h) => h.name);
    const before = await waitForWorkload(
      s.cluster,
      namespace,
      "web",
      `${replicas} replicas ready`,
      allReadyOn(allNodes),
      90_000,
    );
    await expectServingOnHostAddresses(s, before);
    const victim = busiestNode(before);
    const survivors = allNodes.filter((name) => name !== victim);

    // Sampled in-process every 100 ms: a CLI process per sample would blur the timing.
    const clients = await adminClients(s.cluster.configPath);
    const lostAtMs = Date.now();
    await loseNode(s, victim);
    let lostAfterMs: number | undefined;
    await waitFor(
      `${replicas} replicas ready on ${survivors.join(", ")}`,
      async () => {
        if (lostAfterMs === undefined) {
          const { node } = await clients.nodes.getNode({ name: victim });
          if (node?.status === "Lost") lostAfterMs = Date.now() - lostAtMs;
        }
        const workload = await getWorkload(clients, namespace, "web");
        return (
          workload.replicas.length === replicas &&
          workload.replicas.every(
            (r) => r.phase === "Running" && r.ready && survivors.includes(r.node),
          )
        );
      },
      60_000,
      100,
    );
    const elapsedMs = Date.now() - lostAtMs;
    console.log(
      `F1 ${label}: replicas running and ready elsewhere after ${elapsedMs} ms (node ${victim} seen Lost after ${lostAfterMs ?? "?"} ms)`,
    );

    const after = await getWorkloadJson(s.cluster, namespace, "web");
    expect(allReadyOn(survivors)(after), JSON.stringify(after.replicas)).toBe(true);
    expect(after.replicas.map((r) => r.node).filter((node) => node === victim)).toEqual([]);
    await expectServingOnHostAddresses(s, after);
    expect((await s.cluster.node(victim))?.status).toBe("Lost");
    const events = await s.cluster.events();
    expect(events.map((e) => e.type)).toEqual(
      expect.arrayContaining(["NodeLost", "ReplicasRescheduled"]),
    );
  }

  it("F1 REQ-031 node loss by kill -9: replicas run elsewhere", async () => {
    await runScenario("f1-kill", "kill -9", async (s, victim) => {
      await s.lab.kill9(s.agents.get(victim) as LabProcess);
    });
  });

  it("F1 REQ-031 node loss by silent link cut: replicas run elsewhere", async () => {
    await runScenario("f1-cut", "silent link cut", async (s, victim) => {
      await s.lab.cutHost(s.lab.host(victim));
    });
  });
});

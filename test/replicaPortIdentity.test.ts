/**
 * Issue 12, "replica identity on the wire" (ADR 0032), with real processes: two agents
 * on one host give replicas of a workload with a fixed declared port each a port of its
 * own (host-wide reservations), a replica whose port another program holds is never
 * ready and moves to a new port (the probes' port-ownership check), and `node list`
 * shows how many replicas each node runs. Container mode too, where podman is usable.
 */
import { randomBytes } from "node:crypto";
import { readdir, readFile, writeFile } from "node:fs/promises";
import * as http from "node:http";
import net from "node:net";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { CoordinatorClients } from "../src/client/transport.js";
import {
  removeProcessReplicas,
  startAgents,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { ensurePodman, type PodmanAvailability } from "./helpers/podman.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import {
  adminClients,
  getWorkload,
  removeNamespaceContainers,
  writeSpec,
} from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;
const nodes = ["ports-a", "ports-b"];
/** Where root agents reserve host ports (ADR 0032). */
const reservationDir = "/run/cloudless/ports";

/**
 * A replica's program: an HTTP server on $PORT answering with its replica id. It
 * starts listening when GO_FILE exists (at once without one, after LISTEN_DELAY_MS),
 * as a program that reads its port after start. A failed listen is logged; with
 * EXIT_ON_CONFLICT the program exits, else it stays up without a listener.
 */
const server = `
const http = require("http");
const fs = require("fs");
const listen = () => {
  const server = http.createServer((q, s) => s.end(process.env.CLOUDLESS_REPLICA));
  server.on("error", (e) => {
    console.error("listen on " + process.env.PORT + " failed: " + e.code);
    if (process.env.EXIT_ON_CONFLICT) process.exit(1);
  });
  server.listen(Number(process.env.PORT), () => console.log("listening on " + process.env.PORT));
};
if (process.env.GO_FILE) {
  const timer = setInterval(() => { if (fs.existsSync(process.env.GO_FILE)) { clearInterval(timer); listen(); } }, 100);
} else setTimeout(listen, Number(process.env.LISTEN_DELAY_MS || 0));
setInterval(() => {}, 1 << 30);
`;

/** A port nothing listens on now. */
async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, "0.0.0.0", resolve));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

/** GET / on a local port: the body, or undefined when nothing answers. */
function fetchBody(port: number, pathName = "/"): Promise<string | undefined> {
  return new Promise((resolve) => {
    const request = http.get({ host: "127.0.0.1", port, path: pathName, timeout: 2_000 }, (res) => {
      let body = "";
      res.on("data", (chunk: Buffer) => {
        body += chunk.toString();
      });
      res.on("end", () => resolve(body.trim()));
      res.on("error", () => resolve(undefined));
    });
    request.on("timeout", () => request.destroy());
    request.on("error", () => resolve(undefined));
  });
}

/** Reservation files that name one of these replicas. */
async function reservationsOf(replicaIds: string[]): Promise<string[]> {
  const found: string[] = [];
  for (const name of await readdir(reservationDir).catch(() => [] as string[])) {
    const text = await readFile(path.join(reservationDir, name), "utf8").catch(() => "");
    if (replicaIds.some((id) => text.includes(`/${id}"`))) found.push(`${name}: ${text.trim()}`);
  }
  return found;
}

describe.skipIf(!isRoot)(
  "hardening: replica identity on the wire, two agents on one host",
  { timeout: 240_000 },
  () => {
    let resources: TestResources;
    let cluster: TestCluster;
    let clients: CoordinatorClients;
    let podman: PodmanAvailability = { available: false, reason: "not started" };
    let namespace: string;
    let specDir: string;

    beforeAll(async () => {
      resources = new TestResources();
      podman = await ensurePodman();
      if (!podman.available) console.warn(`container variant skipped: ${podman.reason}`);
      cluster = await TestCluster.start(resources);
      await startAgents(
        cluster,
        nodes.map((name, index) => ({
          name,
          zone: index === 0 ? "a" : "b",
          drivers: podman.available ? ["process", "container"] : ["process"],
          ...(podman.available ? { socket: podman.socketPath } : {}),
        })),
      );
      clients = await adminClients(cluster.configPath);
    }, 120_000);

    afterAll(async () => {
      for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
      if (cluster)
        await removeProcessReplicas(await Promise.all(nodes.map((n) => cluster.agentDir(n))));
      if (podman.available) await podman.stop();
      await resources?.cleanup();
    }, 120_000);

    beforeEach(async () => {
      namespace = `ports-${randomBytes(3).toString("hex")}`;
      specDir = await resources.tempDir("cloudless-specs-");
    });

    afterEach(async () => {
      const left = await cluster.cliJson<WorkloadJson[]>(["workload", "list", "-n", namespace]);
      for (const workload of left) {
        await cluster.cli(["workload", "delete", workload.name, "-n", namespace]);
      }
      if (podman.available) await removeNamespaceContainers(namespace);
    }, 60_000);

    async function apply(name: string, spec: Record<string, unknown>): Promise<void> {
      const file = await writeSpec(specDir, name, workloadDoc(name, namespace, spec));
      const applied = await cluster.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
    }

    const allReady = (count: number) => (w: WorkloadJson) =>
      w.replicas.length === count && w.replicas.every((r) => r.phase === "Running" && r.ready);

    it("REQ-030 REQ-032 a process workload with a fixed declared port on two agents of one host: every replica runs and is ready on a port of its own, answers as itself, never restarts, and its port is reserved host-wide until the replica is removed", async () => {
      const declared = await freePort();
      await apply("fixed", {
        command: [process.execPath, "-e", server],
        // Listening a second after start: both agents check the declared port free
        // before either replica binds it (the race of the reproduction).
        env: { LISTEN_DELAY_MS: "1000", EXIT_ON_CONFLICT: "1" },
        ports: [{ name: "http", containerPort: declared }],
        resources: { cpuMillicores: 50, memoryMiB: 64 },
        replicas: 6,
        placement: { spreadAcrossZones: true },
        readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
      });
      const workload = await waitForWorkload(
        cluster,
        namespace,
        "fixed",
        "6 replicas running and ready",
        allReady(6),
        90_000,
      );
      const byNode = new Map<string, number>();
      for (const replica of workload.replicas) {
        byNode.set(replica.node, (byNode.get(replica.node) ?? 0) + 1);
      }
      // Both agents run some: otherwise there is no race between agents to prove.
      expect([...byNode.keys()].sort()).toEqual(nodes);
      const ports = workload.replicas.map((r) => r.hostPorts.http as number);
      expect(new Set(ports).size).toBe(6);
      expect(ports.filter((port) => port === declared)).toHaveLength(1);
      // Each port is served by the replica reported on it, and by no other.
      for (const replica of workload.replicas) {
        expect(await fetchBody(replica.hostPorts.http as number)).toBe(replica.id);
      }
      // Nothing crashed on a taken port along the way.
      expect(workload.replicas.map((r) => r.restarts)).toEqual([0, 0, 0, 0, 0, 0]);
      // Each replica's port is reserved host-wide for it, by its own node's agent.
      for (const replica of workload.replicas) {
        const text = await readFile(
          path.join(reservationDir, String(replica.hostPorts.http)),
          "utf8",
        );
        expect(JSON.parse(text)).toMatchObject({ owner: `${replica.node}/${replica.id}` });
      }

      const ids = workload.replicas.map((r) => r.id);
      const deleted = await cluster.cli(["workload", "delete", "fixed", "-n", namespace]);
      expect(deleted.code, deleted.stderr).toBe(0);
      await waitFor(
        "the replicas' port reservations to be released",
        async () => (await reservationsOf(ids)).length === 0,
        30_000,
        200,
      );
    });

    it("REQ-030 node list and node get show how many replicas each node runs and what they reserve, and 0 once they are gone", async () => {
      await apply("sleepers", {
        command: ["/bin/sleep", "600"],
        resources: { cpuMillicores: 70, memoryMiB: 24 },
        replicas: 3,
        placement: { spreadAcrossZones: true },
      });
      const workload = await waitForWorkload(
        cluster,
        namespace,
        "sleepers",
        "3 replicas running",
        allReady(3),
      );
      const byNode = new Map<string, number>();
      for (const replica of workload.replicas) {
        byNode.set(replica.node, (byNode.get(replica.node) ?? 0) + 1);
      }
      type NodeCount = {
        name: string;
        replicaCount: number;
        allocated?: { cpuMillicores: number; memoryMiB: number };
      };
      const listed = await cluster.cliJson<NodeCount[]>(["node", "list"]);
      for (const name of nodes) {
        const count = byNode.get(name) ?? 0;
        expect(listed.find((node) => node.name === name)?.replicaCount, name).toBe(count);
        const one = await cluster.cliJson<NodeCount>(["node", "get", name]);
        expect(one.replicaCount, name).toBe(count);
        expect(one.allocated, name).toMatchObject({
          cpuMillicores: 70 * count,
          memoryMiB: 24 * count,
        });
      }
      expect([...byNode.values()].reduce((a, b) => a + b, 0)).toBe(3);

      const deleted = await cluster.cli(["workload", "delete", "sleepers", "-n", namespace]);
      expect(deleted.code, deleted.stderr).toBe(0);
      await waitFor(
        "node list to count no replica of the deleted workload",
        async () => {
          const after = await cluster.cliJson<NodeCount[]>(["node", "list"]);
          return nodes.every((name) => after.find((n) => n.name === name)?.replicaCount === 0);
        },
        30_000,
        250,
      );
    });

    it("REQ-032 REQ-030 a replica whose port another program takes before it listens is never reported ready on it (that program answers its probe), and moves to a port of its own", async () => {
      // Relative: the go file is in the replica's work dir, the only place a sandboxed
      // replica (REQ-062) shares with the host.
      await apply("taken", {
        command: [process.execPath, "-e", server],
        env: { GO_FILE: "go" },
        ports: [{ name: "http", containerPort: await freePort() }],
        resources: { cpuMillicores: 50, memoryMiB: 64 },
        replicas: 1,
        readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
      });
      const started = await waitForWorkload(
        cluster,
        namespace,
        "taken",
        "the replica running (not yet listening)",
        (w) => w.replicas[0]?.phase === "Running",
      );
      const replica = started.replicas[0];
      const taken = replica?.hostPorts.http as number;
      expect(replica?.ready).toBe(false);

      // Another program takes the port and answers every request with 200.
      const intruder = http.createServer((_request, response) => response.end("intruder"));
      await new Promise<void>((resolve) => intruder.listen(taken, "0.0.0.0", resolve));
      try {
        const agentDir = await cluster.agentDir(replica?.node ?? "");
        // Into the work dir the replica has now: a move to another port may give it a new one.
        const go = () =>
          writeFile(path.join(agentDir, "replicas", replica?.id ?? "", "work", "go"), "go").catch(
            () => undefined,
          );
        await go();
        const samples: Array<{ ready: boolean; port: number | undefined; phase: string }> = [];
        const moved = await waitFor(
          "the replica ready on another port",
          async () => {
            const workload = await getWorkload(clients, namespace, "taken");
            const current = workload.replicas[0];
            if (!current) return undefined;
            await go();
            samples.push({
              ready: current.ready,
              port: current.hostPorts.http,
              phase: current.phase,
            });
            return current.ready && current.hostPorts.http !== taken ? current : undefined;
          },
          60_000,
          100,
        );
        expect(samples.filter((sample) => sample.ready && sample.port === taken)).toEqual([]);
        const newPort = moved.hostPorts.http as number;
        expect(newPort).not.toBe(taken);
        expect(await fetchBody(newPort)).toBe(moved.id);
        expect(await fetchBody(taken)).toBe("intruder");
        expect(moved.restarts).toBeGreaterThanOrEqual(1);
        expect(moved.reason).toBe("PortConflict");
        expect(moved.message).toMatch(
          new RegExp(`restarted after host port ${taken} is held by pid ${process.pid} \\(`),
        );
      } finally {
        await new Promise<void>((resolve) => intruder.close(() => resolve()));
      }
    });

    it("REQ-030 REQ-032 container mode: replicas of one workload on two agents sharing one engine each get a host port of their own and answer as themselves", async (context) => {
      if (!podman.available) context.skip();
      const image = podman.available ? podman.image : "";
      await apply("boxes", {
        image,
        command: [
          "/bin/sh",
          "-c",
          // The image's files are root's; the replica runs as its workload's user (ADR
          // 0054) and writes into its private /tmp.
          'echo -n "$CLOUDLESS_REPLICA" > /tmp/id && exec httpd -f -p 8080 -h /tmp',
        ],
        ports: [{ name: "http", containerPort: 8080 }],
        resources: { cpuMillicores: 50, memoryMiB: 32 },
        replicas: 4,
        placement: { spreadAcrossZones: true },
        readinessProbe: { http: { path: "/id", port: "http" }, periodSeconds: 1 },
      });
      const workload = await waitForWorkload(
        cluster,
        namespace,
        "boxes",
        "4 containers running and ready",
        allReady(4),
        120_000,
      );
      expect(new Set(workload.replicas.map((r) => r.node)).size).toBe(2);
      const ports = workload.replicas.map((r) => r.hostPorts.http as number);
      expect(new Set(ports).size).toBe(4);
      for (const replica of workload.replicas) {
        expect(replica.driver).toBe("container");
        expect(await fetchBody(replica.hostPorts.http as number, "/id")).toBe(replica.id);
      }
    });
  },
);

/**
 * Services on a real cluster (issue 14): a coordinator process, an agent process and
 * process replicas with a readiness probe. `service get -o json` shows the endpoints the
 * agents will balance over; the VIP is stored and survives a rollout and a coordinator
 * restart; bad flags and specs are refused in one line.
 */
import { randomBytes } from "node:crypto";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  removeProcessReplicas,
  startAgents,
  type WorkloadJson,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { runCli, TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;
const node = "svc-node";

interface EndpointJson {
  replicaId: string;
  node: string;
  zone?: string;
  ready?: boolean;
  weight?: number;
  hostPorts?: Record<string, number>;
  revision?: string;
  workload: string;
}

interface ServiceJson {
  namespace: string;
  name: string;
  dnsName: string;
  vip?: string;
  ports: { name: string; port: number; protocol: string }[];
  endpoints?: EndpointJson[];
  workloads: string[];
}

const server =
  "require('http').createServer((q,s)=>s.end('ok '+process.env.PORT)).listen(process.env.PORT)";

describe.skipIf(!isRoot)("services on a real cluster", { timeout: 180_000 }, () => {
  let resources: TestResources;
  let cluster: TestCluster;
  let agentDir: string;
  let namespace: string;
  let specDir: string;

  beforeAll(async () => {
    resources = new TestResources();
    cluster = await TestCluster.start(resources);
    await startAgents(cluster, [{ name: node, drivers: ["process"], zone: "z1" }]);
    agentDir = await cluster.agentDir(node);
  }, 60_000);

  afterAll(async () => {
    for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
    if (agentDir) await removeProcessReplicas([agentDir]);
    await resources?.cleanup();
  }, 60_000);

  beforeEach(async () => {
    namespace = `s-${randomBytes(3).toString("hex")}`;
    specDir = await resources.tempDir("cloudless-specs-");
  });

  afterEach(async () => {
    const left = await cluster.cliJson<WorkloadJson[]>(["workload", "list", "-n", namespace]);
    for (const workload of left) {
      await cluster.cli(["workload", "delete", workload.name, "-n", namespace]);
    }
  });

  async function apply(name: string, spec: Record<string, unknown>) {
    const file = await writeSpec(specDir, name, workloadDoc(name, namespace, spec));
    return cluster.cli(["workload", "apply", "-f", file]);
  }

  function webSpec(env: Record<string, string> = {}) {
    return {
      command: [process.execPath, "-e", server],
      env,
      ports: [{ name: "http", containerPort: 18_080 }],
      resources: { cpuMillicores: 100, memoryMiB: 96 },
      replicas: 2,
      readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
    };
  }

  const getService = (name: string) =>
    cluster.cliJson<ServiceJson>(["service", "get", name, "-n", namespace, "-o", "json"]);

  it("REQ-041 REQ-042 service get -o json shows the VIP, the DNS name and endpoints ready after the readiness probe passes, with node, zone, weight and host port", async () => {
    const applied = await apply("web", webSpec());
    expect(applied.code, applied.stderr).toBe(0);
    const service = await waitFor(
      "web's two endpoints to be ready",
      async () => {
        const got = await getService("web");
        const endpoints = got.endpoints ?? [];
        return endpoints.length === 2 && endpoints.every((e) => e.ready) && got.vip
          ? got
          : undefined;
      },
      60_000,
      250,
    );
    expect(service.dnsName).toBe(`web.${namespace}.svc.cluster.local`);
    expect(service.vip).toMatch(/^10\.43\.\d+\.\d+$/);
    expect(service.vip).not.toMatch(/^10\.43\.0\.(0|1|10)$/);
    expect(service.ports).toEqual([{ name: "http", port: 18_080, protocol: "tcp" }]);
    for (const endpoint of service.endpoints ?? []) {
      expect(endpoint).toMatchObject({
        node,
        zone: "z1",
        ready: true,
        weight: 100,
        workload: "web",
      });
      // The host port the endpoint names is where the replica answers.
      const port = endpoint.hostPorts?.http ?? 0;
      const response = await fetch(`http://127.0.0.1:${port}/`);
      expect(await response.text()).toBe(`ok ${port}`);
    }
    const listed = await cluster.cliJson<ServiceJson[]>([
      "service",
      "list",
      "-n",
      namespace,
      "-o",
      "json",
    ]);
    expect(listed.map((s) => [s.name, s.vip])).toEqual([["web", service.vip]]);
    const table = await cluster.cli(["service", "get", "web", "-n", namespace]);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toContain(`VIP:        ${service.vip}`);
    expect(table.stdout).toMatch(
      /REPLICA\s+NODE\s+ZONE\s+READY\s+WEIGHT\s+REVISION\s+HOST PORTS\s+PATH/,
    );
  });

  it("REQ-041 a service keeps its VIP across a rollout (new replicas) and a coordinator restart; a weight change starts no rollout", async () => {
    expect((await apply("api", webSpec())).code).toBe(0);
    const before = await waitFor(
      "api's endpoints to be ready",
      async () => {
        const got = await getService("api");
        return (got.endpoints ?? []).filter((e) => e.ready).length === 2 && got.vip
          ? got
          : undefined;
      },
      60_000,
      250,
    );
    const firstReplicas = new Set((before.endpoints ?? []).map((e) => e.replicaId));
    // A rollout: a new revision replaces every replica.
    expect((await apply("api", webSpec({ VERSION: "2" }))).code).toBe(0);
    const rolled = await waitFor(
      "api's revision 2 endpoints to be ready",
      async () => {
        const got = await getService("api");
        const endpoints = got.endpoints ?? [];
        return endpoints.length === 2 &&
          endpoints.every((e) => e.ready && e.revision === "2" && !firstReplicas.has(e.replicaId))
          ? got
          : undefined;
      },
      90_000,
      250,
    );
    expect(rolled.vip).toBe(before.vip);
    // A weight is routing, not a new revision: the same replicas, weight 0.
    expect(
      (await apply("api", { ...webSpec({ VERSION: "2" }), service: { weight: 0 } })).code,
    ).toBe(0);
    const drained = await waitFor(
      "api's endpoints to be drained",
      async () => {
        const got = await getService("api");
        return (got.endpoints ?? []).every((e) => (e.weight ?? 0) === 0) ? got : undefined;
      },
      20_000,
      250,
    );
    expect((drained.endpoints ?? []).map((e) => e.replicaId).sort()).toEqual(
      (rolled.endpoints ?? []).map((e) => e.replicaId).sort(),
    );
    // A coordinator restart reads the VIP back from the store.
    await cluster.coordinator.stop();
    await cluster.startCoordinator();
    const restarted = await waitFor(
      "the restarted coordinator to answer with api's VIP",
      async () => {
        const got = await getService("api").catch(() => undefined);
        return got?.vip ? got : undefined;
      },
      30_000,
      250,
    );
    expect(restarted.vip).toBe(before.vip);
  });

  it("REQ-041 REQ-042 bad input gets one-line errors: an unknown port in service.ports, weight 1001, a port clash between workloads of one service", async () => {
    const unknown = await apply("bad1", { ...webSpec(), service: { ports: ["admin"] } });
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain('spec.service.ports[0]: no port named "admin" in spec.ports');
    const heavy = await apply("bad2", { ...webSpec(), service: { weight: 1001 } });
    expect(heavy.code).not.toBe(0);
    expect(heavy.stderr).toContain("spec.service.weight: expected an integer from 0 to 1000");
    expect(heavy.stderr).not.toMatch(/\n\s+at /);
    expect(
      (await apply("shop-a", { ...webSpec(), replicas: 0, service: { name: "shop" } })).code,
    ).toBe(0);
    const clash = await apply("shop-b", {
      ...webSpec(),
      replicas: 0,
      ports: [{ name: "http", containerPort: 19_090 }],
      service: { name: "shop" },
    });
    expect(clash.code).not.toBe(0);
    expect(clash.stderr.trim().split("\n")).toHaveLength(1);
    expect(clash.stderr).toContain('port "http" is 18080 in workload "shop-a" but 19090 here');
  });
});

describe("REQ-041 coordinator network flags", () => {
  it.each([
    [
      ["--service-cidr", "10.0.0.0/8"],
      '--service-cidr: service CIDR "10.0.0.0/8": prefix /8 is out of range',
    ],
    [
      ["--service-cidr", "fd00::/64"],
      '--service-cidr: service CIDR "fd00::/64": expected an IPv4 range',
    ],
    [
      ["--cluster-domain", "Bad_Domain"],
      '--cluster-domain: cluster domain "Bad_Domain": expected a DNS name',
    ],
  ])("%s is refused in one line before anything starts", async (flags, message) => {
    const resources = new TestResources();
    try {
      const dir = await resources.tempDir("cloudless-coord-");
      const result = await runCli([
        "coordinator",
        "--data-dir",
        path.join(dir, "data"),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        ...flags,
      ]);
      expect(result.code).not.toBe(0);
      expect(result.stderr).toContain(message);
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
    } finally {
      await resources.cleanup();
    }
  });
});

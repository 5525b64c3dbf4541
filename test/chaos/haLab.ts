/**
 * A replicated Cloudless cluster on a network lab (test/helpers/netlab.ts): three control
 * hosts, each with an etcd member and a coordinator on its own address, and worker hosts
 * with agents (process driver) that join all three coordinators. Used by the F2 and F3
 * chaos scenarios. Everything belongs to the lab and goes with lab.dispose().
 */
import { readFile } from "node:fs/promises";
import * as path from "node:path";
import { expect } from "vitest";
import { type WorkloadJson, workloadDoc } from "../helpers/behaviour.js";
import { TestCluster } from "../helpers/cluster.js";
import {
  type LabEtcdCluster,
  type LabHost,
  type LabProcess,
  NetLab,
  startEtcdCluster,
} from "../helpers/netlab.js";
import { waitFor } from "../helpers/processes.js";
import { writeSpec } from "../helpers/workloads.js";

export const coordinatorPort = 7443;
export const leaseTtlMs = 3_000;
export const heartbeatMs = 1_000;

/** Every replica serves its own host port ($PORT) on all of its host's addresses. */
export const replicaServer =
  "require('http').createServer((q,s)=>s.end('ok '+process.env.PORT)).listen(process.env.PORT)";

export interface WorkerDefinition {
  name: string;
  zone: string;
}

export interface LabCoordinator {
  name: string;
  host: LabHost;
  dataDir: string;
  url: string;
  process: LabProcess;
  args: string[];
}

export interface HaLab {
  lab: NetLab;
  etcd: LabEtcdCluster;
  coordinators: LabCoordinator[];
  /** The CLI's view: the admin.conf of the last coordinator, which lists all three. */
  cluster: TestCluster;
  agents: Map<string, LabProcess>;
  agentDirs: Map<string, string>;
  specDir: string;
}

/** True while this coordinator process runs and its last word on leadership was "leader". */
export function leads(c: LabCoordinator): boolean {
  if (!c.process.running) return false;
  const elected = c.process.stderr.lastIndexOf("this coordinator is now the leader");
  const demoted = c.process.stderr.lastIndexOf("this coordinator is no longer the leader");
  return elected >= 0 && elected > demoted;
}

export function leaders(ha: HaLab): LabCoordinator[] {
  return ha.coordinators.filter(leads);
}

export async function waitForOneLeader(ha: HaLab, timeoutMs = 20_000): Promise<LabCoordinator> {
  return waitFor(
    "exactly one leader",
    () => {
      const found = leaders(ha);
      return found.length === 1 ? found[0] : undefined;
    },
    timeoutMs,
    20,
  );
}

export async function startCoordinatorProcess(c: LabCoordinator): Promise<void> {
  c.process = c.host.cloudless(c.args);
  await waitFor(
    `coordinator ${c.name} to listen`,
    () => {
      if (!c.process.running) throw new Error(`${c.name} exited: ${c.process.stderr}`);
      return c.process.stderr.includes("coordinator listening") ? true : undefined;
    },
    30_000,
    50,
  );
}

export async function startHaLab(workers: WorkerDefinition[]): Promise<HaLab> {
  const control = ["ctl-1", "ctl-2", "ctl-3"].map((name) => ({ name, zone: "ctl" }));
  const lab = await NetLab.create([...control, ...workers]);
  try {
    const controlHosts = control.map((c) => lab.host(c.name));
    const etcd = await startEtcdCluster(lab, controlHosts);
    const store = `etcd://${controlHosts.map((h) => `${h.ip}:2379`).join(",")}`;
    const coordinators: LabCoordinator[] = [];
    let secretFile: string | undefined;
    for (const host of controlHosts) {
      const dataDir = await lab.resources.tempDir(`cloudless-${host.name}-`);
      const c: LabCoordinator = {
        name: host.name,
        host,
        dataDir,
        url: `https://${host.ip}:${coordinatorPort}`,
        process: undefined as unknown as LabProcess,
        args: [
          "coordinator",
          "--data-dir",
          dataDir,
          "--host",
          host.ip,
          "--port",
          String(coordinatorPort),
          "--store",
          store,
          "--leader-lease",
          `${leaseTtlMs}ms`,
          "--heartbeat-interval",
          `${heartbeatMs}ms`,
          "--log-level",
          "info",
          ...(secretFile ? ["--cluster-secret-file", secretFile] : []),
        ],
      };
      await startCoordinatorProcess(c);
      lab.track(c.process);
      coordinators.push(c);
      secretFile ??= path.join(dataDir, "cluster-secret");
    }
    const last = coordinators[coordinators.length - 1] as LabCoordinator;
    const cluster = new TestCluster(lab.resources, last.dataDir);
    cluster.url = (coordinators[0] as LabCoordinator).url;
    cluster.port = coordinatorPort;
    const config = await readFile(cluster.configPath, "utf8");
    for (const c of coordinators) expect(config).toContain(c.url);

    const ha: HaLab = {
      lab,
      etcd,
      coordinators,
      cluster,
      agents: new Map(),
      agentDirs: new Map(),
      specDir: await lab.resources.tempDir("cloudless-specs-"),
    };
    await waitForOneLeader(ha);
    const joins = coordinators.flatMap((c) => ["--join", c.url]);
    for (const worker of workers) {
      const agentDir = await lab.resources.tempDir(`cloudless-agent-${worker.name}-`);
      ha.agentDirs.set(worker.name, agentDir);
      const agent = lab
        .host(worker.name)
        .cloudless(
          [
            "agent",
            ...joins,
            "--name",
            worker.name,
            "--data-dir",
            agentDir,
            "--zone",
            worker.zone,
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
      lab.track(agent);
      ha.agents.set(worker.name, agent);
    }
    for (const worker of workers) await cluster.waitForStatus(worker.name, "Ready", 60_000);
    return ha;
  } catch (error) {
    await lab.dispose();
    throw error;
  }
}

/**
 * Applies the HTTP workload: `replicas` node.js servers, spread across zones, ready-probed.
 * `rebalance: false` keeps the rebalancer (ADR 0035) from moving its replicas.
 */
export async function applyWeb(
  ha: HaLab,
  namespace: string,
  name: string,
  replicas: number,
  options: { rebalance?: boolean } = {},
): Promise<void> {
  const file = await writeSpec(
    ha.specDir,
    `${namespace}-${name}`,
    workloadDoc(name, namespace, {
      command: [process.execPath, "-e", replicaServer],
      ports: [{ name: "http", containerPort: 18_080 }],
      resources: { cpuMillicores: 100, memoryMiB: 96 },
      replicas,
      placement: {
        spreadAcrossZones: true,
        ...(options.rebalance === false ? { rebalance: false } : {}),
      },
      readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
      terminationGracePeriodSeconds: 2,
    }),
  );
  const applied = await ha.cluster.cli(["workload", "apply", "-f", file]);
  expect(applied.code, applied.stderr).toBe(0);
}

export function allReady(count: number, onNodes?: string[]) {
  return (w: WorkloadJson) =>
    w.replicas.length === count &&
    w.replicas.every(
      (r) => r.phase === "Running" && r.ready && (!onNodes || onNodes.includes(r.node)),
    );
}

/** An endpoint a client loop requests: one replica on its host's own address. */
export interface Endpoint {
  replicaId: string;
  node: string;
  url: string;
}

export function endpointsOf(ha: HaLab, workload: WorkloadJson): Endpoint[] {
  return workload.replicas.map((r) => ({
    replicaId: r.id,
    node: r.node,
    url: `http://${ha.lab.host(r.node).ip}:${r.hostPorts.http}/`,
  }));
}

/** GET with a deadline; true when the replica answered 200 with its own port. */
export async function answers(url: string, timeoutMs = 1_000): Promise<boolean> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    const body = await response.text();
    return response.status === 200 && body.startsWith("ok ");
  } catch {
    return false;
  }
}

export interface LoopFailure {
  replicaId: string;
  atMs: number;
}

/**
 * A client that requests every endpoint every `intervalMs` until stopped, and records
 * every failed request. Failures of a replica inside an expected-down window (between
 * expectDown() and its next successful answer) are kept apart from the others.
 */
export class ClientLoop {
  requests = 0;
  readonly unexpected: LoopFailure[] = [];
  readonly expected: LoopFailure[] = [];
  private readonly down = new Set<string>();
  private readonly recovered = new Map<string, number>();
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(
    private readonly endpoints: Endpoint[],
    private readonly intervalMs = 200,
  ) {
    this.loop = this.run();
  }

  expectDown(replicaId: string): void {
    this.down.add(replicaId);
    this.recovered.delete(replicaId);
  }

  recoveredAtMs(replicaId: string): number | undefined {
    return this.recovered.get(replicaId);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const roundStartedMs = Date.now();
      await Promise.all(
        this.endpoints.map(async (endpoint) => {
          this.requests += 1;
          const ok = await answers(endpoint.url);
          const atMs = Date.now();
          if (ok) {
            if (this.down.delete(endpoint.replicaId)) this.recovered.set(endpoint.replicaId, atMs);
            return;
          }
          const failure = { replicaId: endpoint.replicaId, atMs };
          if (this.down.has(endpoint.replicaId)) this.expected.push(failure);
          else this.unexpected.push(failure);
        }),
      );
      const waitMs = this.intervalMs - (Date.now() - roundStartedMs);
      if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
    }
  }
}

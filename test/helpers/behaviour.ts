/**
 * Helpers for the workload behaviour tests (test/workload*.test.ts): clusters whose agents
 * use chosen runtime drivers, the CLI's JSON view of a workload, a container engine a test
 * can take away, and cleanup of process-driver replicas (which outlive their agent).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, existsSync, openSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, rmdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import {
  type CgroupPaths,
  cgroupPathsFor,
  detectCgroupLayout,
  removeReplicaCgroup,
} from "../../src/agent/drivers/cgroups.js";
import type { TestCluster } from "./cluster.js";
import { pingSocket } from "./podman.js";
import { type ManagedProcess, waitFor } from "./processes.js";

/** Skips the egress measurement (about a second per agent) with a configured value. */
export const fastAgentFlags = ["--egress-mbps", "100"];

export interface ReplicaJson {
  id: string;
  node: string;
  phase: string;
  ready: boolean;
  restarts: number;
  revision: string;
  reason: string;
  message: string;
  hostPorts: Record<string, number>;
  driver: string;
  exitCode: number;
  startedAt?: string;
}

export interface WorkloadJson {
  name: string;
  namespace: string;
  uid: string;
  spec: { metadata: Record<string, unknown>; spec: Record<string, unknown> };
  status: {
    replicas: number;
    readyReplicas: number;
    updatedReplicas: number;
    availableReplicas: number;
    phase: string;
    message: string;
    revision: string;
    desiredReplicas: number;
    minAvailable: number;
  };
  replicas: ReplicaJson[];
}

/** `cloudless workload get NAME -n NS -o json`, parsed. */
export function getWorkloadJson(
  cluster: TestCluster,
  namespace: string,
  name: string,
): Promise<WorkloadJson> {
  return cluster.cliJson<WorkloadJson>(["workload", "get", name, "-n", namespace]);
}

/** Polls the workload (through the CLI) until `check` accepts it. */
export function waitForWorkload(
  cluster: TestCluster,
  namespace: string,
  name: string,
  description: string,
  check: (workload: WorkloadJson) => boolean,
  timeoutMs = 60_000,
): Promise<WorkloadJson> {
  return waitFor(
    `${namespace}/${name}: ${description}`,
    async () => {
      const workload = await getWorkloadJson(cluster, namespace, name);
      return check(workload) ? workload : undefined;
    },
    timeoutMs,
    250,
  );
}

/**
 * Samples the workload (through the CLI) until `done` accepts a sample, and returns every
 * sample taken, so a test can assert what held all along rather than only at the end.
 */
export async function sampleWorkloadUntil(
  cluster: TestCluster,
  namespace: string,
  name: string,
  description: string,
  done: (workload: WorkloadJson) => boolean,
  timeoutMs = 60_000,
): Promise<WorkloadJson[]> {
  const samples: WorkloadJson[] = [];
  await waitFor(
    `${namespace}/${name}: ${description}`,
    async () => {
      const workload = await getWorkloadJson(cluster, namespace, name);
      samples.push(workload);
      return done(workload);
    },
    timeoutMs,
    250,
  );
  return samples;
}

export interface AgentDefinition {
  name: string;
  zone?: string;
  drivers: ("container" | "process")[];
  /** Container engine socket (needed for the container driver). */
  socket?: string;
  extra?: string[];
}

/** Starts agents with the given drivers and waits until all are Ready. */
export async function startAgents(
  cluster: TestCluster,
  agents: AgentDefinition[],
): Promise<Map<string, ManagedProcess>> {
  const started = new Map<string, ManagedProcess>();
  for (const agent of agents) {
    const process = await cluster.startAgent(agent.name, {
      token: await cluster.createToken(),
      zone: agent.zone ?? "a",
      region: "eu",
      extra: [
        ...fastAgentFlags,
        ...(agent.socket ? ["--container-socket", agent.socket] : []),
        ...agent.drivers.flatMap((driver) => ["--driver", driver]),
        ...(agent.extra ?? []),
      ],
    });
    started.set(agent.name, process);
  }
  for (const agent of agents) await cluster.waitForStatus(agent.name, "Ready", 30_000);
  return started;
}

/** The JSON document of a workload spec, with test-friendly defaults. */
export function workloadDoc(
  name: string,
  namespace: string,
  spec: Record<string, unknown>,
): Record<string, unknown> {
  return {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name, namespace },
    spec: {
      resources: { cpuMillicores: 50, memoryMiB: 16 },
      terminationGracePeriodSeconds: 1,
      ...spec,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Process-driver replicas on this host

const cgroupParent = "cloudless";

/**
 * The cgroup directories the process driver gave a replica on this host (v1 or v2), as
 * its process.json records them: under cloudless/<cluster id>/ since replicas carry their
 * owner (ADR 0030), under cloudless/ when an older agent started them.
 */
export async function replicaCgroup(
  agentDataDir: string,
  replicaId: string,
): Promise<CgroupPaths | undefined> {
  try {
    const record = JSON.parse(
      await readFile(path.join(replicaDir(agentDataDir, replicaId), "process.json"), "utf8"),
    ) as { cgroup?: CgroupPaths };
    if (record.cgroup) return record.cgroup;
  } catch {
    // No record (never started): where an older agent would have put it.
  }
  return cgroupPathsFor(detectCgroupLayout("/sys/fs/cgroup"), cgroupParent, replicaId);
}

/** `<agent data dir>/replicas/<replicaId>`, where the process driver keeps a replica. */
export function replicaDir(agentDataDir: string, replicaId: string): string {
  return path.join(agentDataDir, "replicas", replicaId);
}

/** The pid the process driver recorded for a replica. */
export async function replicaPid(agentDataDir: string, replicaId: string): Promise<number> {
  const text = await readFile(path.join(replicaDir(agentDataDir, replicaId), "pid"), "utf8");
  return Number(text.trim());
}

/**
 * Kills what process-driver replicas of these agent data dirs left running and removes
 * their cgroups. Replicas lead their own session and outlive a killed agent, so a test
 * that fails half-way must not leave them behind.
 */
export async function removeProcessReplicas(agentDataDirs: Iterable<string>): Promise<void> {
  for (const dataDir of agentDataDirs) {
    const dir = path.join(dataDir, "replicas");
    const ids = await readdir(dir).catch(() => [] as string[]);
    for (const id of ids) {
      const pid = await replicaPid(dataDir, id).catch(() => 0);
      if (pid > 0) {
        for (const target of [-pid, pid]) {
          try {
            process.kill(target, "SIGKILL");
          } catch {
            // already gone
          }
        }
      }
      const cgroup = await replicaCgroup(dataDir, id);
      if (cgroup) {
        await removeReplicaCgroup(cgroup).catch(() => undefined);
        // The test cluster's cloudless/<cluster id> parent goes too, once empty.
        for (const dir of new Set([cgroup.cpuDir, cgroup.memoryDir])) {
          const parent = path.dirname(dir);
          if (/^[0-9a-f]{16}$/.test(path.basename(parent)))
            await rmdir(parent).catch(() => undefined);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A container engine the test owns

export interface OwnPodmanService {
  socketPath: string;
  /** Whether the service process is running. */
  readonly running: boolean;
  /** (Re)starts the service on the same socket path and waits until it answers. */
  start(): Promise<void>;
  /** Stops the service (SIGKILL: the engine "goes away"); containers keep running. */
  kill(): Promise<void>;
  /** Stops the service and removes its directory. */
  dispose(): Promise<void>;
}

/**
 * A `podman system service` of the test's own on a private socket, so one agent's
 * engine can be taken away without disturbing the shared service other agents use.
 * ensurePodman() must have run first (it points podman at the test containers.conf).
 */
export async function ownPodmanService(): Promise<OwnPodmanService> {
  const dir = await mkdtemp(path.join(tmpdir(), "cloudless-own-podman-"));
  const socketPath = path.join(dir, "podman.sock");
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const alive = () => child !== undefined && child.exitCode === null && child.signalCode === null;

  const kill = async () => {
    if (!child || !alive()) return;
    child.kill("SIGKILL");
    await exited;
  };

  const start = async () => {
    await kill();
    await rm(socketPath, { force: true });
    const logFd = openSync(path.join(dir, "service.log"), "a");
    try {
      child = spawn("podman", ["system", "service", "--time=0", `unix://${socketPath}`], {
        stdio: ["ignore", logFd, logFd],
        env: process.env,
      });
    } finally {
      closeSync(logFd);
    }
    const current = child;
    exited = new Promise((resolve) => current.once("exit", () => resolve()));
    await waitFor(
      `podman system service on ${socketPath}`,
      async () => {
        if (!alive()) {
          const log = await readFile(path.join(dir, "service.log"), "utf8").catch(() => "");
          throw new Error(`podman system service exited: ${log.slice(-500)}`);
        }
        return existsSync(socketPath) && (await pingSocket(socketPath));
      },
      30_000,
      100,
    );
  };

  await start();
  return {
    socketPath,
    get running() {
      return alive();
    },
    start,
    kill,
    dispose: async () => {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

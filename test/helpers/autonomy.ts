/**
 * Agent autonomy through a coordinator outage (NFR-A1, F2), as a reusable scenario: the
 * autonomy test runs it with a short outage, the chaos suite with a long one (≥ 2 min).
 * A client loop samples every replica's HTTP port all along; the accounting says
 * exactly which requests failed, so "no failed request except the replica we killed,
 * between its kill and its return" is an assertion, not an impression.
 */
import { readFileSync } from "node:fs";
import { getWorkloadJson, type ReplicaJson, replicaPid, type WorkloadJson } from "./behaviour.js";
import type { TestCluster } from "./cluster.js";
import { waitFor } from "./processes.js";
import { httpGet } from "./workloads.js";

export interface SampleFailure {
  replicaId: string;
  atMs: number;
  error: string;
}

export interface ReplicaSamples {
  ok: number;
  failed: number;
}

/** What the client loop saw, per replica, with the windows in which failures were expected. */
export interface SamplerResult {
  perReplica: Map<string, ReplicaSamples>;
  /** Failures outside an expected window: each one is a request a client lost. */
  unexpected: SampleFailure[];
  /** Failures inside an expected window (the deliberately killed replica). */
  expected: SampleFailure[];
  rounds: number;
}

/**
 * Requests every replica's port every `intervalMs` (one request per replica per round,
 * rounds never overlap). A replica may be declared down with expectDown() just before it
 * is killed; its failures count as expected from then until it answers a request sent
 * after armRecovery() (called once the old process is seen dead: a request that slipped
 * in between the signal and the death must not count as "back").
 */
export class ReplicaSampler {
  private readonly perReplica = new Map<string, ReplicaSamples>();
  private readonly unexpected: SampleFailure[] = [];
  private readonly expected: SampleFailure[] = [];
  /** Replica id → whether it is inside its expected-down window. */
  private readonly expectedDown = new Set<string>();
  /** Replica id → time of its first successful answer after armRecovery(). */
  private readonly recoveredAtMs = new Map<string, number>();
  /** Replica id → from when a successful answer ends its expected-down window. */
  private readonly recoveryArmedAtMs = new Map<string, number>();
  private rounds = 0;
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(
    private readonly ports: Map<string, number>,
    private readonly intervalMs = 100,
    private readonly requestTimeoutMs = 1_000,
  ) {
    for (const id of ports.keys()) this.perReplica.set(id, { ok: 0, failed: 0 });
    this.loop = this.run();
  }

  /** Failures of this replica are expected from now until it answers again. */
  expectDown(replicaId: string): void {
    this.expectedDown.add(replicaId);
    this.recoveredAtMs.delete(replicaId);
    this.recoveryArmedAtMs.delete(replicaId);
  }

  /** The killed replica's old process is gone: its next answer means it is back. */
  armRecovery(replicaId: string): void {
    this.recoveryArmedAtMs.set(replicaId, Date.now());
  }

  /** When the replica answered again after expectDown(), if it has. */
  recoveredAt(replicaId: string): number | undefined {
    return this.recoveredAtMs.get(replicaId);
  }

  async stop(): Promise<SamplerResult> {
    this.stopped = true;
    await this.loop;
    return {
      perReplica: this.perReplica,
      unexpected: this.unexpected,
      expected: this.expected,
      rounds: this.rounds,
    };
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const roundStartMs = Date.now();
      await Promise.all([...this.ports].map(([id, port]) => this.sample(id, port)));
      this.rounds += 1;
      const waitMs = this.intervalMs - (Date.now() - roundStartMs);
      if (waitMs > 0 && !this.stopped) await new Promise((r) => setTimeout(r, waitMs));
    }
  }

  private async sample(replicaId: string, port: number): Promise<void> {
    const counts = this.perReplica.get(replicaId) as ReplicaSamples;
    // Decided before the request: a request sent before the kill must succeed.
    const downWindow = this.expectedDown.has(replicaId);
    const sentAtMs = Date.now();
    let error: string | undefined;
    try {
      const status = await httpGet(port, this.requestTimeoutMs);
      if (status !== 200) error = `HTTP ${status}`;
    } catch (caught) {
      error =
        caught instanceof Error
          ? `${caught.message} ${String(caught.cause ?? "")}`
          : String(caught);
    }
    if (error === undefined) {
      counts.ok += 1;
      const armedAtMs = this.recoveryArmedAtMs.get(replicaId);
      if (this.expectedDown.has(replicaId) && armedAtMs !== undefined && sentAtMs >= armedAtMs) {
        this.expectedDown.delete(replicaId);
        this.recoveredAtMs.set(replicaId, Date.now());
      }
      return;
    }
    counts.failed += 1;
    const failure = { replicaId, atMs: Date.now(), error: error.trim() };
    if (downWindow || this.expectedDown.has(replicaId)) this.expected.push(failure);
    else this.unexpected.push(failure);
  }
}

export interface ReplicaIdentity {
  id: string;
  port: number;
  pid: number;
  restarts: number;
  startedAt: string | undefined;
}

/** The replicas of a workload with the pid the process driver recorded for each. */
export async function processReplicaIdentities(
  workload: WorkloadJson,
  agentDataDir: string,
): Promise<Map<string, ReplicaIdentity>> {
  const identities = new Map<string, ReplicaIdentity>();
  for (const replica of workload.replicas) {
    identities.set(replica.id, {
      id: replica.id,
      port: replica.hostPorts.http as number,
      pid: await replicaPid(agentDataDir, replica.id),
      restarts: replica.restarts,
      startedAt: replica.startedAt,
    });
  }
  return identities;
}

/** Running (a zombie waiting for its parent to reap it is not). */
export function isAlive(pid: number): boolean {
  if (pid <= 0) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

export function killProcessGroup(pid: number): void {
  for (const target of [-pid, pid]) {
    try {
      process.kill(target, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

export interface OutageOptions {
  cluster: TestCluster;
  namespace: string;
  workload: string;
  /** Data dir of the agent that runs every replica (process driver). */
  agentDataDir: string;
  /** How long every coordinator stays down. */
  outageMs: number;
  /** Kill one replica during the outage and wait for its agent to restart it. */
  killOneReplica: boolean;
  /** Deadline for the workload to report Ready again after the coordinator returns. */
  recoveryTimeoutMs?: number;
  sampleIntervalMs?: number;
}

export interface OutageResult {
  before: Map<string, ReplicaIdentity>;
  after: Map<string, ReplicaIdentity>;
  /** The replica killed during the outage, if any. */
  victim: string | undefined;
  /** Its pid after the agent restarted it (before the coordinator returned). */
  victimRestartedPid: number | undefined;
  samples: SamplerResult;
  /** How long the coordinator was actually down. */
  outageMs: number;
  workloadAfter: WorkloadJson;
}

const allRunningAndReady = (count: number) => (w: WorkloadJson) =>
  w.replicas.length === count &&
  w.status.readyReplicas === count &&
  w.replicas.every((r: ReplicaJson) => r.phase === "Running" && r.ready);

/**
 * kill -9 of the coordinator for `outageMs` while a client loop samples every replica;
 * optionally kills one replica meanwhile and waits (coordinator still down) for its agent
 * to restart it; then restarts the coordinator and waits until the workload is Ready again.
 */
export async function coordinatorOutage(options: OutageOptions): Promise<OutageResult> {
  const { cluster, namespace, workload, agentDataDir } = options;
  const initial = await getWorkloadJson(cluster, namespace, workload);
  const count = initial.replicas.length;
  if (!allRunningAndReady(count)(initial)) {
    throw new Error(`${namespace}/${workload} is not ready before the outage`);
  }
  const before = await processReplicaIdentities(initial, agentDataDir);
  const sampler = new ReplicaSampler(
    new Map([...before.values()].map((r) => [r.id, r.port])),
    options.sampleIntervalMs ?? 100,
  );
  let samples: SamplerResult | undefined;
  try {
    cluster.coordinator.kill("SIGKILL");
    await cluster.coordinator.exited();
    const downAtMs = Date.now();

    let victim: string | undefined;
    let victimRestartedPid: number | undefined;
    if (options.killOneReplica) {
      const chosen = [...before.values()][0] as ReplicaIdentity;
      victim = chosen.id;
      sampler.expectDown(chosen.id);
      killProcessGroup(chosen.pid);
      await waitFor(
        `replica ${chosen.id} (pid ${chosen.pid}) to die`,
        () => !isAlive(chosen.pid),
        5_000,
        20,
      );
      sampler.armRecovery(chosen.id);
      // The agent restarts it on its own: a new pid that is alive and answers.
      victimRestartedPid = await waitFor(
        `the agent to restart replica ${chosen.id} with the coordinator down`,
        async () => {
          const pid = await replicaPid(agentDataDir, chosen.id).catch(() => 0);
          return pid !== chosen.pid && isAlive(pid) && sampler.recoveredAt(chosen.id)
            ? pid
            : undefined;
        },
        Math.max(20_000, options.outageMs),
      );
    }
    // The rest of the outage: sampling goes on while no coordinator exists.
    const remainingMs = downAtMs + options.outageMs - Date.now();
    if (remainingMs > 0) await new Promise((resolve) => setTimeout(resolve, remainingMs));
    if (cluster.coordinator.running) throw new Error("the coordinator came back by itself");

    await cluster.startCoordinator();
    const outageMs = Date.now() - downAtMs;
    const workloadAfter = await waitFor(
      `${namespace}/${workload} to report ${count} replicas Running and ready after the coordinator returned`,
      async () => {
        const current = await getWorkloadJson(cluster, namespace, workload);
        const victimBack =
          victim === undefined ||
          (current.replicas.find((r) => r.id === victim)?.restarts ?? 0) > 0;
        return allRunningAndReady(count)(current) && victimBack ? current : undefined;
      },
      options.recoveryTimeoutMs ?? 60_000,
      250,
    );
    samples = await sampler.stop();
    const after = await processReplicaIdentities(workloadAfter, agentDataDir);
    return { before, after, victim, victimRestartedPid, samples, outageMs, workloadAfter };
  } finally {
    if (!samples) await sampler.stop();
  }
}

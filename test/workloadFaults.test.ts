/**
 * Bad input and faults with real processes (REQ-020, REQ-081, REQ-030, F4): every one ends
 * in a clear status — a field error, a reason on the replica, a pending explanation —
 * never a crash of the coordinator or agent, and never a restart storm.
 */
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  type ReplicaJson,
  sampleWorkloadUntil,
  startAgents,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { ensurePodman, type PodmanAvailability } from "./helpers/podman.js";
import { type ManagedProcess, runCli, TestResources } from "./helpers/processes.js";
import { removeNamespaceContainers, writeSpec } from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;
const node = "fault-node";

/** The back-off a status message announces, in seconds ("back-off 4s …"). */
function backoffSeconds(message: string): number | undefined {
  const match = /back-off (\d+)s/.exec(message);
  return match ? Number(match[1]) : undefined;
}

/** The back-off delays the (first) replica's status announced, in the order seen. */
function distinctBackoffs(samples: WorkloadJson[]): number[] {
  const seen: number[] = [];
  for (const sample of samples) {
    const delay = backoffSeconds(sample.replicas[0]?.message ?? "");
    if (delay !== undefined && seen.at(-1) !== delay) seen.push(delay);
  }
  return seen;
}

/** How often the agent logged a failed start of this replica. */
function failedStarts(agent: ManagedProcess, replicaId: string): number {
  return agent.stderr
    .split("\n")
    .filter((line) => line.includes("replica start failed") && line.includes(replicaId)).length;
}

// Deadlines inside the tests bound every wait; the test timeout only has to exceed them.
describe.skipIf(!isRoot)(
  "bad input and faults with a real coordinator, agent and podman",
  { timeout: 180_000 },
  () => {
    let podmanService: PodmanAvailability;
    let resources: TestResources;
    let cluster: TestCluster;
    let agent: ManagedProcess;
    let namespace: string;
    let specDir: string;

    beforeAll(async () => {
      podmanService = await ensurePodman();
      if (!podmanService.available) throw new Error(`podman unavailable: ${podmanService.reason}`);
      resources = new TestResources();
      cluster = await TestCluster.start(resources);
      // Container driver only: process workloads have nowhere to go.
      const agents = await startAgents(cluster, [
        { name: node, drivers: ["container"], socket: podmanService.socketPath },
      ]);
      agent = agents.get(node) as ManagedProcess;
    }, 300_000);

    afterAll(async () => {
      for (const running of cluster?.agents.values() ?? []) await running.stop(10_000);
      await resources?.cleanup();
      if (podmanService?.available) await podmanService.stop();
    }, 60_000);

    beforeEach(async () => {
      namespace = `f-${randomBytes(3).toString("hex")}`;
      specDir = await resources.tempDir("cloudless-specs-");
    });

    afterEach(async () => {
      const left = await cluster.cliJson<WorkloadJson[]>(["workload", "list", "-n", namespace]);
      for (const workload of left) {
        await cluster.cli(["workload", "delete", workload.name, "-n", namespace]);
      }
      await removeNamespaceContainers(namespace);
    }, 60_000);

    function image(): string {
      if (!podmanService.available) throw new Error("podman unavailable");
      return podmanService.image;
    }

    async function apply(name: string, spec: Record<string, unknown>, into = cluster) {
      const file = await writeSpec(specDir, name, workloadDoc(name, namespace, spec));
      const applied = await into.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
      return applied;
    }

    /** Neither the coordinator nor the agent fell over. */
    async function expectAlive(): Promise<void> {
      expect(cluster.coordinator.running, cluster.coordinator.stderr.slice(-2000)).toBe(true);
      expect(agent.running, agent.stderr.slice(-2000)).toBe(true);
      expect((await cluster.node(node))?.status).toBe("Ready");
    }

    it("REQ-081 REQ-020 validate prints every error with its field path and exits 2; apply of an invalid file prints them, fails and creates nothing", async () => {
      const bad = path.join(specDir, "bad.yaml");
      await writeFile(
        bad,
        [
          "apiVersion: cloudless/v1",
          "kind: Workload",
          "metadata:",
          "  name: Bad_Name",
          `  namespace: ${namespace}`,
          "spec:",
          '  image: "has space"',
          "  replica: 3",
          "  resources:",
          "    cpuMillicores: 0",
          "    memoryMiB: -1",
          "  ports:",
          "    - name: http",
          "      containerPort: 70000",
          "  restartPolicy: Sometimes",
          "  readinessProbe:",
          "    http: {path: /, port: web}",
          "",
        ].join("\n"),
      );
      const expected = [
        "metadata.name: must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters",
        'spec: unknown field "replica"; did you mean "replicas"?',
        "spec.image: must be an image reference such as registry/name:tag, without spaces",
        "spec.ports[0].containerPort: expected a port number from 1 to 65535",
        'spec.readinessProbe.http.port: no port named "web" in spec.ports (known: "http")',
        "spec.resources.cpuMillicores: expected a positive integer",
        "spec.resources.memoryMiB: expected a positive integer",
        "spec.restartPolicy: expected one of Always, OnFailure, Never",
      ];

      // validate needs no cluster at all.
      const validated = await runCli(["workload", "validate", "-f", bad]);
      expect(validated.code).toBe(2);
      expect(validated.stdout).toBe("");
      expect(validated.stderr.split("\n").filter(Boolean)).toEqual([
        ...expected,
        `error: ${bad} is invalid (8 errors)`,
      ]);

      const applied = await cluster.cli(["workload", "apply", "-f", bad]);
      expect(applied.code).toBe(2);
      expect(applied.stdout).toBe("");
      const lines = applied.stderr.split("\n").filter(Boolean);
      expect(lines.slice(0, expected.length)).toEqual(expected);
      expect(lines.at(-1)).toBe(`error: ${bad} is invalid; nothing was applied`);
      expect(await cluster.cliJson<WorkloadJson[]>(["workload", "list", "-n", namespace])).toEqual(
        [],
      );
      // A valid one still goes through: the cluster is unharmed.
      const fixedFile = await writeSpec(
        specDir,
        "fixed",
        workloadDoc("fixed", namespace, { image: image(), command: ["/bin/sleep", "600"] }),
      );
      const dryRun = await cluster.cli(["workload", "apply", "-f", fixedFile, "--dry-run"]);
      expect(dryRun.code, dryRun.stderr).toBe(0);
      expect(dryRun.stdout.trim()).toBe("workload/fixed created (dry run)");
      expect(await cluster.cliJson<WorkloadJson[]>(["workload", "list", "-n", namespace])).toEqual(
        [],
      );
      await expectAlive();
    });

    it("F4 an image that does not exist: the replica reports ImageNotFound with a clear message, and start attempts back off", async () => {
      await apply("ghost", { image: "localhost/nope:1", command: ["/bin/sleep", "600"] });
      const failing = await waitForWorkload(cluster, namespace, "ghost", "ImageNotFound", (w) =>
        w.replicas.some((r) => r.reason === "ImageNotFound"),
      );
      const replica = failing.replicas[0] as ReplicaJson;
      expect(replica.node).toBe(node);
      expect(replica.phase).toBe("Pending");
      expect(replica.ready).toBe(false);
      expect(replica.message).toMatch(
        /^image "localhost\/nope:1" is not present on this node and could not be pulled: .+ \(back-off \d+s\)$/,
      );
      expect(failing.status.phase).toBe("Pending");

      // Attempts back off: the announced delay doubles and the agent tries once per delay.
      const samples = await sampleWorkloadUntil(
        cluster,
        namespace,
        "ghost",
        "a back-off of 8 s or more",
        (w) => (backoffSeconds(w.replicas[0]?.message ?? "") ?? 0) >= 8,
        90_000,
      );
      for (const sample of samples) {
        expect(sample.replicas).toHaveLength(1);
        const current = sample.replicas[0] as ReplicaJson;
        // Between attempts Pending with the reason; during one (a pull takes a while) Starting.
        expect(current).toMatchObject({ id: replica.id, ready: false, restarts: 0 });
        expect(["Pending", "Starting"]).toContain(current.phase);
        if (current.phase === "Pending") expect(current.reason).toBe("ImageNotFound");
        expect(sample.status.phase).toBe("Pending");
      }
      const seen = distinctBackoffs(samples);
      expect(seen).toEqual([...seen].sort((a, b) => a - b));
      expect(seen.at(-1)).toBeGreaterThanOrEqual(8);
      const backedOff = samples.at(-1) as WorkloadJson;
      const attempts = failedStarts(agent, replica.id);
      console.log(
        `F4: back-off seen ${seen.join(", ")} s; ${attempts} start attempts logged; status "${backedOff.replicas[0]?.message}"`,
      );
      // 1 s, 2 s, 4 s, 8 s: four failures (five if one more happened meanwhile), not a storm.
      expect(attempts).toBeGreaterThanOrEqual(3);
      expect(attempts).toBeLessThanOrEqual(5);
      await expectAlive();
    });

    it("REQ-021 REQ-030 a workload bigger than any node stays Pending; explain and describe name Insufficient memory with per-filter counts", async () => {
      await apply("huge", {
        image: image(),
        command: ["/bin/sleep", "600"],
        resources: { cpuMillicores: 100, memoryMiB: 10_000_000 },
      });
      const pending = await waitForWorkload(cluster, namespace, "huge", "unschedulable", (w) =>
        w.replicas.some((r) => r.message.includes("Insufficient memory")),
      );
      expect(pending.status.phase).toBe("Pending");
      expect(pending.status.message).toContain("Insufficient memory");
      expect(pending.replicas[0]).toMatchObject({
        node: "",
        phase: "Pending",
        reason: "Unschedulable",
      });

      const explained = await cluster.cli(["workload", "explain", "huge", "-n", namespace]);
      expect(explained.code, explained.stderr).toBe(0);
      expect(explained.stdout).toMatch(/1 replica of huge pending: .*Insufficient memory/);
      expect(explained.stdout).toMatch(/FILTER\s+NODES REJECTED/);
      expect(explained.stdout).toMatch(/\n\S+\s+1\n/);
      const asJson = await cluster.cliJson<
        {
          totalNodes: number;
          feasibleNodes: number;
          rejections: Record<string, number>;
          message: string;
        }[]
      >(["workload", "explain", "huge", "-n", namespace]);
      expect(asJson).toHaveLength(1);
      expect(asJson[0]).toMatchObject({ totalNodes: 1, feasibleNodes: 0 });
      expect(Object.values(asJson[0]?.rejections ?? {})).toEqual([1]);
      expect(asJson[0]?.message).toContain("Insufficient memory");

      const described = await cluster.cli(["workload", "describe", "huge", "-n", namespace]);
      expect(described.code, described.stderr).toBe(0);
      expect(described.stdout).toMatch(/Status:\s+Pending/);
      expect(described.stdout).toMatch(
        /Scheduling:\s+1 replica of huge pending: .*Insufficient memory/,
      );
      expect(described.stdout).toContain("ReplicaUnschedulable");
      await expectAlive();
    });

    it("REQ-020 a process workload when no node offers the process driver stays Pending with a reason naming the driver", async () => {
      await apply("proc", { command: ["/bin/sleep", "600"] });
      const pending = await waitForWorkload(cluster, namespace, "proc", "unschedulable", (w) =>
        w.replicas.some((r) => r.reason === "Unschedulable"),
      );
      expect(pending.status.phase).toBe("Pending");
      expect(pending.replicas[0]?.message).toMatch(/driver "process" not offered/);
      const explained = await cluster.cli(["workload", "explain", "proc", "-n", namespace]);
      expect(explained.code, explained.stderr).toBe(0);
      expect(explained.stdout).toMatch(/driver "process" not offered/);
      await expectAlive();
    });

    it("REQ-020 a replica that exits at once with restartPolicy Always goes to CrashLoopBackOff with the exit code, and its restarts back off", async () => {
      await apply("crasher", {
        image: image(),
        command: ["/bin/sh", "-c", "echo dying; exit 3"],
        restartPolicy: "Always",
      });
      const crashing = await waitForWorkload(
        cluster,
        namespace,
        "crasher",
        "CrashLoopBackOff",
        (w) => w.replicas.some((r) => r.phase === "CrashLoopBackOff"),
      );
      const replica = crashing.replicas[0] as ReplicaJson;
      expect(replica.reason).toBe("CrashLoopBackOff");
      expect(replica.message).toMatch(/^back-off \d+s restarting failed replica \(exit code 3\)$/);
      expect(replica.exitCode).toBe(3);
      expect(replica.ready).toBe(false);

      const samples = await sampleWorkloadUntil(
        cluster,
        namespace,
        "crasher",
        "a back-off of 8 s or more",
        (w) =>
          w.replicas[0]?.phase === "CrashLoopBackOff" &&
          (backoffSeconds(w.replicas[0]?.message ?? "") ?? 0) >= 8,
        90_000,
      );
      let lastRestarts = 0;
      for (const sample of samples) {
        expect(sample.replicas).toHaveLength(1);
        const current = sample.replicas[0] as ReplicaJson;
        expect(current.id).toBe(replica.id);
        // It starts, runs for an instant, exits and waits: never anything else.
        expect(["CrashLoopBackOff", "Starting", "Running"]).toContain(current.phase);
        if (current.phase === "CrashLoopBackOff") {
          expect(current.message).toMatch(
            /^back-off \d+s restarting failed replica \(exit code 3\)$/,
          );
        }
        expect(current.restarts).toBeGreaterThanOrEqual(lastRestarts);
        lastRestarts = current.restarts;
      }
      const seen = distinctBackoffs(samples);
      const slowed = samples.at(-1) as WorkloadJson;
      const restarts = slowed.replicas[0]?.restarts ?? 0;
      console.log(`crash loop: back-off seen ${seen.join(", ")} s after ${restarts} restarts`);
      expect(seen).toEqual([...seen].sort((a, b) => a - b));
      // Back-off 8 s follows the 4th failure: 3 restarts (4 if the next one was quick).
      expect(restarts).toBeGreaterThanOrEqual(2);
      expect(restarts).toBeLessThanOrEqual(4);
      const logs = await cluster.cli(["workload", "logs", "crasher", "-n", namespace]);
      if (logs.code === 0) expect(logs.stdout).toContain("dying");
      await expectAlive();
    });
  },
);

/**
 * The process driver with real processes: cgroup limits (REQ-011), the private working
 * directory (REQ-052), dynamic host ports for several replicas on one node, and logs and
 * exec through the coordinator (REQ-080), and a process replica riding out the loss of
 * the node's container engine (F4).
 */
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, readlink, stat, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  getWorkloadJson,
  ownPodmanService,
  type ReplicaJson,
  removeProcessReplicas,
  replicaCgroup,
  replicaDir,
  replicaPid,
  startAgents,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { ensurePodman } from "./helpers/podman.js";
import { ManagedProcess, TestResources, waitFor } from "./helpers/processes.js";
import { findProcesses, readProc } from "./helpers/system.js";
import { rpcError } from "./helpers/tlsProbe.js";
import {
  adminClients,
  getWorkload,
  httpGet,
  removeNamespaceContainers,
  writeSpec,
} from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;

/** Whether `pid` has `ancestor` among its parents (a sandboxed workload sits below bwrap). */
async function descendsFrom(pid: number, ancestor: number): Promise<boolean> {
  let current = (await readProc(pid))?.ppid;
  for (let depth = 0; depth < 16 && current !== undefined && current > 1; depth += 1) {
    if (current === ancestor) return true;
    current = (await readProc(current))?.ppid;
  }
  return false;
}

/** The workload's own argv in a sandboxed replica's command line (after bwrap's "--"). */
function workloadArgv(argv: string[] | undefined): string[] | undefined {
  if (!argv) return undefined;
  const bwrap = argv.findIndex((part) => part.endsWith("/bwrap"));
  const separator = argv.indexOf("--", bwrap + 1);
  return bwrap >= 0 && separator > bwrap ? argv.slice(separator + 1) : argv;
}
const node = "proc-node";

// Deadlines inside the tests bound every wait; the test timeout only has to exceed them.
describe.skipIf(!isRoot)(
  "process-driver workloads with real processes and cgroups",
  { timeout: 180_000 },
  () => {
    let resources: TestResources;
    let cluster: TestCluster;
    let agentDir: string;
    let namespace: string;
    let specDir: string;

    beforeAll(async () => {
      resources = new TestResources();
      cluster = await TestCluster.start(resources);
      await startAgents(cluster, [{ name: node, drivers: ["process"] }]);
      agentDir = await cluster.agentDir(node);
    }, 60_000);

    afterAll(async () => {
      // A graceful stop takes the replicas down with the agent; whatever survives a
      // failed test is killed by its cgroup.
      for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
      if (agentDir) await removeProcessReplicas([agentDir]);
      await resources?.cleanup();
    }, 60_000);

    beforeEach(async () => {
      namespace = `p-${randomBytes(3).toString("hex")}`;
      specDir = await resources.tempDir("cloudless-specs-");
    });

    afterEach(async () => {
      const left = await cluster.cliJson<WorkloadJson[]>(["workload", "list", "-n", namespace]);
      for (const workload of left) {
        await cluster.cli(["workload", "delete", workload.name, "-n", namespace]);
      }
    });

    async function apply(
      name: string,
      spec: Record<string, unknown>,
      into: TestCluster = cluster,
    ): Promise<string> {
      const file = await writeSpec(specDir, name, workloadDoc(name, namespace, spec));
      const applied = await into.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
      return applied.stdout;
    }

    function allReady(count: number) {
      return (w: WorkloadJson) =>
        w.replicas.length === count && w.replicas.every((r) => r.phase === "Running" && r.ready);
    }

    it("REQ-011 REQ-052 a process replica runs inside cgroups with its cpu and memory limits, in a private 0700 work dir that is removed with the workload", async () => {
      expect(
        await apply("limits", {
          command: ["/bin/sh", "-c", "echo started; sleep 600"],
          resources: { cpuMillicores: 250, memoryMiB: 48 },
        }),
      ).toContain("workload/limits created");
      const workload = await waitForWorkload(
        cluster,
        namespace,
        "limits",
        "1 replica running",
        allReady(1),
      );
      const replica = workload.replicas[0] as ReplicaJson;
      expect(replica.node).toBe(node);
      expect(replica.driver).toBe("process");

      // REQ-011: the limits are the kernel's, read from the cgroup filesystem.
      const cgroup = await replicaCgroup(agentDir, replica.id);
      expect(cgroup, "this host offers no usable cgroup hierarchy").toBeDefined();
      if (!cgroup) return;
      const read = (dir: string, file: string) => readFile(path.join(dir, file), "utf8");
      if (cgroup.version === 1) {
        expect((await read(cgroup.cpuDir, "cpu.cfs_quota_us")).trim()).toBe("25000");
        expect((await read(cgroup.cpuDir, "cpu.cfs_period_us")).trim()).toBe("100000");
        expect((await read(cgroup.memoryDir, "memory.limit_in_bytes")).trim()).toBe(
          String(48 * 1024 * 1024),
        );
      } else {
        expect((await read(cgroup.cpuDir, "cpu.max")).trim()).toBe("25000 100000");
        expect((await read(cgroup.memoryDir, "memory.max")).trim()).toBe(String(48 * 1024 * 1024));
      }
      // The replica's process (its sandbox, REQ-062), and what the workload forked (the
      // sleep, below bwrap's init), are members of every hierarchy.
      const pid = await replicaPid(agentDir, replica.id);
      const children = await findProcesses((argv) => argv[0] === "sleep" && argv[1] === "600");
      const sleeper = (
        await Promise.all(
          children.map(async (c) =>
            (await descendsFrom(c.pid, pid)) ? readProc(c.pid) : undefined,
          ),
        )
      ).find((info) => info !== undefined);
      expect(sleeper, "the workload's sleep child").toBeDefined();
      // It runs as its workload's own user from the dynamic range, not root.
      expect((await stat(`/proc/${sleeper?.pid}`)).uid).toBeGreaterThanOrEqual(61184);
      for (const procsFile of cgroup.procsFiles) {
        const members = (await readFile(procsFile, "utf8")).split("\n").filter(Boolean).map(Number);
        expect(members, procsFile).toContain(pid);
        expect(members, procsFile).toContain(sleeper?.pid);
      }

      // REQ-052: a private working directory, the process's cwd, only for the workload's
      // user (REQ-062); the replica dir above it can only be passed through.
      const dir = replicaDir(agentDir, replica.id);
      const workDir = path.join(dir, "work");
      expect((await stat(workDir)).mode & 0o777).toBe(0o700);
      expect((await stat(workDir)).uid).toBe((await stat(`/proc/${sleeper?.pid}`)).uid);
      expect((await stat(dir)).mode & 0o777).toBe(0o711);
      expect(await readlink(`/proc/${pid}/cwd`)).toBe(workDir);
      expect(await readFile(path.join(dir, "stdout.log"), "utf8")).toContain("started");

      const deleted = await cluster.cli(["workload", "delete", "limits", "-n", namespace]);
      expect(deleted.code, deleted.stderr).toBe(0);
      await waitFor(
        "the replica's process, work dir and cgroups to be gone",
        async () =>
          !existsSync(dir) &&
          !existsSync(cgroup.cpuDir) &&
          !existsSync(cgroup.memoryDir) &&
          (await readProc(pid)) === undefined,
        30_000,
        100,
      );
      const gone = await cluster.cli(["workload", "get", "limits", "-n", namespace]);
      expect(gone.code).toBe(3);
      expect(gone.stderr).toMatch(/workload "limits" not found/);
    });

    it("REQ-011 two replicas of a process workload with a port run on one node, each on its own host port ($PORT), and both answer", async () => {
      const server =
        "require('http').createServer((q,s)=>s.end('ok '+process.env.PORT)).listen(process.env.PORT)";
      await apply("pair", {
        command: [process.execPath, "-e", server],
        ports: [{ name: "http", containerPort: 18_080 }],
        resources: { cpuMillicores: 100, memoryMiB: 96 },
        replicas: 2,
        readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
      });
      const workload = await waitForWorkload(
        cluster,
        namespace,
        "pair",
        "2 replicas ready",
        allReady(2),
      );
      const ports = workload.replicas.map((r) => r.hostPorts.http as number);
      expect(workload.replicas.every((r) => r.node === node)).toBe(true);
      expect(new Set(ports).size).toBe(2);
      for (const port of ports) {
        const response = await fetch(`http://127.0.0.1:${port}/`);
        expect(await response.text()).toBe(`ok ${port}`);
      }
      // Still the same two, never restarted (a port clash would crash one of them).
      const after = await getWorkloadJson(cluster, namespace, "pair");
      expect(
        after.replicas.map((r) => [r.id, r.hostPorts.http, r.restarts, r.phase]).sort(),
      ).toEqual(workload.replicas.map((r) => [r.id, r.hostPorts.http, 0, "Running"]).sort());
    });

    it("REQ-080 workload logs prints a replica's output, -f streams a line printed later, exec runs commands with their exit code, --replica selects a replica", async () => {
      await apply("talker", {
        command: [
          "/bin/sh",
          "-c",
          "echo hello-from $PWD; echo err-line >&2; while [ ! -f go ]; do sleep 0.1; done; echo later-line; exec sleep 600",
        ],
        replicas: 2,
      });
      const workload = await waitForWorkload(
        cluster,
        namespace,
        "talker",
        "2 replicas running",
        allReady(2),
      );
      const [first, second] = [...workload.replicas].sort((a, b) => a.id.localeCompare(b.id)) as [
        ReplicaJson,
        ReplicaJson,
      ];
      const workOf = (replica: ReplicaJson) => path.join(replicaDir(agentDir, replica.id), "work");

      // Logs of a chosen replica: its stdout on stdout, its stderr on stderr.
      const logs = await waitFor(
        "the replica's first lines in its logs",
        async () => {
          const result = await cluster.cli([
            "workload",
            "logs",
            "talker",
            "-n",
            namespace,
            "--replica",
            second.id,
          ]);
          return result.code === 0 && result.stdout.includes("hello-from") ? result : undefined;
        },
        20_000,
        200,
      );
      expect(logs.stdout).toContain(`hello-from ${workOf(second)}`);
      expect(logs.stdout).not.toContain(first.id);
      expect(logs.stderr).toContain("err-line");
      // Without --replica: one of them (the first running one).
      const anyLogs = await cluster.cli(["workload", "logs", "talker", "-n", namespace]);
      expect(anyLogs.code, anyLogs.stderr).toBe(0);
      expect(anyLogs.stdout).toContain(`hello-from ${workOf(first)}`);

      // -f keeps streaming: a line the replica prints later arrives.
      const follower = resources.track(
        new ManagedProcess(
          ["workload", "logs", "talker", "-n", namespace, "--replica", first.id, "-f"],
          { CLOUDLESS_CONFIG: cluster.configPath },
        ),
      );
      await waitFor(
        "logs -f to print the first line",
        () => follower.stdout.includes("hello-from"),
        20_000,
      );
      expect(follower.stdout).not.toContain("later-line");
      await writeFile(path.join(workOf(first), "go"), "");
      await waitFor(
        "logs -f to stream the later line",
        () => follower.stdout.includes("later-line"),
        20_000,
      );
      expect(follower.running).toBe(true);
      await follower.stop();

      // exec: output and exit code of the command.
      const hello = await cluster.cli([
        "workload",
        "exec",
        "talker",
        "-n",
        namespace,
        "--",
        "/bin/echo",
        "hello",
      ]);
      expect(hello.code, hello.stderr).toBe(0);
      expect(hello.stdout).toBe("hello\n");
      const failing = await cluster.cli([
        "workload",
        "exec",
        "talker",
        "-n",
        namespace,
        "--",
        "/bin/sh",
        "-c",
        "echo to-stderr >&2; exit 7",
      ]);
      expect(failing.code).toBe(7);
      expect(failing.stderr).toContain("to-stderr");
      // --replica: the command runs in that replica (its private work dir is the cwd).
      for (const replica of [first, second]) {
        const pwd = await cluster.cli([
          "workload",
          "exec",
          "talker",
          "-n",
          namespace,
          "--replica",
          replica.id,
          "--",
          "/bin/pwd",
        ]);
        expect(pwd.code, pwd.stderr).toBe(0);
        expect(pwd.stdout.trim()).toBe(workOf(replica));
      }
      // An unknown replica is a clear error, for exec and logs alike.
      for (const verb of [
        ["exec", "talker", "-n", namespace, "--replica", "nope", "--", "/bin/true"],
        ["logs", "talker", "-n", namespace, "--replica", "nope"],
      ]) {
        const unknown = await cluster.cli(["workload", ...verb]);
        expect(unknown.code, unknown.stderr).toBe(3);
        expect(unknown.stdout).toBe("");
        expect(unknown.stderr.trim()).toMatch(
          /^error: replica "nope" of workload "talker" not found[^\n]*$/,
        );
      }
      // The workload is untouched by all this.
      const after = await getWorkloadJson(cluster, namespace, "talker");
      expect(after.replicas.map((r) => [r.id, r.restarts]).sort()).toEqual(
        [first, second].map((r) => [r.id, 0]).sort(),
      );
    });

    it("REQ-080 hardening: an exec that outlives its timeout ends with DeadlineExceeded (CLI exit code 124) and its command is killed", async () => {
      await apply("sleeper", { command: ["/bin/sh", "-c", "exec sleep 600"] });
      await waitForWorkload(cluster, namespace, "sleeper", "1 replica ready", allReady(1));
      // A marker no other process has, to find the command the exec started.
      const marker = `${40 + Math.floor(Math.random() * 1000)}.5`;
      const slow = ["/bin/sh", "-c", `echo started; exec sleep ${marker}`];

      const viaCli = await cluster.cli([
        "workload",
        "exec",
        "sleeper",
        "-n",
        namespace,
        "--timeout",
        "1s",
        "--",
        ...slow,
      ]);
      expect(viaCli.code, viaCli.stderr).toBe(124);
      expect(viaCli.stderr).toMatch(
        /^error: exec of "[^\n]*" in replica \S+ did not finish within 1000 ms\n$/,
      );

      const clients = await adminClients(cluster.configPath);
      const viaApi = await rpcError(
        clients.workloads.execWorkload({
          name: "sleeper",
          namespace,
          command: slow,
          timeoutSeconds: 1,
        }),
      );
      expect(viaApi.codeName, viaApi.message).toBe("DeadlineExceeded");
      expect(viaApi.message).toMatch(/did not finish within 1000 ms/);

      // Neither command is left running in the replica.
      await waitFor(
        "the timed-out exec commands to be killed",
        async () =>
          (await findProcesses((argv) => argv.join(" ") === `sleep ${marker}`)).length === 0,
        10_000,
      );
      // The replica itself is untouched.
      const after = await getWorkloadJson(cluster, namespace, "sleeper");
      expect(after.replicas.map((r) => [r.phase, r.restarts])).toEqual([["Running", 0]]);
    });

    it("F4 the container engine going away: the agent keeps heartbeating, container replicas report DriverUnavailable, a process replica keeps running untouched", async () => {
      // ensurePodman builds the test image and points podman at the test containers.conf;
      // its shared engine is not needed: this node gets an engine the test can kill.
      const shared = await ensurePodman();
      if (!shared.available) throw new Error(`podman unavailable: ${shared.reason}`);
      await shared.stop();
      const image = shared.image;
      // A cluster of its own: one node with both drivers.
      const engine = await ownPodmanService();
      let agentDir: string | undefined;
      const engineNode = "engine-node";
      let own: TestCluster | undefined;
      try {
        own = await TestCluster.start(resources);
        const agents = await startAgents(own, [
          { name: engineNode, drivers: ["container", "process"], socket: engine.socketPath },
        ]);
        const engineAgent = agents.get(engineNode) as ManagedProcess;
        agentDir = await own.agentDir(engineNode);
        await apply(
          "web",
          {
            image,
            command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
            ports: [{ name: "http", containerPort: 8080 }],
            readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
          },
          own,
        );
        await apply("worker", { command: ["/bin/sh", "-c", "exec sleep 600"] }, own);
        const readyOne = (w: WorkloadJson) =>
          w.replicas.length === 1 && w.replicas.every((r) => r.ready);
        const web = await waitForWorkload(own, namespace, "web", "ready", readyOne);
        const worker = await waitForWorkload(own, namespace, "worker", "ready", readyOne);
        const workerReplica = worker.replicas[0] as ReplicaJson;
        const workerPid = await replicaPid(agentDir, workerReplica.id);
        const dir = agentDir;

        await engine.kill();
        const unavailable = await waitForWorkload(own, namespace, "web", "DriverUnavailable", (w) =>
          w.replicas.some((r) => r.reason === "DriverUnavailable"),
        );
        expect(unavailable.replicas[0]?.id).toBe(web.replicas[0]?.id);
        expect(unavailable.replicas[0]?.message).toMatch(/^container driver unavailable: /);

        // Sample through three more heartbeats: the node stays Ready, the process replica
        // is the same process, never restarted, and the container one stays flagged.
        const clients = await adminClients(own.configPath);
        const sampleOnce = async () => {
          const nodeState = (await clients.nodes.getNode({ name: engineNode })).node;
          const workerNow = await getWorkload(clients, namespace, "worker");
          const webNow = await getWorkload(clients, namespace, "web");
          return {
            agentRunning: engineAgent.running,
            nodeStatus: nodeState?.status,
            heartbeatMs: nodeState?.lastHeartbeatAt ? timestampMs(nodeState.lastHeartbeatAt) : 0,
            worker: workerNow.replicas.map((r) => ({
              id: r.id,
              phase: r.phase,
              ready: r.ready,
              restarts: r.restarts,
              reason: r.reason,
            })),
            workerPid: await replicaPid(dir, workerReplica.id),
            workerArgv: workloadArgv((await readProc(workerPid))?.argv),
            webReason: webNow.replicas[0]?.reason,
          };
        };
        const samples = [await sampleOnce()];
        const firstBeatMs = samples[0]?.heartbeatMs ?? 0;
        await waitFor(
          "three more heartbeats during the engine outage",
          async () => {
            const sample = await sampleOnce();
            samples.push(sample);
            return (
              new Set(samples.map((s) => s.heartbeatMs).filter((ms) => ms > firstBeatMs)).size >= 3
            );
          },
          30_000,
          200,
        );
        for (const sample of samples) {
          expect(sample).toEqual({
            agentRunning: true,
            nodeStatus: "Ready",
            heartbeatMs: expect.any(Number),
            worker: [
              { id: workerReplica.id, phase: "Running", ready: true, restarts: 0, reason: "" },
            ],
            workerPid,
            // The replica's process is its sandbox (bwrap, REQ-062), whose command line
            // names the workload as it was given.
            workerArgv: ["/bin/sh", "-c", "exec sleep 600"],
            webReason: "DriverUnavailable",
          });
        }
        expect((await getWorkloadJson(own, namespace, "worker")).replicas[0]?.startedAt).toBe(
          workerReplica.startedAt,
        );
        expect(own.coordinator.running).toBe(true);

        // The engine returns: the container replica is reported healthy again, and serves.
        await engine.start();
        const back = await waitForWorkload(
          own,
          namespace,
          "web",
          "healthy again",
          (w) =>
            w.replicas.length === 1 &&
            w.replicas.every((r) => r.reason !== "DriverUnavailable" && r.ready),
        );
        expect(await httpGet(back.replicas[0]?.hostPorts.http as number)).toBe(200);
      } finally {
        for (const running of own?.agents.values() ?? []) await running.stop(10_000);
        await engine.dispose();
        await removeNamespaceContainers(namespace);
        if (agentDir) await removeProcessReplicas([agentDir]);
      }
    });
  },
);

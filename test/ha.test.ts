/**
 * Replicated coordinators on a real three-member etcd cluster (issue 4, NFR-R1, F2): one
 * CA shared through the store, exactly one leader, and a new leader within the lease TTL
 * plus one heartbeat after the leader is killed, with scheduling resumed.
 */
import { readFile, stat, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  removeProcessReplicas,
  startAgents,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { type EtcdCluster, etcdUnavailableReason, startEtcd } from "./helpers/etcd.js";
import { ManagedProcess, runCli, TestResources, waitFor } from "./helpers/processes.js";
import { freePort } from "./helpers/prometheus.js";
import { writeSpec } from "./helpers/workloads.js";

const etcdMissing = await etcdUnavailableReason();
const isRoot = process.getuid?.() === 0;
const leaseTtlMs = 3_000;
const heartbeatMs = 1_000;

interface RunningCoordinator {
  name: string;
  dataDir: string;
  port: number;
  url: string;
  process: ManagedProcess;
}

describe.skipIf(etcdMissing !== undefined || !isRoot)(
  "replicated coordinators on etcd",
  { timeout: 240_000 },
  () => {
    let resources: TestResources;
    let etcd: EtcdCluster;
    let storeUrl: string;
    let secretFile: string;
    const coordinators: RunningCoordinator[] = [];
    const agentDirs: string[] = [];

    function coordinatorArgs(c: { dataDir: string; port: number }, extra: string[] = []) {
      return [
        "coordinator",
        "--data-dir",
        c.dataDir,
        "--host",
        "127.0.0.1",
        "--port",
        String(c.port),
        "--store",
        storeUrl,
        "--leader-lease",
        `${leaseTtlMs}ms`,
        "--heartbeat-interval",
        `${heartbeatMs}ms`,
        "--log-level",
        "info",
        ...extra,
      ];
    }

    async function startCoordinator(c: RunningCoordinator, extra: string[] = []): Promise<void> {
      c.process = resources.track(new ManagedProcess(coordinatorArgs(c, extra)));
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

    async function newCoordinator(name: string, extra: string[] = []): Promise<RunningCoordinator> {
      const port = await freePort();
      const c: RunningCoordinator = {
        name,
        dataDir: await resources.tempDir(`cloudless-ha-${name}-`),
        port,
        url: `https://127.0.0.1:${port}`,
        process: undefined as unknown as ManagedProcess,
      };
      await startCoordinator(c, extra);
      coordinators.push(c);
      return c;
    }

    const leads = (c: RunningCoordinator) =>
      c.process.running && c.process.stderr.includes("this coordinator is now the leader");
    const demotedOrDead = (c: RunningCoordinator) => !c.process.running;

    function leaders(): RunningCoordinator[] {
      return coordinators.filter((c) => leads(c) && !demotedOrDead(c));
    }

    /** A client view of the cluster through the newest coordinator's admin.conf (it lists all). */
    function clientCluster(): TestCluster {
      const last = coordinators[coordinators.length - 1] as RunningCoordinator;
      const first = coordinators[0] as RunningCoordinator;
      const cluster = new TestCluster(resources, last.dataDir);
      cluster.url = first.url;
      return cluster;
    }

    beforeAll(async () => {
      resources = new TestResources();
      etcd = await startEtcd({ members: 3 });
      storeUrl = `etcd://${etcd.endpoints.join(",")}/cloudless-ha-${process.pid}`;
      const first = await newCoordinator("c1");
      secretFile = path.join(first.dataDir, "cluster-secret");
      await newCoordinator("c2", ["--cluster-secret-file", secretFile]);
      await newCoordinator("c3", ["--cluster-secret-file", secretFile]);
    }, 120_000);

    afterAll(async () => {
      await resources?.cleanup();
      await removeProcessReplicas(agentDirs);
      await etcd?.stop();
    });

    it("NFR-R1 REQ-012 three coordinators on a three-member etcd share one CA, list each other, and elect exactly one leader", async () => {
      const cas = await Promise.all(
        coordinators.map((c) => readFile(path.join(c.dataDir, "pki", "ca.crt"), "utf8")),
      );
      expect(new Set(cas).size).toBe(1);
      for (const c of coordinators) {
        expect((await stat(path.join(c.dataDir, "pki", "ca.key"))).mode & 0o777).toBe(0o600);
      }
      expect((await stat(secretFile)).mode & 0o777).toBe(0o600);
      await waitFor(
        "exactly one leader",
        () => (leaders().length === 1 ? true : undefined),
        15_000,
        50,
      );

      // `cluster members` (any coordinator answers) agrees with the coordinators' own logs.
      const members = await clientCluster().cliJson<
        { id: string; url: string; leader?: boolean; alive?: boolean }[]
      >(["cluster", "members"]);
      expect(members.map((m) => m.url).sort()).toEqual(coordinators.map((c) => c.url).sort());
      expect(members.every((m) => m.alive === true)).toBe(true);
      expect(members.filter((m) => m.leader).map((m) => m.url)).toEqual(
        leaders().map((c) => c.url),
      );

      // The newest admin.conf names every coordinator; each one answers it.
      const config = await readFile(
        path.join((coordinators[2] as RunningCoordinator).dataDir, "admin.conf"),
        "utf8",
      );
      for (const c of coordinators) expect(config).toContain(c.url);
      for (const c of coordinators) {
        const single = config.replace(/^servers:\n(\s+- .*\n)+/m, `servers:\n  - ${c.url}\n`);
        const file = path.join(await resources.tempDir("cloudless-ha-conf-"), "admin.conf");
        await writeFile(file, single, { mode: 0o600 });
        const listed = await runCli(["token", "list", "-o", "json"], {
          env: { CLOUDLESS_CONFIG: file },
        });
        expect(listed.code, `${c.name}: ${listed.stderr}`).toBe(0);
      }
    });

    it("NFR-R1 F2 after kill -9 of the leader a new leader is elected within the lease TTL plus one heartbeat and a workload applied right after runs", async () => {
      const cluster = clientCluster();
      const urls = coordinators.map((c) => c.url);
      await startAgents(
        cluster,
        ["ha-a", "ha-b"].map((name) => ({
          name,
          drivers: ["process"],
          extra: urls.slice(1).flatMap((url) => ["--join", url]),
        })),
      );
      for (const name of ["ha-a", "ha-b"]) agentDirs.push(await cluster.agentDir(name));
      const [leader] = await waitFor(
        "one leader",
        () => {
          const found = leaders();
          return found.length === 1 ? found : undefined;
        },
        15_000,
        50,
      );
      if (!leader) throw new Error("no leader");

      const killedAtMs = Date.now();
      leader.process.kill("SIGKILL");
      await leader.process.exited();
      // The wait's deadline is the bound the issue sets: lease TTL plus one heartbeat
      // (plus scheduling slack of this shared machine's timers, 1 s).
      const successor = await waitFor(
        "a new leader",
        () => leaders().find((c) => c !== leader),
        leaseTtlMs + heartbeatMs + 1_000,
        20,
      );
      const electedMs = Date.now() - killedAtMs;
      const members = await cluster.cliJson<{ url: string; leader?: boolean }[]>([
        "cluster",
        "members",
      ]);
      expect(members.filter((m) => m.leader).map((m) => m.url)).toEqual([successor.url]);

      const specDir = await resources.tempDir("cloudless-ha-spec-");
      const file = await writeSpec(
        specDir,
        "after-failover",
        workloadDoc("after-failover", "ha", {
          replicas: 2,
          command: ["/bin/sh", "-c", "exec sleep 600"],
        }),
      );
      const applied = await cluster.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
      await waitForWorkload(
        cluster,
        "ha",
        "after-failover",
        "2 replicas running",
        (w: WorkloadJson) =>
          w.replicas.length === 2 && w.replicas.every((r) => r.phase === "Running"),
        30_000,
      );
      const runningMs = Date.now() - killedAtMs;
      console.log(
        `NFR-R1 F2: leader ${leader.name} killed; ${successor.name} elected after ${electedMs} ms (lease ${leaseTtlMs} ms + heartbeat ${heartbeatMs} ms); workload applied after the kill Running after ${runningMs} ms`,
      );

      // The old leader comes back as a follower: the successor keeps the role.
      await startCoordinator(leader);
      await waitFor(
        "the restarted coordinator to see the leader",
        async () => (leader.process.stderr.includes("coordinator listening") ? true : undefined),
        10_000,
        50,
      );
      expect(leads(leader)).toBe(false);
      expect(leaders()).toEqual([successor]);
    });

    it("NFR-R1 a coordinator without the cluster secret, or with a wrong one, refuses to start with one clear line and writes no CA", async () => {
      const port = await freePort();
      const dataDir = await resources.tempDir("cloudless-ha-bad-");
      const missing = await runCli(coordinatorArgs({ dataDir, port }), { timeoutMs: 30_000 });
      expect(missing.code).not.toBe(0);
      expect(missing.stderr).toMatch(/^error: .*cluster-secret.*--cluster-secret-file/m);
      expect(missing.stderr).not.toMatch(/\n\s+at /);

      const wrong = path.join(dataDir, "wrong-secret");
      await writeFile(wrong, "this-is-not-the-cluster-secret\n", { mode: 0o600 });
      const refused = await runCli(
        coordinatorArgs({ dataDir, port }, ["--cluster-secret-file", wrong]),
        { timeoutMs: 30_000 },
      );
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/^error: the cluster secret does not open the CA/m);
      await expect(stat(path.join(dataDir, "pki", "ca.key"))).rejects.toThrow(/ENOENT/);

      const garbage = await runCli(
        ["coordinator", "--data-dir", dataDir, "--port", String(port), "--store", "etcd:/nope"],
        { timeoutMs: 30_000 },
      );
      expect(garbage.code).not.toBe(0);
      expect(garbage.stderr.trim().split("\n")).toHaveLength(1);
      expect(garbage.stderr).toMatch(/^error: .*etcd/);
    });
  },
);

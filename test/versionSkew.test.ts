/**
 * Version skew between a coordinator and an older agent (issue 13, ADR 0042): a spec field
 * the agent does not know — added by a newer coordinator — must not make the agent stop a
 * running replica (NFR-A1: the data plane keeps serving), and the cluster's event stream
 * says why (REQ-071). Real processes: a coordinator on a real etcd, an agent with the
 * process driver, and the newer coordinator's spec written into the stored revision
 * record directly through the store, as a newer coordinator would have stored it (no test
 * hook ships in the product).
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { revisionKey } from "../src/control/controllers/records.js";
import { type EtcdStore, openEtcdStore } from "../src/control/store/etcdStore.js";
import {
  removeProcessReplicas,
  replicaPid,
  startAgents,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { type EtcdCluster, etcdUnavailableReason, startEtcd } from "./helpers/etcd.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

const etcdMissing = await etcdUnavailableReason();
const isRoot = process.getuid?.() === 0;
const node = "skew-node";

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(etcdMissing !== undefined || !isRoot)(
  "version skew: an older agent and a newer coordinator's spec",
  { timeout: 180_000 },
  () => {
    let resources: TestResources;
    let etcd: EtcdCluster;
    let store: EtcdStore | undefined;
    let cluster: TestCluster;
    let agentDir = "";
    const prefix = `/cloudless-skew-${process.pid}`;

    beforeAll(async () => {
      resources = new TestResources();
      etcd = await startEtcd({ members: 1 });
      cluster = await TestCluster.start(resources, [
        "--store",
        `etcd://${etcd.endpoints.join(",")}${prefix}`,
      ]);
      await startAgents(cluster, [{ name: node, drivers: ["process"] }]);
      agentDir = await cluster.agentDir(node);
      store = await openEtcdStore({ endpoints: etcd.endpoints, prefix });
    }, 120_000);

    afterAll(async () => {
      await store?.close();
      for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
      if (agentDir) await removeProcessReplicas([agentDir]);
      await resources?.cleanup();
      await etcd?.stop();
    }, 60_000);

    it("REQ-071 NFR-A1 contract: an agent given a spec with fields it does not know keeps its replica running (same pid) and an event says why", async () => {
      const namespace = `skew-${randomBytes(3).toString("hex")}`;
      const name = "steady";
      const specDir = await resources.tempDir("cloudless-specs-");
      const file = await writeSpec(
        specDir,
        name,
        workloadDoc(name, namespace, { command: ["/bin/sh", "-c", "sleep 600"] }),
      );
      const applied = await cluster.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
      const running = (w: WorkloadJson) =>
        w.replicas.length === 1 && w.replicas.every((r) => r.phase === "Running" && r.ready);
      const before = await waitForWorkload(cluster, namespace, name, "1 replica running", running);
      const replica = before.replicas[0];
      if (!replica) throw new Error("no replica");
      const pidBefore = await replicaPid(agentDir, replica.id);
      expect(isAlive(pidBefore)).toBe(true);

      // What a newer coordinator stores: the same revision with fields this agent's
      // schema does not have, at the top of the spec and inside a port.
      const key = revisionKey(namespace, name, Number(before.status.revision));
      const stored = await store?.get(key);
      if (!stored) throw new Error(`no revision record at ${key}`);
      const record = JSON.parse(stored.value) as {
        spec: { spec: Record<string, unknown> };
      };
      record.spec.spec.futureSidecar = { image: "example/sidecar:2" };
      record.spec.spec.priorityClass = "critical";
      await store?.put(key, JSON.stringify(record));

      // Both an older and a fixed agent log the fields they do not know: the newer spec
      // has reached the agent once its log names one.
      const agent = cluster.agents.get(node);
      await waitFor(
        "the agent to receive the newer spec",
        () => agent?.stderr.includes("futureSidecar") || undefined,
        30_000,
        100,
      );

      // The agent kept running the replica it had: same process, through a few seconds
      // (more than a resend of its reports) after it read the newer spec.
      const deadline = Date.now() + 3_000;
      while (Date.now() < deadline) {
        expect(isAlive(pidBefore), "the replica's process was stopped").toBe(true);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      expect(await replicaPid(agentDir, replica.id)).toBe(pidBefore);
      const after = await waitForWorkload(cluster, namespace, name, "still running", running);
      expect(after.replicas.map((r) => r.id)).toEqual([replica.id]);

      const events = await waitFor(
        "an event saying the agent ignored unknown spec fields",
        async () => {
          const found = (await cluster.events()).filter((e) => e.reason === "UnknownSpecFields");
          return found.length > 0 ? found : undefined;
        },
        30_000,
        250,
      );
      // One event for one skew: a resent desired set does not repeat it.
      expect(events).toHaveLength(1);
      const event = events[0];
      expect(event?.subject).toBe(`workload/${namespace}/${name}`);
      expect(event?.actor).toBe(`node/${node}`);
      expect(event?.message).toContain("spec.futureSidecar");
      expect(event?.message).toContain("spec.priorityClass");
      expect(event?.message).toMatch(/older than the coordinator/);
      expect(event?.attributes?.replica).toBe(replica.id);
      expect(isAlive(pidBefore)).toBe(true);

      const deleted = await cluster.cli(["workload", "delete", name, "-n", namespace]);
      expect(deleted.code, deleted.stderr).toBe(0);
    });
  },
);

/**
 * REQ-062 least privilege for process replicas, end to end: a real coordinator and agent
 * (bin/cloudless), workloads applied with the CLI, and each replica reporting what it
 * is allowed to do from inside its sandbox into its own log.
 */
import { randomBytes } from "node:crypto";
import { readFile, rm, stat } from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  removeProcessReplicas,
  replicaDir,
  startAgents,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;
const node = "sandbox-node";

describe.skipIf(!isRoot)(
  "REQ-062 process replicas run with least privilege",
  { timeout: 180_000 },
  () => {
    let resources: TestResources;
    let cluster: TestCluster;
    let agentDir: string;
    let specDir: string;
    const namespace = `sb-${randomBytes(3).toString("hex")}`;

    beforeAll(async () => {
      resources = new TestResources();
      cluster = await TestCluster.start(resources);
      await startAgents(cluster, [{ name: node, drivers: ["process"] }]);
      agentDir = await cluster.agentDir(node);
      specDir = await resources.tempDir("cloudless-sandbox-specs-");
    }, 60_000);

    afterAll(async () => {
      for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
      if (agentDir) await removeProcessReplicas([agentDir]);
      // Only an unsandboxed replica (the old code, or a regression) can have made it.
      await rm("/etc/cloudless-sandbox", { force: true });
      await resources?.cleanup();
    }, 60_000);

    async function apply(name: string, script: string): Promise<void> {
      const file = await writeSpec(
        specDir,
        name,
        workloadDoc(name, namespace, { command: ["/bin/sh", "-c", script] }),
      );
      const applied = await cluster.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
    }

    /** The replica's id and its stdout once it printed `done`. */
    async function reportOf(name: string): Promise<{ id: string; log: string }> {
      const workload = await waitForWorkload(
        cluster,
        namespace,
        name,
        "1 replica running",
        (w: WorkloadJson) => w.replicas.length === 1 && w.replicas[0]?.phase === "Running",
      );
      const id = workload.replicas[0]?.id ?? "";
      const file = path.join(replicaDir(agentDir, id), "stdout.log");
      const log = await waitFor(`${name} to finish its report`, async () => {
        const text = await readFile(file, "utf8").catch(() => "");
        return text.includes("done\n") ? text : undefined;
      });
      return { id, log };
    }

    function field(log: string, name: string): string | undefined {
      return new RegExp(`^${name}:\\s+(.*)$`, "m").exec(log)?.[1]?.trim();
    }

    it("REQ-062 NFR-C1 a process replica reports a non-root uid, CapEff and CapBnd 0, NoNewPrivs 1, Seccomp 2; reading the node key and CA files, writing /etc, mount and unshare -U fail", async () => {
      const secrets = [
        path.join(agentDir, "node.key"),
        path.join(agentDir, "ca.crt"),
        path.join(cluster.dataDir, "pki", "ca.key"),
        path.join(cluster.dataDir, "pki", "ca.crt"),
      ];
      for (const file of secrets) await stat(file); // they exist: a failed read means something
      const attempts = [
        ...secrets.map((file) => `cat ${file}`),
        "touch /etc/cloudless-sandbox",
        "mkdir -p m && mount -t tmpfs none m",
        "unshare -U true",
      ];
      await apply(
        "report",
        [
          "grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
          ...attempts.map(
            (line, index) =>
              `if ${line} >/dev/null 2>&1; then echo attempt${index}=ok; else echo attempt${index}=failed; fi`,
          ),
          "echo done",
          "sleep 600",
        ].join("\n"),
      );
      const { log } = await reportOf("report");
      const uid = Number(field(log, "Uid")?.split(/\s+/)[0]);
      expect(uid, log).toBeGreaterThanOrEqual(61184);
      expect(field(log, "CapEff")).toBe("0000000000000000");
      expect(field(log, "CapBnd")).toBe("0000000000000000");
      expect(field(log, "NoNewPrivs")).toBe("1");
      expect(field(log, "Seccomp")).toBe("2");
      attempts.forEach((line, index) => {
        expect(log, line).toContain(`attempt${index}=failed`);
      });
    });

    it("REQ-062 two workloads' replicas cannot read each other's work dirs", async () => {
      await apply("keeper", "echo kept-secret > note; chmod 644 note; echo done; sleep 600");
      const keeper = await reportOf("keeper");
      const note = path.join(replicaDir(agentDir, keeper.id), "work", "note");
      expect(await readFile(note, "utf8")).toBe("kept-secret\n");
      await apply(
        "snoop",
        `if cat ${note}; then echo read=ok; else echo read=failed; fi; echo done; sleep 600`,
      );
      const snoop = await reportOf("snoop");
      expect(snoop.log).toContain("read=failed");
      expect(snoop.log).not.toContain("kept-secret");
      const keeperUid = (await stat(path.dirname(note))).uid;
      const snoopUid = (await stat(path.join(replicaDir(agentDir, snoop.id), "work"))).uid;
      expect(snoopUid).not.toBe(keeperUid);
    });
  },
);

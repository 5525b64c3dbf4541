/**
 * REQ-062 least privilege for process and container replicas, end to end: a real
 * coordinator and agent (bin/cloudless), workloads applied with the CLI, and each replica
 * reporting what it is allowed to do from inside its sandbox into its own log; a
 * securityContext loosens it only as far as the cluster's policies allow (REQ-061).
 */
import { randomBytes } from "node:crypto";
import { readFile, rm, stat, writeFile } from "node:fs/promises";
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
import { type EventJson, TestCluster } from "./helpers/cluster.js";
import { run } from "./helpers/netlab.js";
import { ensurePodman, type PodmanAvailability } from "./helpers/podman.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

/** The exit code of a refusal for lack of permission, a policy's included (src/cli/run.ts). */
const permissionDeniedExit = 5;

/** Lines the replica prints: its status fields, then whether each attempt failed. */
function reportScript(attempts: readonly string[], grep = "grep"): string {
  return [
    `${grep} -E '^(Uid|Gid|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status`,
    ...attempts.map(
      (line, index) =>
        `if ${line} >/dev/null 2>&1; then echo attempt${index}=ok; else echo attempt${index}=failed; fi`,
    ),
    "echo done",
    "sleep 600",
  ].join("\n");
}

function field(log: string, name: string): string | undefined {
  return new RegExp(`^${name}:\\s+(.*)$`, "m").exec(log)?.[1]?.trim();
}

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

    async function applyResult(
      name: string,
      script: string,
      spec: Record<string, unknown> = {},
    ): Promise<{ code: number; stderr: string }> {
      const file = await writeSpec(
        specDir,
        name,
        workloadDoc(name, namespace, { command: ["/bin/sh", "-c", script], ...spec }),
      );
      return cluster.cli(["workload", "apply", "-f", file]);
    }

    async function apply(
      name: string,
      script: string,
      spec: Record<string, unknown> = {},
    ): Promise<void> {
      const applied = await applyResult(name, script, spec);
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

    it("REQ-062 securityContext on a process replica: runAsUser is its uid, capabilitiesAdd NET_BIND_SERVICE is exactly its capability and binds port 80 on the host, seccompProfile unconfined makes Seccomp 0", async () => {
      // Port 80 on the loopback only; busybox httpd binds, then goes to the background
      // (its exit status says whether the bind worked) and ends with the replica.
      const bind80 = "busybox httpd -p 127.0.0.1:80 -h /tmp";
      await apply("loosened", reportScript([bind80, "touch /etc/cloudless-sandbox"]), {
        securityContext: {
          runAsUser: 4242,
          capabilitiesAdd: ["NET_BIND_SERVICE"],
          seccompProfile: "unconfined",
        },
      });
      const { id, log } = await reportOf("loosened");
      expect(field(log, "Uid")?.split(/\s+/)[0], log).toBe("4242");
      expect(field(log, "Gid")?.split(/\s+/)[0], log).toBe("4242");
      // NET_BIND_SERVICE is bit 10, and nothing else; no new privileges still.
      expect(field(log, "CapEff"), log).toBe("0000000000000400");
      expect(field(log, "CapBnd"), log).toBe("0000000000000400");
      expect(field(log, "NoNewPrivs")).toBe("1");
      expect(field(log, "Seccomp")).toBe("0");
      expect(log).toContain("attempt0=ok");
      // The host stays read-only.
      expect(log).toContain("attempt1=failed");
      expect((await stat(path.join(replicaDir(agentDir, id), "work"))).uid).toBe(4242);

      // exec runs in the replica's own sandbox: its user and its one capability.
      const exec = await cluster.cli([
        "workload",
        "exec",
        "loosened",
        "-n",
        namespace,
        "--",
        "grep",
        "-E",
        "^(Uid|CapEff):",
        "/proc/self/status",
      ]);
      expect(exec.code, exec.stderr).toBe(0);
      expect(exec.stdout).toMatch(/^Uid:\s+4242\s/m);
      expect(exec.stdout).toMatch(/^CapEff:\s+0000000000000400$/m);

      // The default sandbox cannot bind it (no capability): the contrast that proves it.
      await apply("plain", reportScript(["busybox httpd -p 127.0.0.1:81 -h /tmp"]));
      const plain = await reportOf("plain");
      expect(plain.log).toContain("attempt0=failed");
    });

    it("REQ-061 REQ-062 policies bound securityContext: root, an added capability and an unconfined profile are each refused at apply naming the policy and rule, and the agent refuses such a record that reached the store without an apply check", async () => {
      const policyFile = path.join(specDir, "least-privilege.yaml");
      await writeFile(
        policyFile,
        `apiVersion: cloudless/v1
kind: Policy
metadata:
  name: least-privilege
spec:
  rules:
    - name: no-root
      subject: runAsRoot
      effect: deny
      namespaces: [${namespace}]
    - name: no-raw-sockets
      subject: capability
      effect: deny
      match: [NET_RAW]
      namespaces: [${namespace}]
    - name: confined
      subject: seccompUnconfined
      effect: deny
      namespaces: [${namespace}]
`,
      );
      // Admitted before the policy exists, with no replica yet.
      await apply("later-raw", "sleep 600", {
        replicas: 0,
        securityContext: { capabilitiesAdd: ["CAP_NET_RAW"] },
      });
      const policy = await cluster.cli(["policy", "apply", "-f", policyFile]);
      expect(policy.code, policy.stderr).toBe(0);
      try {
        const cases: Array<[string, Record<string, unknown>, string]> = [
          ["as-root", { runAsUser: 0 }, "rule no-root (running as root)"],
          ["raw", { capabilitiesAdd: ["NET_RAW"] }, "rule no-raw-sockets (capability NET_RAW)"],
          [
            "unconfined",
            { seccompProfile: "unconfined" },
            "rule confined (an unconfined seccomp profile)",
          ],
        ];
        for (const [name, securityContext, rule] of cases) {
          const refused = await applyResult(name, "sleep 600", { securityContext });
          expect(refused.code, refused.stderr).toBe(permissionDeniedExit);
          expect(refused.stderr).toContain(
            `error: workload ${namespace}/${name} is denied by policy least-privilege ${rule}`,
          );
        }
        // A container running as root is judged alike: its user is no longer the image's.
        const rootContainer = await writeSpec(
          specDir,
          "root-container",
          workloadDoc("root-container", namespace, {
            image: "localhost/cloudless-test/busybox:1",
            securityContext: { runAsUser: 0 },
          }),
        );
        const refused = await cluster.cli(["workload", "apply", "-f", rootContainer]);
        expect(refused.code).toBe(permissionDeniedExit);
        expect(refused.stderr).toContain("policy least-privilege rule no-root");
        // Allowed without the loosening.
        await apply("confined-ok", "sleep 600", { securityContext: { runAsUser: 4343 } });

        // The agent holds the policy, then a scale creates a replica with no apply check.
        const kept = path.join(agentDir, "policies.json");
        await waitFor("the agent to hold the policy", async () =>
          (await readFile(kept, "utf8").catch(() => "")).includes("least-privilege"),
        );
        const scaled = await cluster.cli([
          "workload",
          "scale",
          "later-raw",
          "-n",
          namespace,
          "--replicas",
          "1",
        ]);
        expect(scaled.code, scaled.stderr).toBe(0);
        const refusal = await waitFor("a PolicyDenied event from the agent", async () => {
          const events = await cluster.cliJson<EventJson[]>(["events", "--type", "ReplicaRefused"]);
          return events.find(
            (event) => event.reason === "PolicyDenied" && event.message.includes("later-raw"),
          );
        });
        expect(refusal.message).toMatch(
          /is denied by policy least-privilege rule no-raw-sockets \(capability NET_RAW\); it is not started$/,
        );
      } finally {
        await cluster.cli(["policy", "delete", "least-privilege"]);
      }
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

describe.skipIf(!isRoot)(
  "REQ-062 container replicas run with the same least privilege",
  { timeout: 180_000 },
  () => {
    let resources: TestResources;
    let cluster: TestCluster;
    let podman: PodmanAvailability;
    let specDir: string;
    const containerNode = "sandbox-container-node";
    const namespace = `sbc-${randomBytes(3).toString("hex")}`;

    beforeAll(async () => {
      resources = new TestResources();
      podman = await ensurePodman();
      if (!podman.available) throw new Error(`podman unavailable: ${podman.reason}`);
      cluster = await TestCluster.start(resources);
      await startAgents(cluster, [
        { name: containerNode, drivers: ["container"], socket: podman.socketPath },
      ]);
      specDir = await resources.tempDir("cloudless-sandbox-specs-");
    }, 90_000);

    afterAll(async () => {
      for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
      // Replicas outlive their agent (ADR 0031): this test's containers go by hand.
      if (podman?.available) {
        const listed = await runPodman(podman.socketPath, [
          "ps",
          "-a",
          "--filter",
          `label=cloudless.namespace=${namespace}`,
          "--format",
          "{{.ID}}",
        ]);
        const ids = listed.stdout.split("\n").filter(Boolean);
        if (ids.length > 0) await runPodman(podman.socketPath, ["rm", "-f", ...ids]);
        await podman.stop();
      }
      await resources?.cleanup();
    }, 60_000);

    /** The replica's log once it printed `done`. */
    async function containerReport(
      name: string,
      attempts: readonly string[],
      securityContext?: Record<string, unknown>,
    ): Promise<string> {
      const file = await writeSpec(
        specDir,
        name,
        workloadDoc(name, namespace, {
          image: podman.available ? podman.image : "",
          command: ["/bin/sh", "-c", reportScript(attempts, "/bin/busybox grep")],
          ...(securityContext ? { securityContext } : {}),
        }),
      );
      const applied = await cluster.cli(["workload", "apply", "-f", file]);
      expect(applied.code, applied.stderr).toBe(0);
      return waitFor(
        `${name} to finish its report`,
        async () => {
          const logs = await cluster.cli(["workload", "logs", name, "-n", namespace]);
          return logs.code === 0 && logs.stdout.includes("done") ? logs.stdout : undefined;
        },
        60_000,
        250,
      );
    }

    it("REQ-062 NFR-C1 a container replica reports a non-root uid, CapEff and CapBnd 0, NoNewPrivs 1, Seccomp 2; writing /etc, mount and unshare -U fail", async () => {
      const attempts = [
        "/bin/busybox touch /etc/cloudless-sandbox",
        "/bin/busybox mkdir -p /tmp/m && /bin/busybox mount -t tmpfs none /tmp/m",
        "/bin/busybox unshare -U true",
      ];
      const log = await containerReport("report", attempts);
      const uid = Number(field(log, "Uid")?.split(/\s+/)[0]);
      // The workload's dynamic user (ADR 0050), not the image's root.
      expect(uid, log).toBeGreaterThanOrEqual(61184);
      expect(uid, log).toBeLessThanOrEqual(65519);
      expect(field(log, "CapEff")).toBe("0000000000000000");
      expect(field(log, "CapBnd")).toBe("0000000000000000");
      expect(field(log, "NoNewPrivs")).toBe("1");
      expect(field(log, "Seccomp")).toBe("2");
      attempts.forEach((line, index) => {
        expect(log, line).toContain(`attempt${index}=failed`);
      });
    });

    it("REQ-062 securityContext on a container replica: runAsUser 0 with a read-only root file system, exactly the added capability, seccomp unconfined", async () => {
      const log = await containerReport(
        "loosened",
        ["/bin/busybox touch /written", "/bin/busybox touch /tmp/written"],
        {
          runAsUser: 0,
          readOnlyRootFilesystem: true,
          capabilitiesAdd: ["NET_BIND_SERVICE"],
          seccompProfile: "unconfined",
        },
      );
      expect(field(log, "Uid")?.split(/\s+/)[0], log).toBe("0");
      expect(field(log, "CapEff"), log).toBe("0000000000000400");
      expect(field(log, "CapBnd"), log).toBe("0000000000000400");
      expect(field(log, "NoNewPrivs")).toBe("1");
      expect(field(log, "Seccomp")).toBe("0");
      // Root, yet the image's file system is read-only; the private /tmp is not.
      expect(log).toContain("attempt0=failed");
      expect(log).toContain("attempt1=ok");
    });
  },
);

/** The podman CLI against the test's own service. */
function runPodman(socketPath: string, args: string[]) {
  return run("podman", ["--url", `unix://${socketPath}`, ...args]);
}

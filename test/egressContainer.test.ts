/**
 * REQ-061 egress for container replicas in a real cluster: a coordinator, an agent with
 * the container driver on a private Podman service, `policy apply` of a rule that denies
 * one port of the host (reached through the bridge gateway), and a replica that dials an
 * allowed and the denied port from its first moment. The denied one is refused at once,
 * the allowed one answers; the agent's egress table matches the container's address, and
 * the rule goes when the workload is deleted.
 */
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import * as net from "node:net";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { egressTableFor } from "../src/agent/policy/egressRules.js";
import { startAgents, workloadDoc } from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { run } from "./helpers/netlab.js";
import { ensurePodman, type PodmanAvailability, podman as podmanCli } from "./helpers/podman.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;

/** A TCP server on every address that answers each connection with `reply` and closes. */
async function replyServer(reply: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((socket) => {
    // A prober that gave up resets its side: nothing to do about it here.
    socket.on("error", () => undefined);
    socket.end(`${reply}\n`);
  });
  await new Promise<void>((resolve) => server.listen(0, "0.0.0.0", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  return {
    port: address.port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe.skipIf(!isRoot)(
  "egress of container replicas in a cluster (REQ-061)",
  { timeout: 180_000 },
  () => {
    let resources: TestResources;
    let cluster: TestCluster;
    let podman: PodmanAvailability;
    let allowed: Awaited<ReturnType<typeof replyServer>>;
    let denied: Awaited<ReturnType<typeof replyServer>>;
    const node = "egress-container-node";
    const namespace = `egc-${randomBytes(3).toString("hex")}`;

    beforeAll(async () => {
      resources = new TestResources();
      podman = await ensurePodman();
      if (!podman.available) throw new Error(`podman unavailable: ${podman.reason}`);
      allowed = await replyServer("allowed");
      denied = await replyServer("denied");
      cluster = await TestCluster.start(resources);
      await startAgents(cluster, [
        { name: node, drivers: ["container"], socket: podman.socketPath },
      ]);
    }, 90_000);

    afterAll(async () => {
      for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
      if (podman?.available) {
        // Replicas outlive their agent (ADR 0031): this test's containers go by hand.
        const listed = await run("podman", [
          "--url",
          `unix://${podman.socketPath}`,
          "ps",
          "-a",
          "--filter",
          `label=cloudless.namespace=${namespace}`,
          "--format",
          "{{.ID}}",
        ]);
        const ids = listed.stdout.split("\n").filter(Boolean);
        if (ids.length > 0) {
          await run("podman", ["--url", `unix://${podman.socketPath}`, "rm", "-f", ...ids]);
        }
        await podman.stop();
      }
      await run("nft", ["delete", "table", "ip", egressTableFor(node)]);
      await allowed?.close();
      await denied?.close();
      await resources?.cleanup();
    }, 60_000);

    it("REQ-061: under a policy denying a destination, a container replica's connection to it is refused from its first packet while an allowed destination answers; the rule goes with the replica", async () => {
      if (!podman.available) return;
      const gateway = (
        await podmanCli([
          "network",
          "inspect",
          "podman",
          "--format",
          "{{range .Subnets}}{{.Gateway}}{{end}}",
        ])
      ).stdout.trim();
      expect(gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
      const dir = await resources.tempDir("cloudless-egress-container-");
      const policyFile = path.join(dir, "egress.yaml");
      await writeFile(
        policyFile,
        `apiVersion: cloudless/v1
kind: Policy
metadata: { name: egress-lab }
spec:
  rules:
    - { name: no-denied-port, subject: egress, effect: deny, match: ["${gateway}/32:${denied.port}"], namespaces: [${namespace}] }
`,
      );
      const applied = await cluster.cli(["policy", "apply", "-f", policyFile]);
      expect(applied.code, applied.stderr).toBe(0);
      const kept = path.join(await cluster.agentDir(node), "policies.json");
      await waitFor(
        "the agent to hold the policy",
        async () => (await readFile(kept, "utf8").catch(() => "")).includes("egress-lab"),
        15_000,
      );

      // Dials the denied port first, the moment it starts, then both every half second.
      const dial = (label: string, port: number) =>
        `out=$(nc -w 3 ${gateway} ${port} </dev/null 2>&1); echo "${label} rc=$? $out"`;
      const spec = await writeSpec(
        dir,
        "prober",
        workloadDoc("prober", namespace, {
          image: podman.image,
          command: [
            "/bin/sh",
            "-c",
            `${dial("first", denied.port)}; while true; do ${dial("allowed", allowed.port)}; ${dial("denied", denied.port)}; sleep 0.5; done`,
          ],
        }),
      );
      const created = await cluster.cli(["workload", "apply", "-f", spec]);
      expect(created.code, created.stderr).toBe(0);
      const log = await waitFor(
        "the prober to dial both destinations",
        async () => {
          const logs = await cluster.cli(["workload", "logs", "prober", "-n", namespace]);
          return logs.stdout.includes("allowed rc=") && logs.stdout.includes("denied rc=")
            ? logs.stdout
            : undefined;
        },
        60_000,
        250,
      );
      const lines = log.split("\n");
      expect(
        lines.find((l) => l.startsWith("first ")),
        log,
      ).toContain("Connection refused");
      expect(
        lines.find((l) => l.startsWith("allowed ")),
        log,
      ).toContain("rc=0 allowed");
      expect(
        lines.find((l) => l.startsWith("denied ")),
        log,
      ).toContain("Connection refused");
      expect(log).not.toContain(" denied\n");

      // The agent's table matches the container by its address on the bridge.
      const table = egressTableFor(node);
      const listed = await run("nft", ["list", "table", "ip", table]);
      expect(listed.stdout).toMatch(/ip saddr \d+\.\d+\.\d+\.\d+ jump wc_0 comment "workload /);
      expect(listed.stdout).toContain(`comment "egress-lab/no-denied-port"`);

      // The workload goes: its container's rule goes (the chain by uid the shared uid table
      // gives the workload matches no container traffic; it goes with the uid, ADR 0057).
      const deleted = await cluster.cli(["workload", "delete", "prober", "-n", namespace]);
      expect(deleted.code, deleted.stderr).toBe(0);
      await waitFor(
        "the container's egress rule to go with the replica",
        async () => {
          const left = await run("nft", ["list", "table", "ip", table]);
          return left.code !== 0 || !/ip saddr|wc_/.test(left.stdout);
        },
        30_000,
        250,
      );
      const addresses = await readFile(
        path.join(await cluster.agentDir(node), "egress-containers.json"),
        "utf8",
      );
      expect(JSON.parse(addresses)).toEqual({ version: 1, replicas: {} });
    });
  },
);

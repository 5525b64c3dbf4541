import { readFile } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { TestCluster } from "./helpers/cluster.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { clientsFor } from "./helpers/tlsProbe.js";
import { writeSpec } from "./helpers/workloads.js";

describe("the event stream", () => {
  let resources: TestResources;
  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    await resources.cleanup();
  });

  it.skipIf(process.getuid?.() !== 0)(
    "REQ-071 events -o json shows a join, a placement, a refused enrollment and a permission denial from one run",
    async () => {
      const cluster = await TestCluster.start(resources);
      await cluster.startAgent("ev-node", {
        token: await cluster.createToken(),
        extra: ["--driver", "process"],
      });
      await cluster.waitForStatus("ev-node", "Ready");

      // A refused enrollment: a well-formed token with a wrong secret.
      const good = await cluster.createToken();
      const forged = good.replace(/\.[^.]+$/, ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
      const refused = await cluster.startAgent("intruder", { token: forged });
      expect(await refused.exited()).not.toBe(0);

      // A placement: a one-replica process workload.
      const dir = await resources.tempDir();
      const file = await writeSpec(dir, "ev", {
        apiVersion: "cloudless/v1",
        kind: "Workload",
        metadata: { name: "ev" },
        spec: {
          command: [process.execPath, "-e", "setInterval(() => {}, 1000)"],
          resources: { cpuMillicores: 50, memoryMiB: 64 },
          replicas: 1,
        },
      });
      expect((await cluster.cli(["workload", "apply", "-f", file])).code).toBe(0);

      // A permission denial: the node's certificate asking for the node list (admin only).
      const agentDir = await cluster.agentDir("ev-node");
      const read = (name: string) => readFile(path.join(agentDir, name), "utf8");
      const asNode = clientsFor({
        url: cluster.url,
        caPem: await read("ca.crt"),
        certPem: await read("node.crt"),
        keyPem: await read("node.key"),
      });
      await expect(asNode.nodes.listNodes({})).rejects.toThrow(/admin|may not|only/i);

      const events = await waitFor(
        "join, placement and refusal events",
        async () => {
          const all = await cluster.events();
          const types = new Set(all.map((e) => e.type));
          return types.has("NodeJoined") &&
            types.has("ReplicasPlaced") &&
            types.has("EnrollmentRefused") &&
            types.has("PermissionDenied")
            ? all
            : undefined;
        },
        30_000,
        300,
      );
      const joined = events.find((e) => e.type === "NodeJoined" && e.subject === "node/ev-node");
      expect(joined).toMatchObject({ category: "membership", reason: "Joined" });
      const placed = events.find((e) => e.type === "ReplicasPlaced");
      expect(placed).toMatchObject({ category: "scheduling", subject: "workload/default/ev" });
      expect(placed?.message).toContain("ev-node");
      const refusal = events.find((e) => e.type === "EnrollmentRefused");
      expect(refusal).toMatchObject({ category: "security", subject: "node/intruder" });
      expect(refusal?.actor).toMatch(/^anonymous@/);
      const denial = events.find((e) => e.type === "PermissionDenied");
      expect(denial).toMatchObject({ category: "security", actor: "node/ev-node" });
      expect(denial?.message).toContain("ListNodes");
      // Event ids are store revisions (with a 4-digit position when a write held several):
      // increasing in the listing, also as numbers.
      const ids = events.map((e) => Number(e.id));
      expect(ids).toEqual([...ids].sort((a, b) => a - b));
    },
    120_000,
  );
});

/**
 * REQ-061 egress, enforced on the node, in the network lab: two hosts, a coordinator and
 * an agent on A, an agent on B (service VIPs on, process replicas sandboxed as their
 * workload's own uid). B runs the service `api` and, outside Cloudless, a plain TCP
 * server at its lab address. A prober replica on A dials both every 300 ms. Without a
 * policy both answer; after `policy apply` of "allow service:api, deny <B>/32" the lab
 * server is refused at once (ECONNREFUSED, not a timeout) while the service keeps
 * answering through its VIP. The agent's table is kept through a kill -9 and replaced at
 * the next start, and goes when the agent leaves.
 */
import { readdir, readFile, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assertNoLeaks, type LabHost, netlabUnavailableReason } from "../helpers/netlab.js";
import { waitFor } from "../helpers/processes.js";
import {
  agentResidue,
  applyServiceWorkload,
  httpWorkload,
  restartAgent,
  type ServiceLab,
  startServiceLab,
  waitForEndpoints,
} from "../helpers/serviceLab.js";

const unavailable = await netlabUnavailableReason();
if (unavailable) console.log(`egress policy chaos tests skipped: ${unavailable}`);

const labServerPort = 9000;

/**
 * Dials the service (its VIP, from the variables the agent gives a replica) and the lab
 * server every 300 ms; one line per attempt: `<seq> <api|lab> ok|fail <code> <ms>`.
 */
const proberScript = `
const net = require("node:net");
const [labHost, labPort] = (process.env.LAB_TARGET || "").split(":");
const apiHost = process.env.CLOUDLESS_SERVICE_API_HOST, apiPort = Number(process.env.CLOUDLESS_SERVICE_API_PORT);
let seq = 0;
function probe(name, host, port, request) {
  const n = seq++, started = Date.now(); let data = "", done = false;
  const say = (what) => { if (!done) { done = true; console.log(n + " " + name + " " + what + " " + (Date.now() - started)); } };
  const s = net.connect({ host, port: Number(port) });
  const timer = setTimeout(() => { s.destroy(); say("fail TIMEOUT"); }, 3000);
  s.on("connect", () => { if (request) s.write(request); });
  s.on("data", (c) => { data += c; });
  s.on("end", () => { clearTimeout(timer); s.destroy(); say(data.length > 0 ? "ok -" : "fail EMPTY"); });
  s.on("error", (e) => { clearTimeout(timer); say("fail " + (e.code || "ERROR")); });
}
setInterval(() => {
  probe("api", apiHost, apiPort, "GET / HTTP/1.0\\r\\n\\r\\n");
  probe("lab", labHost, labPort);
}, 300);
`;

interface ProbeLine {
  seq: number;
  target: "api" | "lab";
  ok: boolean;
  code: string;
  ms: number;
}

describe.skipIf(unavailable !== undefined)(
  "egress policy enforced on the node (REQ-061, lab)",
  () => {
    let sl: ServiceLab;
    let a: LabHost;
    let b: LabHost;
    let policyFile: string;

    /** A prober workload's lines, from its replica's stdout.log under A's agent data dir. */
    async function proberLines(workload = "prober"): Promise<ProbeLine[]> {
      const replicas = path.join(sl.agentDirs.get("a") as string, "replicas");
      for (const id of await readdir(replicas).catch(() => [] as string[])) {
        if (!id.includes(workload)) continue;
        const text = await readFile(path.join(replicas, id, "stdout.log"), "utf8").catch(() => "");
        return text
          .split("\n")
          .map((line) => line.split(" "))
          .filter((parts) => parts.length === 5)
          .map(([seq, target, outcome, code, ms]) => ({
            seq: Number(seq),
            target: target as "api" | "lab",
            ok: outcome === "ok",
            code: code as string,
            ms: Number(ms),
          }));
      }
      return [];
    }

    /** Waits for `count` lines of each target after the first `after` lines; returns them. */
    async function linesAfter(after: number, count: number): Promise<ProbeLine[]> {
      return waitFor(
        `${count} prober lines per target after line ${after}`,
        async () => {
          const lines = (await proberLines()).slice(after);
          const per = (t: string) => lines.filter((l) => l.target === t).length;
          return per("api") >= count && per("lab") >= count ? lines : undefined;
        },
        60_000,
        300,
      );
    }

    async function egressTables(host: LabHost): Promise<string[]> {
      const listed = await host.exec("nft", ["list", "tables"]);
      return listed.stdout
        .split("\n")
        .filter((line) => line.includes("cloudless_egress"))
        .map((line) => line.trim());
    }

    /** A prober replica pinned to A (its port is unused: a service needs one). */
    function proberWorkload(name: string, port: number) {
      return {
        name,
        nodeSelector: { host: "a" },
        command: [process.execPath, "-e", proberScript],
        ports: [{ name: "unused", containerPort: port }],
        env: { LAB_TARGET: `${b.ip}:${labServerPort}` },
        readiness: "none" as const,
      };
    }

    beforeAll(async () => {
      sl = await startServiceLab(
        [
          { name: "a", zone: "a", labels: { host: "a" } },
          { name: "b", zone: "b", labels: { host: "b" } },
        ],
        "a",
      );
      [a, b] = [sl.lab.host("a"), sl.lab.host("b")];
      await b.serveTcp(labServerPort, "lab-server");
      await applyServiceWorkload(sl, { ...httpWorkload(sl, "api", "b"), service: "api" });
      await waitForEndpoints(sl, "api", 1, ["b"]);
      await applyServiceWorkload(sl, proberWorkload("prober", 8099));
      policyFile = path.join(sl.specDir, "egress-policy.yaml");
      await writeFile(
        policyFile,
        [
          "apiVersion: cloudless/v1",
          "kind: Policy",
          "metadata: { name: egress-lab }",
          "spec:",
          "  rules:",
          '    - { name: to-api, subject: egress, effect: allow, match: ["service:api"] }',
          `    - { name: no-lab-host, subject: egress, effect: deny, match: ["${b.ip}/32"] }`,
          "",
        ].join("\n"),
      );
    }, 240_000);

    afterAll(async () => {
      await sl?.lab.dispose();
    });

    it("REQ-061 a replica's connection to a denied destination fails at once while the allowed service answers through its VIP", async () => {
      // Before any policy both answer: what follows is the policy's doing.
      const before = await linesAfter(0, 3);
      expect(before.filter((l) => l.target === "lab").at(-1)).toMatchObject({ ok: true });
      expect(before.filter((l) => l.target === "api").at(-1)).toMatchObject({ ok: true });
      expect(await egressTables(a)).toEqual([]);

      const applied = await sl.cluster.cli(["policy", "apply", "-f", policyFile]);
      expect(applied.code, applied.stderr).toBe(0);
      const mark = (await proberLines()).length;
      // The policy reaches the agent on its heartbeat stream; from the first refusal on,
      // every lab attempt is refused and the service keeps answering.
      const firstRefused = await waitFor(
        "the prober's first refused connection to the lab host",
        async () =>
          (await proberLines())
            .slice(mark)
            .find((l) => l.target === "lab" && !l.ok && l.code === "ECONNREFUSED"),
        30_000,
        300,
      );
      const after = (await linesAfter(mark, 10)).filter((l) => l.seq > firstRefused.seq);
      const lab = after.filter((l) => l.target === "lab");
      const api = after.filter((l) => l.target === "api");
      console.log(
        `REQ-061 egress: lab ${JSON.stringify(lab.slice(0, 5))}, api ${JSON.stringify(api.slice(0, 5))}`,
      );
      expect(lab.length).toBeGreaterThanOrEqual(5);
      expect(lab.every((l) => !l.ok && l.code === "ECONNREFUSED" && l.ms < 1_000)).toBe(true);
      expect(api.length).toBeGreaterThanOrEqual(5);
      expect(api.every((l) => l.ok)).toBe(true);
      // The lab server itself still answers A's other users (the agent, root): only the
      // replica's uid is confined.
      expect(await a.request(b.ip, labServerPort, "lab-server")).toBe("lab-server");
      const tables = await egressTables(a);
      expect(tables).toHaveLength(1);
      const name = (tables[0] as string).split(" ").at(-1) as string;
      // The deny rule counted the refusals: cloudless_agent_egress_denied_total reads these.
      const listed = JSON.parse(
        (await a.exec("nft", ["-j", "list", "table", "ip", name])).stdout,
      ) as {
        nftables: { rule?: { comment?: string; expr: { counter?: { packets: number } }[] } }[];
      };
      const denyRule = listed.nftables.find((e) => e.rule?.comment === "egress-lab/no-lab-host");
      const counted = denyRule?.rule?.expr.find((e) => e.counter)?.counter?.packets ?? 0;
      console.log(`REQ-061 egress: the deny rule counted ${counted} refused connections`);
      expect(counted).toBeGreaterThanOrEqual(lab.length);
    });

    it("REQ-061 a replica started under the policy is refused from its first connections (the launch order itself: src/agent/policy/egressLaunch.test.ts)", async () => {
      await applyServiceWorkload(sl, proberWorkload("newcomer", 8098));
      const first = await waitFor(
        "the newcomer's first lab and api attempts",
        async () => {
          const lines = await proberLines("newcomer");
          const lab = lines.filter((l) => l.target === "lab");
          const api = lines.filter((l) => l.target === "api");
          return lab.length >= 3 && api.length >= 3 ? { lab, api } : undefined;
        },
        60_000,
        300,
      );
      console.log(`REQ-061 egress newcomer: lab ${JSON.stringify(first.lab.slice(0, 3))}`);
      expect(first.lab.every((l) => !l.ok && l.code === "ECONNREFUSED")).toBe(true);
      expect(first.api.every((l) => l.ok)).toBe(true);
      const [table] = await egressTables(a);
      const listed = await a.exec("nft", [
        "list",
        "table",
        "ip",
        (table as string).split(" ").at(-1) as string,
      ]);
      // Two workloads, two uids, two chains.
      expect(listed.stdout.match(/meta skuid \d+ jump wl_\d+/g)?.length).toBe(2);
    });

    it("REQ-061 the egress table outlives a kill -9 of the agent (the replica stays confined) and is replaced at its next start", async () => {
      const agent = sl.agents.get("a");
      if (!agent) throw new Error("no agent on a");
      const [table] = await egressTables(a);
      expect(table).toBeDefined();
      const name = (table as string).split(" ").at(-1) as string;
      agent.kill("SIGKILL");
      await agent.exited();
      // A rule the restarted agent must not keep: the table is replaced, not merged.
      const marked = await a.exec("nft", [
        ...["add", "rule", "ip", name, "output", "counter", "comment", '"stale-marker"'],
      ]);
      expect(marked.code, marked.stderr).toBe(0);
      const mark = (await proberLines()).length;
      const during = (await linesAfter(mark, 3)).filter((l) => l.target === "lab");
      expect(during.every((l) => !l.ok && l.code === "ECONNREFUSED")).toBe(true);

      const restarted = restartAgent(sl, "a");
      await waitFor(
        "the restarted agent to replace its egress table",
        async () => {
          if (!restarted.running)
            throw new Error(`agent a exited: ${restarted.stderr.slice(-500)}`);
          const listed = await a.exec("nft", ["list", "table", "ip", name]);
          return listed.code === 0 &&
            !listed.stdout.includes("stale-marker") &&
            listed.stdout.includes("egress-lab/no-lab-host")
            ? true
            : undefined;
        },
        60_000,
        300,
      );
      await sl.cluster.waitForStatus("a", "Ready", 60_000);
      const again = (await linesAfter((await proberLines()).length, 3)).filter(
        (l) => l.target === "lab",
      );
      expect(again.every((l) => !l.ok && l.code === "ECONNREFUSED")).toBe(true);
    });

    it("REQ-061 the egress table is gone when the agent stops (a leave); the lab leaves nothing behind", async () => {
      for (const [, agent] of sl.agents) {
        if (agent.running) expect(await agent.stop(20_000)).toBe(0);
      }
      expect(await egressTables(a)).toEqual([]);
      expect(await egressTables(b)).toEqual([]);
      expect(await sl.coordinator.process.stop(15_000)).toBe(0);
      const residue = [...(await agentResidue(a)), ...(await agentResidue(b))].filter(
        // The lab's own server on B is not an agent's.
        (line) => !line.includes(`:${labServerPort}`),
      );
      expect(residue).toEqual([]);
      await sl.lab.dispose();
      await assertNoLeaks(sl.lab.id);
    });
  },
);

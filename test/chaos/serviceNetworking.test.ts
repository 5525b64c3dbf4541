/**
 * Issue 14's acceptance list on the network lab: five hosts in three zones, D and E each
 * behind its own NAT (masquerade, no inbound), a coordinator on A, an agent with service
 * VIPs and a mesh port on every host, B also a relay.
 *
 *   zone a: A (coordinator, web-a weight 1)
 *   zone b: B (web-b weight 1, --relay), C (web-c weight 2)
 *   zone c: D behind NAT (only-d), E behind NAT — no `web` replica in zone c
 *
 * One lab for the file; the scenarios run in order and later ones build on earlier ones
 * (the kill -9 of B comes late, and its certificate then serves as a deleted node's).
 * Clients run inside the hosts and open a new connection per request, so every request
 * is a load-balancing decision of the proxy. Afterwards the agents are stopped and their
 * hosts must hold no table, address or listener of theirs, and the lab nothing at all.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import * as tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assertNoLeaks, type LabHost, netlabUnavailableReason } from "../helpers/netlab.js";
import { waitFor } from "../helpers/processes.js";
import {
  agentResidue,
  applyServiceWorkload,
  dig,
  dnsName,
  endpointOn,
  endpointsOf,
  getService,
  httpWorkload,
  meshPort,
  networkPeers,
  RequestLoop,
  type RequestRecord,
  requestBatch,
  type ServiceLab,
  setReady,
  shares,
  startCoordinator,
  startServiceLab,
  waitForEndpoints,
} from "../helpers/serviceLab.js";

const unavailable = await netlabUnavailableReason();
if (unavailable) console.log(`service networking chaos tests skipped: ${unavailable}`);

const webPort = 8080;
/** The issue asks for 60 s; CLOUDLESS_CHAOS_OUTAGE_MS may only lengthen it. */
const outageMs = Math.max(60_000, Number(process.env.CLOUDLESS_CHAOS_OUTAGE_MS ?? 0));
/** How long an endpoint change may take to reach every proxy (issue 14: ≤ 1 s P99) plus slack for this shared machine. */
const propagationSlackMs = 3_000;

function percent(part: number, whole: number): number {
  return whole === 0 ? 0 : (100 * part) / whole;
}

/** When failed requests started, against named moments (ms offsets from the first mark). */
function failureTimeline(records: RequestRecord[], marks: Record<string, number>): string {
  const failed = records.filter((r) => !r.ok);
  const origin = Math.min(...Object.values(marks));
  if (failed.length === 0 || !Number.isFinite(origin)) return "none";
  const at = (ms: number) => `${ms - origin} ms`;
  const phases = Object.entries(marks).sort((x, y) => x[1] - y[1]);
  const counts = phases.map(([name, from], i) => {
    const to = phases[i + 1]?.[1] ?? Number.POSITIVE_INFINITY;
    return `${failed.filter((r) => r.s >= from && r.s < to).length} from ${name} (${at(from)})`;
  });
  const before = failed.filter((r) => r.s < origin).length;
  return `first at ${at(failed[0]?.s as number)}, last at ${at(failed.at(-1)?.s as number)}; ${before} before, ${counts.join(", ")}`;
}

function summary(records: RequestRecord[]): string {
  const failed = records.filter((r) => !r.ok);
  return `${records.length} requests, ${failed.length} failed (${[...new Set(failed.map((r) => r.err))].join(", ")}), by node ${JSON.stringify(shares(records))}`;
}

/**
 * A TLS client at the mesh port, speaking its ALPN: "refused" when the server ends the
 * connection (alert, reset or close) within `windowMs` without sending a byte; "open" when
 * it still holds it then. A client the mesh accepts is kept waiting for its flow header
 * (10 s by default), not closed.
 */
function meshProbe(
  host: string,
  credentials: { certPem?: string; keyPem?: string },
  windowMs = 2_000,
): Promise<"open" | `refused: ${string}`> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host,
      port: meshPort,
      // The probe tests the server's check of the client; it does not check the server.
      rejectUnauthorized: false,
      // The mesh's flow protocol (ADR 0046): without it even a member is closed at once.
      ALPNProtocols: ["cloudless-mesh/1"],
      ...(credentials.certPem ? { cert: credentials.certPem, key: credentials.keyPem } : {}),
    });
    let received = 0;
    let settled = false;
    const finish = (outcome: "open" | `refused: ${string}`) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => finish("open"), windowMs);
    socket.on("data", (chunk: Buffer) => {
      received += chunk.length;
    });
    socket.once("error", (err: NodeJS.ErrnoException) =>
      finish(received > 0 ? "open" : `refused: ${err.code ?? err.message}`),
    );
    socket.once("close", () => finish(received > 0 ? "open" : "refused: closed"));
  });
}

/** A CA of another cluster and a client certificate it signed for `commonName`. */
function foreignNodeCredentials(
  dir: string,
  commonName: string,
): { certPem: string; keyPem: string } {
  const file = (name: string) => path.join(dir, name);
  const openssl = (args: string[]) => execFileSync("openssl", args, { stdio: "pipe" });
  openssl([
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    file("other-ca.key"),
    "-out",
    file("other-ca.crt"),
    "-subj",
    "/CN=other-cluster-ca",
    "-days",
    "1",
  ]);
  openssl([
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    file("node.key"),
    "-out",
    file("node.csr"),
    "-subj",
    `/CN=${commonName}`,
  ]);
  openssl([
    "x509",
    "-req",
    "-in",
    file("node.csr"),
    "-CA",
    file("other-ca.crt"),
    "-CAkey",
    file("other-ca.key"),
    "-CAcreateserial",
    "-out",
    file("node.crt"),
    "-days",
    "1",
  ]);
  return {
    certPem: readFileSync(file("node.crt"), "utf8"),
    keyPem: readFileSync(file("node.key"), "utf8"),
  };
}

function nodeCredentials(sl: ServiceLab, node: string): { certPem: string; keyPem: string } {
  const dir = sl.agentDirs.get(node) as string;
  return {
    certPem: readFileSync(path.join(dir, "node.crt"), "utf8"),
    keyPem: readFileSync(path.join(dir, "node.key"), "utf8"),
  };
}

describe.skipIf(unavailable !== undefined)(
  "issue 14 service networking on a five-host NAT lab",
  () => {
    let sl: ServiceLab;
    let a: LabHost;
    let d: LabHost;
    let e: LabHost;

    beforeAll(async () => {
      sl = await startServiceLab(
        [
          { name: "a", zone: "a", labels: { host: "a" } },
          { name: "b", zone: "b", labels: { host: "b" }, relay: true },
          { name: "c", zone: "b", labels: { host: "c" } },
          { name: "d", zone: "c", labels: { host: "d" }, behindNat: true },
          { name: "e", zone: "c", labels: { host: "e" }, behindNat: true },
        ],
        "a",
      );
      [a, d, e] = [sl.lab.host("a"), sl.lab.host("d"), sl.lab.host("e")];
      await applyServiceWorkload(sl, httpWorkload(sl, "web-a", "a", { service: "web", weight: 1 }));
      await applyServiceWorkload(sl, httpWorkload(sl, "web-b", "b", { service: "web", weight: 1 }));
      await applyServiceWorkload(sl, httpWorkload(sl, "web-c", "c", { service: "web", weight: 2 }));
      await applyServiceWorkload(sl, httpWorkload(sl, "only-d", "d"));
      await waitForEndpoints(sl, "web", 3, ["a", "b", "c"]);
      await waitForEndpoints(sl, "only-d", 1, ["d"]);
    }, 240_000);

    afterAll(async () => {
      await sl?.lab.dispose();
    });

    it("REQ-041 REQ-042 REQ-003 a client on D (behind NAT, in a zone without web) resolves web.default.svc.cluster.local and 1,000 requests all succeed with shares within 5 points of 25/25/50 %", async () => {
      const web = await getService(sl, "web");
      expect(web.dnsName).toBe(dnsName("web"));
      expect(web.ports.map((p) => [p.name, p.port])).toEqual([["http", webPort]]);
      // An endpoint's weight is the workload's times its revision's: compare ratios.
      const weights: Record<string, number> = Object.fromEntries(
        endpointsOf(web).map((ep) => [ep.node, ep.weight]),
      );
      expect(Object.keys(weights).sort()).toEqual(["a", "b", "c"]);
      expect(weights.a).toBeGreaterThan(0);
      const [wa, wb, wc] = [weights.a ?? 0, weights.b ?? 0, weights.c ?? 0];
      expect([wb / wa, wc / wa]).toEqual([1, 2]);
      // The agent's DNS in D's namespace: an A record for the VIP, an SRV record for the named port.
      expect(await dig(d, dnsName("web"))).toEqual([web.vip]);
      const srv = await dig(d, `_http._tcp.${dnsName("web")}`, "SRV");
      expect(
        srv.some((line) => line.includes(` ${webPort} `) && line.includes(dnsName("web"))),
      ).toBe(true);
      expect(await dig(d, dnsName("no-such-service"))).toEqual([]);

      const result = await requestBatch(d, {
        target: dnsName("web"),
        port: webPort,
        count: 1_000,
        concurrency: 4,
      });
      console.log(`REQ-042 weighted shares from D: ${JSON.stringify(result)}`);
      expect(result.failed, JSON.stringify(result.errors)).toBe(0);
      expect(result.ok).toBe(1_000);
      for (const [node, expected] of [
        ["a", 25],
        ["b", 25],
        ["c", 50],
      ] as const) {
        expect(
          Math.abs(percent(result.byNode[node] ?? 0, 1_000) - expected),
          node,
        ).toBeLessThanOrEqual(5);
      }
    });

    it("REQ-003 REQ-040 REQ-060 a service whose only replica is on D, called from E (both behind NAT), works over a relay, and network peers on E says relayed", async () => {
      const result = await requestBatch(e, { target: dnsName("only-d"), port: webPort, count: 50 });
      expect(result.failed, JSON.stringify(result.errors)).toBe(0);
      expect(result.byNode).toEqual({ d: 50 });
      const peer = await waitFor(
        "E's view of D in network peers",
        async () => (await networkPeers(sl, "e")).find((p) => p.node === "d"),
        30_000,
        500,
      );
      console.log(`REQ-003 E → D: ${JSON.stringify(peer)}`);
      expect(peer.path).toBe("relayed");
      expect(peer.via ?? "").not.toBe("");
      expect(Number(peer.bytesSent ?? 0)).toBeGreaterThan(0);
      // D dials out to A, which can be dialled: that path is direct.
      const dToA = (await networkPeers(sl, "d")).find((p) => p.node === "a");
      expect(dToA?.path).toBe("direct");
    });

    it("REQ-042 locality: a client in zone a with a ready local replica sends ≥ 95 % there; when its readiness fails traffic moves to other zones with no failed request, and comes back when it is ready", async () => {
      const loop = await RequestLoop.start(a, {
        target: dnsName("web"),
        port: webPort,
        ratePerSec: 20,
      });
      let records: RequestRecord[] = [];
      try {
        await loop.waitForMore(100);
        const local = loop.records();
        expect(percent(shares(local).a ?? 0, local.length), summary(local)).toBeGreaterThanOrEqual(
          95,
        );

        setReady(sl, "web-a", false);
        const notReadyAtMs = await waitFor(
          "web-a's endpoint to be not ready",
          async () =>
            endpointOn(await getService(sl, "web"), "a")?.ready === false ? Date.now() : undefined,
          30_000,
          100,
        );
        await waitFor(
          "40 requests after the change had time to reach the proxy",
          () => loop.records().filter((r) => r.s > notReadyAtMs + propagationSlackMs).length >= 40,
          30_000,
          100,
        );
        const away = loop.records().filter((r) => r.s > notReadyAtMs + propagationSlackMs);
        expect(shares(away).a ?? 0, summary(away)).toBe(0);

        setReady(sl, "web-a", true);
        const readyAtMs = await waitFor(
          "web-a's endpoint to be ready again",
          async () =>
            endpointOn(await getService(sl, "web"), "a")?.ready === true ? Date.now() : undefined,
          30_000,
          100,
        );
        await waitFor(
          "40 requests after the return had time to reach the proxy",
          () => loop.records().filter((r) => r.s > readyAtMs + propagationSlackMs).length >= 40,
          30_000,
          100,
        );
        const back = loop.records().filter((r) => r.s > readyAtMs + propagationSlackMs);
        expect(percent(shares(back).a ?? 0, back.length), summary(back)).toBeGreaterThanOrEqual(95);
      } finally {
        setReady(sl, "web-a", true);
        records = await loop.stop();
      }
      console.log(`REQ-042 locality loop on A: ${summary(records)}`);
      expect(
        records.filter((r) => !r.ok),
        summary(records),
      ).toEqual([]);
    });

    it("NFR-A1 all coordinators down for 60 s: clients on D and E keep resolving and reaching services (direct and relayed) with zero failed requests", async () => {
      const loops = [
        await RequestLoop.start(d, { target: dnsName("web"), port: webPort, ratePerSec: 20 }),
        await RequestLoop.start(e, { target: dnsName("only-d"), port: webPort, ratePerSec: 10 }),
      ];
      const results: RequestRecord[][] = [];
      const marks: Record<string, number> = {};
      try {
        await Promise.all(loops.map((loop) => loop.waitForMore(20)));
        const downAtMs = Date.now();
        marks.killed = downAtMs;
        await sl.lab.kill9(sl.coordinator.process);
        await waitFor(
          `the ${outageMs / 1000} s coordinator outage`,
          () => Date.now() - downAtMs >= outageMs,
          outageMs + 5_000,
          500,
        );
        const duringOutage = loops.map((loop) => loop.records().filter((r) => r.s > downAtMs));
        marks.restarted = Date.now();
        await startCoordinator(sl.coordinator);
        sl.cluster.coordinator = sl.coordinator.process;
        for (const node of ["a", "b", "c", "d", "e"]) {
          await sl.cluster.waitForStatus(node, "Ready", 60_000);
        }
        marks.allReady = Date.now();
        for (const records of duringOutage) expect(records.length).toBeGreaterThan(0);
      } finally {
        for (const loop of loops) results.push(await loop.stop());
      }
      const [fromD, fromE] = results as [RequestRecord[], RequestRecord[]];
      console.log(
        `NFR-A1 outage: D → web ${summary(fromD)}; failures ${failureTimeline(fromD, marks)}. E → only-d ${summary(fromE)}; failures ${failureTimeline(fromE, marks)}`,
      );
      // 60 s at 20/s and 10/s: most of the requests ran while no coordinator was up.
      expect(fromD.length).toBeGreaterThanOrEqual(Math.floor((outageMs / 1000) * 20 * 0.8));
      expect(
        fromD.filter((r) => !r.ok),
        summary(fromD),
      ).toEqual([]);
      expect(
        fromE.filter((r) => !r.ok),
        summary(fromE),
      ).toEqual([]);
    });

    it("REQ-040 REQ-060 encryption: a capture on every lab link while marker requests cross nodes, direct (D → web) and relayed (E → only-d), never shows the marker; the same capture finds a plaintext control marker", async () => {
      const secret = `secret-marker-${sl.lab.id}`;
      const control = `control-marker-${sl.lab.id}`;
      const webA = endpointOn(await getService(sl, "web"), "a");
      const capture = await sl.lab.startCapture("mesh");
      const direct = await requestBatch(d, {
        target: dnsName("web"),
        port: webPort,
        count: 30,
        body: secret,
      });
      const relayed = await requestBatch(e, {
        target: dnsName("only-d"),
        port: webPort,
        count: 30,
        body: secret,
      });
      // The control: the same kind of request straight to a replica's host port, in the clear.
      const plain = await requestBatch(d, {
        target: a.ip,
        port: webA?.hostPorts.http as number,
        count: 1,
        body: control,
      });
      const stats = await capture.stop();
      console.log(`REQ-040 capture: ${JSON.stringify(stats)}`);
      expect(direct.ok, JSON.stringify(direct.errors)).toBe(30);
      expect(relayed.ok, JSON.stringify(relayed.errors)).toBe(30);
      expect(relayed.byNode).toEqual({ d: 30 });
      expect(plain.ok).toBe(1);
      for (const point of stats) expect(point.lost, point.where).toBe(0);
      expect(await capture.findMarker(control)).toContain(`bridge ${sl.lab.bridge}`);
      expect(await capture.findMarker(secret)).toEqual([]);
    });

    it("REQ-042 kill -9 of the node holding one of three replicas during a 20 req/s loop: only requests in flight at the kill fail (counted and printed), none started after it", async () => {
      const loop = await RequestLoop.start(d, {
        target: dnsName("web"),
        port: webPort,
        ratePerSec: 20,
      });
      let records: RequestRecord[] = [];
      let killStartMs = 0;
      let killedAtMs = 0;
      try {
        await loop.waitForMore(40);
        killStartMs = Date.now();
        // The machine dies: its agent (proxy, mesh listener) and its replica, at once.
        await sl.lab.host("b").killAll();
        // b is surely dead from here; a request started before may still have reached it.
        killedAtMs = Date.now();
        // Counted the way the assertions below count: by start time, not by finish time.
        await loop.waitForStartedAfter(killedAtMs, 200, 60_000);
      } finally {
        records = await loop.stop();
      }
      const failed = records.filter((r) => !r.ok);
      const inFlight = failed.filter((r) => r.s <= killedAtMs && r.e >= killStartMs);
      const after = records.filter((r) => r.s > killedAtMs);
      console.log(
        `REQ-042 kill -9 of b: ${summary(records)}; ${inFlight.length} failed in flight at the kill; ${after.length} started after it`,
      );
      expect(failed, "every failed request was in flight when b died").toEqual(inFlight);
      expect(after.filter((r) => !r.ok)).toEqual([]);
      expect(after.length).toBeGreaterThanOrEqual(200);
      expect(shares(after).b ?? 0).toBe(0);
    });

    it("REQ-040 REQ-060 the mesh port refuses a TLS client without a certificate, with another cluster's CA, and with a deleted node's certificate, and keeps a member's connection", async () => {
      const memberC = nodeCredentials(sl, "c");
      const deletedB = nodeCredentials(sl, "b");
      const foreign = foreignNodeCredentials(
        await sl.lab.resources.tempDir("cloudless-other-ca-"),
        "c",
      );
      // The positive control first: a member's certificate is held open.
      expect(await meshProbe(a.ip, memberC)).toBe("open");
      expect(await meshProbe(a.ip, {})).toMatch(/^refused/);
      expect(await meshProbe(a.ip, foreign)).toMatch(/^refused/);

      // b died in the previous scenario; deleting it revokes its certificate.
      const deleted = await sl.cluster.cli(["node", "delete", "b"]);
      expect(deleted.code, deleted.stderr).toBe(0);
      // The deletion reaches a's agent with the next network snapshot.
      const outcome = await waitFor(
        "a's mesh port to refuse b's certificate",
        async () => {
          const result = await meshProbe(a.ip, deletedB);
          return result.startsWith("refused") ? result : undefined;
        },
        30_000,
        500,
      );
      console.log(`REQ-060 deleted node's certificate: ${outcome}`);
      expect(await meshProbe(a.ip, memberC)).toBe("open");
    });

    it("REQ-040 cleanup: stopped agents leave no nftables table, address or listener in their hosts, and the lab leaves nothing behind", async () => {
      for (const [name, agent] of sl.agents) {
        if (!agent.running) continue;
        const code = await agent.stop(15_000);
        // b was deleted (its agent is only alive when the kill -9 scenario was filtered out).
        if (name !== "b") expect(code, `agent ${name}'s exit code`).toBe(0);
      }
      // The coordinator on a is no agent's: it goes first, so a's listeners are the agent's.
      expect(await sl.coordinator.process.stop(15_000), "the coordinator's exit code").toBe(0);
      const residue: string[] = [];
      for (const host of sl.lab.hosts) {
        const left = await agentResidue(host);
        // b was killed with -9 (and then deleted): its table and addresses are what a
        // crashed agent leaves in the kernel until it starts again, not a stop's leftovers.
        // They are printed, and go with the lab below (asserted by assertNoLeaks).
        if (host.name === "b") console.log(`REQ-040 left by b's kill -9: ${JSON.stringify(left)}`);
        else residue.push(...left);
      }
      expect(residue).toEqual([]);
      await sl.lab.dispose();
      await assertNoLeaks(sl.lab.id);
    });
  },
);

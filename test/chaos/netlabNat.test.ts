/**
 * Proves the lab's NAT hosts and packet capture (issue 14, test/helpers/netlab.ts): a host
 * behind NAT dials out and is seen as its router's lab address, nobody dials in (not even
 * a host that routes its private subnet to the router), two NAT hosts cannot reach each
 * other's private addresses, a capture on the lab links finds a marker sent in plaintext
 * (so "not found" in the encryption test can fail), and routers leave nothing behind,
 * through dispose and through the startup sweep.
 */
import { writeFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  assertNoLeaks,
  findLabLeaks,
  type LabHost,
  NetLab,
  netlabUnavailableReason,
  sweepStaleLabs,
  waitForOutput,
} from "../helpers/netlab.js";

const unavailable = await netlabUnavailableReason();
if (unavailable) console.log(`NAT lab tests skipped: ${unavailable}`);

const port = 7070;

/** Answers each connection with the peer address it saw, then closes. */
const peerEchoScript = `
const net = require("node:net");
const [host, port] = process.argv.slice(1);
net.createServer((s) => { s.on("error", () => {}); s.end("peer " + s.remoteAddress + "\\n"); })
  .listen(Number(port), host, () => console.log("listening on " + host + ":" + port));
`;

/** Connects, sends `payload`, waits for the server to close. */
const sendScript = `
const net = require("node:net");
const [host, port, payload] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port) }, () => s.end(payload));
s.on("data", () => {});
s.on("close", () => { console.log("sent"); process.exit(0); });
s.on("error", (e) => { console.log(e.code); process.exit(0); });
setTimeout(() => { console.log("timeout"); process.exit(0); }, 3000);
`;

describe.skipIf(unavailable !== undefined)(
  "NFR-R1 harness: lab hosts behind NAT (for REQ-003)",
  () => {
    let lab: NetLab;
    let a: LabHost;
    let b: LabHost;
    let d: LabHost;
    let e: LabHost;

    beforeAll(async () => {
      lab = await NetLab.create([
        { name: "a", zone: "a" },
        { name: "b", zone: "b" },
        { name: "d", zone: "c", behindNat: true },
        { name: "e", zone: "c", behindNat: true },
      ]);
      [a, b, d, e] = lab.hosts as [LabHost, LabHost, LabHost, LabHost];
      for (const host of lab.hosts) await host.serveTcp(port);
    });

    afterAll(async () => {
      await lab?.dispose();
      if (lab) await assertNoLeaks(lab.id);
    });

    it("NFR-R1 harness (NAT): a host behind NAT dials out and is seen as its router's lab address; its default route is its router", async () => {
      expect(d.nat).toBeDefined();
      expect(d.ip).not.toBe(d.publicIp);
      expect(d.ip.startsWith("192.168.")).toBe(true);
      expect(d.publicIp.startsWith(`${lab.subnet}.`)).toBe(true);
      const echo = a.spawn(process.execPath, ["-e", peerEchoScript, a.ip, String(port + 1)]);
      await waitForOutput(echo, "listening on", "the peer echo on a");
      expect(await d.request(a.ip, port + 1, `peer ${d.publicIp}`)).toBe(`peer ${d.publicIp}`);
      expect(await d.probeTcp(a.ip, port)).toBe("connected");
      expect(await d.probeTcp(lab.rootIp, port + 2)).toBe("ECONNREFUSED");
      const routes = await d.exec("ip", ["-4", "route", "show", "default"]);
      expect(routes.stdout).toContain(`via ${d.nat?.gatewayIp}`);
      // A host on the bridge is still a plain lab host.
      expect(a.nat).toBeUndefined();
      expect(a.publicIp).toBe(a.ip);
    });

    it("NFR-R1 harness (NAT): no inbound — a bridge host cannot reach D's private address, even with a route to it through D's router", async () => {
      expect(await a.probeTcp(d.ip, port)).not.toBe("connected");
      // Routed to the router, the SYN is dropped there (forward policy drop): a silent timeout.
      const route = ["route", "add", d.nat?.privateSubnet as string, "via", d.publicIp];
      expect((await a.exec("ip", route)).code).toBe(0);
      try {
        expect(await a.probeTcp(d.ip, port, 1_500)).toBe("timeout");
        // Nothing listens on the router itself either.
        expect(await a.probeTcp(d.publicIp, port)).toBe("ECONNREFUSED");
      } finally {
        await a.exec("ip", ["route", "del", d.nat?.privateSubnet as string]);
      }
    });

    it("NFR-R1 harness (NAT): two hosts behind their own NATs cannot reach each other's private addresses, but both reach the bridge hosts", async () => {
      expect(await d.probeTcp(e.ip, port)).not.toBe("connected");
      expect(await e.probeTcp(d.ip, port)).not.toBe("connected");
      expect(await e.probeTcp(b.ip, port)).toBe("connected");
      expect(await d.probeTcp(b.ip, port)).toBe("connected");
    });

    it("NFR-R1 harness (capture): a capture on the lab links finds a marker sent in plaintext (bridge and NAT private link) and not one never sent", async () => {
      const capture = await lab.startCapture("plain");
      const marker = `plain-marker-${lab.id}-${Date.now()}`;
      const sent = await d.exec(process.execPath, ["-e", sendScript, a.ip, String(port), marker]);
      expect(sent.stdout.trim()).toBe("sent");
      const stats = await capture.stop();
      const found = await capture.findMarker(marker);
      expect(found).toContain(`bridge ${lab.bridge}`);
      expect(found).toContain("d's private link");
      expect(found).not.toContain("e's private link");
      expect(await capture.findMarker(`never-sent-${lab.id}`)).toEqual([]);
      for (const point of stats) {
        expect(point.lost, point.where).toBe(0);
        expect(Number.isNaN(point.captured), point.where).toBe(false);
      }
    });

    it("NFR-R1 harness (NAT): the startup sweep removes a crashed run's NAT router namespace and its table", async () => {
      const crashed = await NetLab.create([{ name: "n1", zone: "a", behindNat: true }]);
      const leftovers = await findLabLeaks(crashed.id);
      expect(leftovers.some((l) => l.includes("n1_nat") && l.includes("table ip cltest_nat"))).toBe(
        true,
      );
      // The owner of a crashed run is gone: pid 0 is never a live owner.
      writeFileSync(`/run/cloudless-netlab/${crashed.id}`, "0");
      const swept = await sweepStaleLabs();
      expect(swept).toContain(crashed.id);
      expect(swept).not.toContain(lab.id);
      await assertNoLeaks(crashed.id);
      await crashed.dispose();
      // This file's lab is untouched.
      expect(await d.probeTcp(a.ip, port)).toBe("connected");
    });
  },
);

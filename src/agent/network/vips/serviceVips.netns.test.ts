/**
 * ServiceVips in private network namespaces (REQ-042, REQ-041): real nftables, real
 * sockets. `host` is the node; `guest` is a container whose route to the service range
 * goes via the node over a veth. Nothing here touches the root namespace.
 */
import { readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createVipLab, NsDriver, netnsUnavailableReason, type VipLab } from "./testing/netnsLab.js";

const serviceCidr = "10.96.0.0/16";
const unavailable = await netnsUnavailableReason();
/** A refused connect comes back at once; a timeout would take the whole connect deadline. */
const refusedWithinMs = 1_000;
const connectTimeoutMs = 5_000;

describe.skipIf(unavailable !== undefined)("ServiceVips in network namespaces (REQ-042)", () => {
  let lab: VipLab;
  let host: NsDriver;
  let guest: NsDriver;
  let portOne = 0;
  let portTwo = 0;

  async function tableJson(): Promise<string | undefined> {
    const listed = await lab.exec(lab.host, "nft", ["-j", "list", "table", "ip", "cloudless"]);
    return listed.code === 0 ? listed.stdout : undefined;
  }
  async function ourRoutes(): Promise<unknown[]> {
    return JSON.parse(
      await lab.mustExec(lab.host, "ip", ["-j", "route", "show", "proto", "241"]),
    ) as unknown[];
  }
  async function routeLocalnet(): Promise<string> {
    return (
      await lab.mustExec(lab.host, "cat", ["/proc/sys/net/ipv4/conf/all/route_localnet"])
    ).trim();
  }
  async function reach(driver: NsDriver, vip: string, port: number): Promise<string> {
    const answer = await driver.send({
      op: "connect",
      host: vip,
      port,
      timeoutMs: connectTimeoutMs,
    });
    return answer.ok ? (answer.data ?? "") : `error ${answer.code}`;
  }

  beforeAll(async () => {
    lab = await createVipLab("v", serviceCidr);
    host = await NsDriver.start(lab.host);
    guest = await NsDriver.start(lab.guest);
    await host.must({ op: "vips", table: "cloudless", serviceCidr });
    portOne = (await host.must({ op: "listen", tag: "one" })).port ?? 0;
    portTwo = (await host.must({ op: "listen", tag: "two" })).port ?? 0;
  });

  afterAll(async () => {
    await host?.stop();
    await guest?.stop();
    await lab?.destroy();
  });

  it("REQ-042: unavailableReason finds nft and kernel nat support here (checked inside the namespace)", async () => {
    expect(await host.must({ op: "unavailableReason" })).toMatchObject({ data: "" });
  });

  it("REQ-042: a VIP:port reaches the listener on 127.0.0.1 from the node itself (output path)", async () => {
    expect(await routeLocalnet()).toBe("0");
    await host.must({
      op: "apply",
      forwards: [{ vip: "10.96.0.20", port: 80, protocol: "tcp", toPort: portOne }],
    });
    expect(await reach(host, "10.96.0.20", 80)).toBe("one");
    // No route covered the range in this namespace: ours is on lo, marked proto 241.
    expect(await ourRoutes()).toEqual([
      expect.objectContaining({ dst: serviceCidr, dev: "lo", prefsrc: "127.0.0.1" }),
    ]);
    expect(await routeLocalnet()).toBe("1");
  });

  it("REQ-042: a VIP:port reaches the listener from another namespace through the node (prerouting path, the container case)", async () => {
    expect(await reach(guest, "10.96.0.20", 80)).toBe("one");
  });

  it("REQ-042: replacing the set moves traffic; an unchanged set is not applied again", async () => {
    await host.must({
      op: "apply",
      forwards: [
        { vip: "10.96.0.20", port: 80, protocol: "tcp", toPort: portTwo },
        { vip: "10.96.0.21", port: 443, protocol: "tcp", toPort: portOne },
      ],
    });
    expect(await reach(host, "10.96.0.20", 80)).toBe("two");
    expect(await reach(guest, "10.96.0.20", 80)).toBe("two");
    expect(await reach(guest, "10.96.0.21", 443)).toBe("one");
    const before = await tableJson();
    await host.must({
      op: "apply",
      forwards: [
        { vip: "10.96.0.21", port: 443, protocol: "tcp", toPort: portOne },
        { vip: "10.96.0.20", port: 80, protocol: "tcp", toPort: portTwo },
      ],
    });
    // Same table handle and content: nothing was re-applied.
    expect(await tableJson()).toBe(before);
  });

  it("REQ-042: a changed UDP forward moves a client that keeps its source port (stale conntrack entries cleared)", async () => {
    const udpOne = (await host.must({ op: "listenUdp", tag: "udp-one" })).port ?? 0;
    const udpTwo = (await host.must({ op: "listenUdp", tag: "udp-two" })).port ?? 0;
    const tcpForward = { vip: "10.96.0.20", port: 80, protocol: "tcp" as const, toPort: portTwo };
    const ask = {
      op: "askUdp" as const,
      host: "10.96.0.53",
      port: 53,
      sourcePort: 40_053,
      timeoutMs: 3_000,
    };
    await host.must({
      op: "apply",
      forwards: [tcpForward, { vip: "10.96.0.53", port: 53, protocol: "udp", toPort: udpOne }],
    });
    expect(await host.send(ask)).toMatchObject({ ok: true, data: "udp-one" });
    await host.must({
      op: "apply",
      forwards: [tcpForward, { vip: "10.96.0.53", port: 53, protocol: "udp", toPort: udpTwo }],
    });
    expect(await host.send(ask)).toMatchObject({ ok: true, data: "udp-two" });
  });

  it("REQ-042: a VIP or port with no forward is refused at once, from the node and from a container", async () => {
    for (const driver of [host, guest]) {
      for (const [vip, port] of [
        ["10.96.0.20", 81],
        ["10.96.7.7", 80],
      ] as const) {
        const answer = await driver.send({
          op: "connect",
          host: vip,
          port,
          timeoutMs: connectTimeoutMs,
        });
        expect(answer).toMatchObject({ ok: false, code: "ECONNREFUSED" });
        expect(answer.ms).toBeLessThan(refusedWithinMs);
      }
    }
  });

  it("REQ-042: a bad set is refused with one line and leaves the table as it was", async () => {
    const before = await tableJson();
    const answer = await host.send({
      op: "apply",
      forwards: [
        { vip: "10.96.0.20", port: 80, protocol: "tcp", toPort: portOne },
        { vip: "192.168.1.1", port: 80, protocol: "tcp", toPort: portOne },
      ],
    });
    expect(answer).toMatchObject({
      ok: false,
      error: "VIP 192.168.1.1 is outside the service range 10.96.0.0/16",
    });
    expect(await tableJson()).toBe(before);
    expect(await reach(host, "10.96.0.20", 80)).toBe("two");
  });

  it("REQ-042: applies 1,000 services in one transaction (time printed) and they all route", async () => {
    const forwards = Array.from({ length: 1_000 }, (_, i) => ({
      vip: `10.96.${4 + Math.floor(i / 250)}.${(i % 250) + 1}`,
      port: 80,
      protocol: "tcp" as const,
      toPort: i % 2 === 0 ? portOne : portTwo,
    }));
    const applied = await host.must({ op: "apply", forwards });
    const unchanged = await host.must({ op: "apply", forwards });
    console.log(
      `ServiceVips: apply of 1,000 services took ${applied.ms?.toFixed(1)} ms; an unchanged re-apply ${unchanged.ms?.toFixed(2)} ms`,
    );
    expect(await reach(guest, "10.96.4.1", 80)).toBe("one");
    expect(await reach(host, "10.96.7.250", 80)).toBe("two");
  });

  it("REQ-042: where a route already covers the service range, ServiceVips adds none and removes none", async () => {
    // The guest routes the range via the node; run a second ServiceVips there.
    const routesBefore = await lab.mustExec(lab.guest, "ip", ["-j", "route", "show"]);
    await guest.must({ op: "vips", table: "cloudless", serviceCidr });
    await guest.must({
      op: "apply",
      forwards: [{ vip: "10.96.0.99", port: 80, protocol: "tcp", toPort: 9 }],
    });
    expect(await lab.mustExec(lab.guest, "ip", ["-j", "route", "show"])).toBe(routesBefore);
    await guest.must({ op: "remove" });
    expect(await lab.mustExec(lab.guest, "ip", ["-j", "route", "show"])).toBe(routesBefore);
    expect((await lab.mustExec(lab.guest, "nft", ["list", "ruleset"])).trim()).toBe("");
  });

  it("REQ-042 NFR-S1: route_localnet does not open the node's loopback-only services to a neighbour", async () => {
    await host.must({
      op: "apply",
      forwards: [{ vip: "10.96.4.1", port: 80, protocol: "tcp", toPort: portOne }],
    });
    expect(await routeLocalnet()).toBe("1");
    // The guest sends packets for 127.0.0.1 to the node over the veth, as a hostile
    // neighbour on the node's link could: a rule ahead of its own `local` table, and
    // route_localnet in the guest so its kernel lets them out.
    const hostile = [
      "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet",
      `ip route add 127.0.0.1/32 via ${lab.hostAddress} table 100`,
      "ip rule add pref 10 to 127.0.0.1 iif lo lookup 100",
      "ip rule add pref 20 lookup local",
      "ip rule del pref 0",
    ];
    await lab.mustExec(lab.guest, "sh", ["-c", hostile.join(" && ")]);
    try {
      const answer = await guest.send({
        op: "connect",
        host: "127.0.0.1",
        port: portOne,
        timeoutMs: 1_500,
      });
      // Dropped on the node's input hook (silently, as a martian would be without
      // route_localnet), so the listener on 127.0.0.1 never sees it.
      expect(answer).toMatchObject({ ok: false, code: "TIMEOUT" });
      // The DNATed path from the same neighbour still works.
      expect(await reach(guest, "10.96.4.1", 80)).toBe("one");
    } finally {
      await lab.mustExec(lab.guest, "sh", [
        "-c",
        "ip rule add pref 0 lookup local && ip rule del pref 20 && ip rule del pref 10 && ip route flush table 100",
      ]);
    }
  });

  it("REQ-042: remove() leaves no table, no route and route_localnet as it found it, even after the agent was killed", async () => {
    // An agent killed with -9 forgets what it changed; the table's comment remembers.
    await host.must({
      op: "apply",
      forwards: [{ vip: "10.96.0.20", port: 80, protocol: "tcp", toPort: portOne }],
    });
    // The driver that applied is killed; a fresh one, which never applied, removes.
    await host.kill();
    host = await NsDriver.start(lab.host);
    await host.must({ op: "vips", table: "cloudless", serviceCidr });
    expect(await routeLocalnet()).toBe("1");
    await host.must({ op: "remove" });
    expect(await tableJson()).toBeUndefined();
    expect(await ourRoutes()).toEqual([]);
    expect(await routeLocalnet()).toBe("0");
    expect((await lab.mustExec(lab.host, "nft", ["list", "ruleset"])).trim()).toBe("");
    // Idempotent.
    await host.must({ op: "remove" });
    expect(await routeLocalnet()).toBe("0");
    // Every nft transaction went through a private temporary file; none is left.
    expect((await readdir(tmpdir())).filter((name) => name.startsWith("cloudless-nft-"))).toEqual(
      [],
    );
  });
});

describe.skipIf(unavailable !== undefined)("DNS on a service VIP (REQ-041, REQ-042)", () => {
  let lab: VipLab;
  let host: NsDriver;

  beforeAll(async () => {
    lab = await createVipLab("d", serviceCidr);
    host = await NsDriver.start(lab.host);
  });

  afterAll(async () => {
    await host?.stop();
    await lab?.destroy();
  });

  it("REQ-041: dig asks the DNS VIP (udp and tcp) and ServiceVips forwards it to the agent's DnsServer on 127.0.0.1", async () => {
    const dnsPort =
      (
        await host.must({
          op: "dns",
          clusterDomain: "cluster.local",
          services: [{ namespace: "default", name: "web", vip: "10.96.0.20" }],
        })
      ).port ?? 0;
    await host.must({ op: "vips", table: "cloudless", serviceCidr });
    await host.must({
      op: "apply",
      forwards: [
        { vip: "10.96.0.10", port: 53, protocol: "udp", toPort: dnsPort },
        { vip: "10.96.0.10", port: 53, protocol: "tcp", toPort: dnsPort },
      ],
    });
    for (const namespace of [lab.host, lab.guest]) {
      for (const transport of ["+notcp", "+tcp"]) {
        const answer = await lab.mustExec(namespace, "dig", [
          ...["@10.96.0.10", "+tries=1", "+time=3", "+short", transport],
          "web.default.svc.cluster.local",
          "A",
        ]);
        expect(answer.trim(), `${namespace} ${transport}`).toBe("10.96.0.20");
      }
    }
    await host.must({ op: "remove" });
  });
});

/**
 * The agent's DNS server (REQ-041), asked by `dig` — a resolver someone else wrote —
 * over UDP and TCP on 127.0.0.1, with a second DnsServer as the upstream for forwarded
 * names.
 */
import { spawn } from "node:child_process";
import * as dgram from "node:dgram";
import * as net from "node:net";
import { create } from "@bufbuild/protobuf";
import dnsPacket from "dns-packet";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Service, ServiceSchema } from "../../../api/gen/cloudless/v1/service_pb.js";
import { ManualClock, systemClock } from "../../../lib/clock.js";
import { silentLogger } from "../../../observe/logger.js";
import {
  DnsServer,
  forwardTimeoutMs,
  maxForwardsInFlight,
  maxQueryBytes,
  maxTcpConnections,
  resolvConfNameservers,
  tcpIdleTimeoutMs,
} from "./dnsServer.js";

interface DigResult {
  status: string;
  flags: string[];
  answer: string[][];
  authority: string[][];
  additional: string[][];
  raw: string;
}

function section(output: string, title: string): string[][] {
  const start = output.indexOf(`;; ${title} SECTION:`);
  if (start < 0) return [];
  const lines: string[][] = [];
  for (const line of output.slice(start).split("\n").slice(1)) {
    if (line.trim() === "") break;
    lines.push(line.trim().split(/\s+/));
  }
  return lines;
}

function dig(port: number, args: string[]): Promise<DigResult> {
  return new Promise((resolve, reject) => {
    const child = spawn("dig", ["@127.0.0.1", "-p", String(port), "+tries=1", "+time=3", ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let raw = "";
    child.stdout.on("data", (chunk: Buffer) => {
      raw += chunk.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    child.once("error", reject);
    child.once("close", () => {
      clearTimeout(timer);
      resolve({
        status: /status: (\w+)/.exec(raw)?.[1] ?? "NO-ANSWER",
        flags: (/flags: ([a-z ]+);/.exec(raw)?.[1] ?? "").trim().split(" "),
        answer: section(raw, "ANSWER"),
        authority: section(raw, "AUTHORITY"),
        additional: section(raw, "ADDITIONAL"),
        raw,
      });
    });
  });
}

function service(namespace: string, name: string, vip: string, ports: [string, number][]): Service {
  return create(ServiceSchema, {
    namespace,
    name,
    vip,
    ports: ports.map(([portName, port]) => ({ name: portName, port, protocol: "tcp" })),
  });
}

/** Sends one UDP datagram and returns the first answer, or undefined after timeoutMs. */
function udpExchange(
  port: number,
  message: Buffer,
  timeoutMs = 1_000,
): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket("udp4");
    const timer = setTimeout(() => {
      socket.close();
      resolve(undefined);
    }, timeoutMs);
    socket.on("message", (answer) => {
      clearTimeout(timer);
      socket.close();
      resolve(answer);
    });
    socket.send(message, port, "127.0.0.1");
  });
}

/** Polls a condition until it holds or the deadline passes (no fixed sleeps). */
async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadline)
    await new Promise((resolve) => setTimeout(resolve, 10));
}

const digUsable = await new Promise<boolean>((resolve) => {
  const child = spawn("dig", ["-v"], { stdio: "ignore" });
  child.once("error", () => resolve(false));
  child.once("close", (code) => resolve(code === 0));
});

describe.skipIf(!digUsable)("DnsServer with dig (REQ-041)", () => {
  const domain = "cluster.test";
  const longName = `a${"b".repeat(61)}c`;
  let server: DnsServer;
  let upstream: DnsServer;
  let noUpstream: DnsServer;
  let deadUpstream: DnsServer;
  let port: number;

  beforeAll(async () => {
    upstream = new DnsServer({
      host: "127.0.0.1",
      port: 0,
      upstreams: [],
      logger: silentLogger,
      clock: systemClock,
    });
    upstream.setServices("outside.example", [
      service("ext", "api", "10.200.0.7", [["https", 443]]),
    ]);
    const upstreamPort = (await upstream.start()).port;
    server = new DnsServer({
      host: "127.0.0.1",
      port: 0,
      upstreams: [`127.0.0.1:${upstreamPort}`],
      logger: silentLogger,
      clock: systemClock,
    });
    server.setServices(domain, [
      service("default", "web", "10.96.0.20", [
        ["http", 8080],
        ["metrics", 9090],
      ]),
      service("shop", "db", "10.96.0.30", [["postgres", 5432]]),
      service(longName, longName, "10.96.0.40", [["http", 80]]),
    ]);
    port = (await server.start()).port;
    noUpstream = new DnsServer({
      host: "127.0.0.1",
      port: 0,
      upstreams: [],
      logger: silentLogger,
      clock: systemClock,
    });
    noUpstream.setServices(domain, []);
    // A port nobody listens on: the upstream refuses with ICMP at once.
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const closedPort = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    deadUpstream = new DnsServer({
      host: "127.0.0.1",
      port: 0,
      upstreams: [`127.0.0.1:${closedPort}`],
      logger: silentLogger,
      clock: systemClock,
    });
    deadUpstream.setServices(domain, []);
  });

  afterAll(async () => {
    for (const s of [server, upstream, noUpstream, deadUpstream]) await s?.stop();
  });

  for (const transport of ["udp", "tcp"] as const) {
    const extra = transport === "tcp" ? ["+tcp"] : [];

    it(`REQ-041: answers a service's A record with its VIP, case-insensitively, authoritatively (${transport})`, async () => {
      const result = await dig(port, [...extra, "WEB.Default.svc.CLUSTER.test", "A"]);
      expect(result.status).toBe("NOERROR");
      expect(result.flags).toContain("aa");
      expect(result.answer).toEqual([
        ["WEB.Default.svc.CLUSTER.test.", "5", "IN", "A", "10.96.0.20"],
      ]);
    });

    it(`REQ-041: answers SRV for a named port with the A record in additionals (${transport})`, async () => {
      const result = await dig(port, [
        ...extra,
        "_metrics._tcp.web.default.svc.cluster.test",
        "SRV",
      ]);
      expect(result.status).toBe("NOERROR");
      expect(result.answer).toEqual([
        [
          "_metrics._tcp.web.default.svc.cluster.test.",
          "5",
          "IN",
          "SRV",
          "0",
          "100",
          "9090",
          "web.default.svc.cluster.test.",
        ],
      ]);
      expect(result.additional).toContainEqual([
        "web.default.svc.cluster.test.",
        "5",
        "IN",
        "A",
        "10.96.0.20",
      ]);
    });

    it(`REQ-041: unknown names are NXDOMAIN with the SOA, AAAA of a service is empty NOERROR (${transport})`, async () => {
      const unknown = await dig(port, [...extra, "nope.default.svc.cluster.test", "A"]);
      expect(unknown.status).toBe("NXDOMAIN");
      expect(unknown.authority[0]?.slice(0, 4)).toEqual(["cluster.test.", "5", "IN", "SOA"]);
      const unknownPort = await dig(port, [
        ...extra,
        "_nope._tcp.web.default.svc.cluster.test",
        "SRV",
      ]);
      expect(unknownPort.status).toBe("NXDOMAIN");
      const aaaa = await dig(port, [...extra, "web.default.svc.cluster.test", "AAAA"]);
      expect(aaaa.status).toBe("NOERROR");
      expect(aaaa.answer).toEqual([]);
      expect(aaaa.authority[0]?.[3]).toBe("SOA");
      // A name that exists only as a parent of services is NOERROR with no answer.
      const namespace = await dig(port, [...extra, "default.svc.cluster.test", "A"]);
      expect(namespace.status).toBe("NOERROR");
      expect(namespace.answer).toEqual([]);
    });

    it(`REQ-041: forwards names outside the cluster domain to the upstream and relays its answer (${transport})`, async () => {
      const before = server.stats().forwarded;
      const result = await dig(port, [...extra, "api.ext.svc.outside.example", "A"]);
      expect(result.status).toBe("NOERROR");
      expect(result.answer).toEqual([
        ["api.ext.svc.outside.example.", "5", "IN", "A", "10.200.0.7"],
      ]);
      // The upstream's NXDOMAIN is an answer too, relayed as it is.
      const missing = await dig(port, [...extra, "missing.outside.example", "A"]);
      expect(missing.status).toBe("NXDOMAIN");
      expect(server.stats().forwarded).toBe(before + 2);
    });

    it(`REQ-041: SERVFAIL when there is no upstream or the upstream is down (${transport})`, async () => {
      const none = await dig((await startIfNeeded(noUpstream)).port, [
        ...extra,
        "example.org",
        "A",
      ]);
      expect(none.status).toBe("SERVFAIL");
      const dead = await dig((await startIfNeeded(deadUpstream)).port, [
        ...extra,
        "example.org",
        "A",
      ]);
      expect(dead.status).toBe("SERVFAIL");
      // The upstream's refusal (ICMP port-unreachable on a connected UDP socket) fails the
      // forward at once, not after its deadline; timed without dig's own start-up.
      const deadPort = (await startIfNeeded(deadUpstream)).port;
      const query = dnsPacket.encode({
        type: "query",
        id: 99,
        questions: [{ type: "A", name: "example.org" }],
      });
      const asked = performance.now();
      const answer = await udpExchange(deadPort, query, forwardTimeoutMs * 2);
      expect(answer && dnsPacket.decode(answer)).toMatchObject({ id: 99, rcode: "SERVFAIL" });
      expect(performance.now() - asked).toBeLessThan(forwardTimeoutMs / 2);
    });
  }

  it("REQ-041: an answer too long for 512 bytes of UDP is truncated and dig gets it over TCP", async () => {
    const name = `_http._tcp.${longName}.${longName}.svc.cluster.test`;
    const truncated = await dig(port, ["+noedns", "+ignore", name, "SRV"]);
    expect(truncated.flags).toContain("tc");
    expect(truncated.answer).toEqual([]);
    const full = await dig(port, ["+noedns", name, "SRV"]);
    expect(full.status).toBe("NOERROR");
    expect(full.answer[0]?.[6]).toBe("80");
  });

  it("REQ-041: garbage, a response, two questions and an oversized TCP length get FORMERR or silence, never a crash", async () => {
    const failedBefore = server.stats().failed;
    // Shorter than a header: nothing to answer to.
    expect(await udpExchange(port, Buffer.from([1, 2, 3]), 300)).toBeUndefined();
    // A header and junk: FORMERR with the same id.
    const junk = Buffer.concat([
      Buffer.from([0xbe, 0xef, 0x01, 0x00, 0x00, 0x01]),
      Buffer.alloc(6),
      Buffer.from("junk"),
    ]);
    const formerr = await udpExchange(port, junk);
    expect(formerr && dnsPacket.decode(formerr)).toMatchObject({ id: 0xbeef, rcode: "FORMERR" });
    // Two questions.
    const two = dnsPacket.encode({
      type: "query",
      id: 7,
      questions: [
        { type: "A", name: "web.default.svc.cluster.test" },
        { type: "A", name: "db.shop.svc.cluster.test" },
      ],
    });
    const twoAnswer = await udpExchange(port, two);
    expect(twoAnswer && dnsPacket.decode(twoAnswer)).toMatchObject({ id: 7, rcode: "FORMERR" });
    // A response is never answered (no reflection loops between two servers).
    const response = dnsPacket.encode({
      type: "response",
      id: 9,
      questions: [{ type: "A", name: "x.cluster.test" }],
    });
    expect(await udpExchange(port, response, 300)).toBeUndefined();
    // An opcode other than QUERY.
    const notify = Buffer.from(
      dnsPacket.encode({
        type: "query",
        id: 11,
        questions: [{ type: "SOA", name: "cluster.test" }],
      }),
    );
    notify.writeUInt16BE(notify.readUInt16BE(2) | (4 << 11), 2);
    const notImp = await udpExchange(port, notify);
    expect(notImp && dnsPacket.decode(notImp)).toMatchObject({ id: 11, rcode: "NOTIMP" });
    // TCP: a length beyond the query limit closes the connection.
    const closed = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        const framed = Buffer.alloc(2);
        framed.writeUInt16BE(maxQueryBytes + 1, 0);
        socket.write(framed);
      });
      socket.on("close", () => resolve(true));
      socket.on("error", () => undefined);
      setTimeout(() => resolve(false), 3_000);
    });
    expect(closed).toBe(true);
    expect(server.stats().failed).toBeGreaterThanOrEqual(failedBefore + 3);
    // Still serving.
    expect((await dig(port, ["web.default.svc.cluster.test", "A"])).answer[0]?.[4]).toBe(
      "10.96.0.20",
    );
  });

  it("REQ-041: measures queries per second over UDP (printed)", async () => {
    const total = 5_000;
    const concurrency = 64;
    const socket = dgram.createSocket("udp4");
    await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
    const pending = new Map<number, () => void>();
    socket.on("message", (answer) => {
      const id = answer.readUInt16BE(0);
      pending.get(id)?.();
      pending.delete(id);
    });
    let nextId = 0;
    let answered = 0;
    const started = performance.now();
    const worker = async (): Promise<void> => {
      while (nextId < total) {
        const id = nextId++;
        const query = dnsPacket.encode({
          type: "query",
          id,
          questions: [{ type: "A", name: "web.default.svc.cluster.test" }],
        });
        const ok = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), 2_000);
          pending.set(id, () => {
            clearTimeout(timer);
            resolve(true);
          });
          socket.send(query, port, "127.0.0.1");
        });
        if (ok) answered += 1;
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    const seconds = (performance.now() - started) / 1000;
    socket.close();
    console.log(
      `DnsServer: ${total} UDP A queries, ${concurrency} in flight: ${Math.round(total / seconds)} queries/s, ${answered} answered`,
    );
    expect(answered).toBeGreaterThan(total * 0.99);
  });

  async function startIfNeeded(s: DnsServer): Promise<{ port: number }> {
    const existing = started.get(s);
    if (existing) return existing;
    const result = await s.start();
    started.set(s, result);
    return result;
  }
  const started = new Map<DnsServer, { port: number }>();
});

describe("DnsServer limits and configuration (REQ-041)", () => {
  it("REQ-041: closes an idle TCP connection after tcpIdleTimeoutMs of the injected clock", async () => {
    const clock = new ManualClock();
    const server = new DnsServer({
      host: "127.0.0.1",
      port: 0,
      upstreams: [],
      logger: silentLogger,
      clock,
    });
    server.setServices("cluster.test", []);
    const { port } = await server.start();
    try {
      const socket = net.connect(port, "127.0.0.1");
      await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
      const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
      socket.on("error", () => undefined);
      // The server registers the connection's timer when it accepts it.
      const deadline = Date.now() + 5_000;
      let isClosed = false;
      void closed.then(() => {
        isClosed = true;
      });
      clock.advance(tcpIdleTimeoutMs - 1);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(isClosed).toBe(false);
      while (!isClosed && Date.now() < deadline) {
        clock.advance(1);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      expect(isClosed).toBe(true);
    } finally {
      await server.stop();
    }
  });

  it("REQ-041: beyond maxForwardsInFlight a forwarded query gets SERVFAIL at once instead of queueing", async () => {
    // An upstream that takes every query and never answers.
    const blackHole = dgram.createSocket("udp4");
    await new Promise<void>((resolve) => blackHole.bind(0, "127.0.0.1", resolve));
    const server = new DnsServer({
      host: "127.0.0.1",
      port: 0,
      upstreams: [`127.0.0.1:${blackHole.address().port}`],
      logger: silentLogger,
      clock: systemClock,
    });
    server.setServices("cluster.test", []);
    const { port } = await server.start();
    const client = dgram.createSocket("udp4");
    try {
      const total = maxForwardsInFlight + 40;
      const quickServfails = new Set<number>();
      const started = performance.now();
      client.on("message", (answer) => {
        const decoded = dnsPacket.decode(answer) as ReturnType<typeof dnsPacket.decode> & {
          rcode?: string;
        };
        // Well before the forward deadline: refused by the limit, not timed out.
        if (decoded.rcode === "SERVFAIL" && performance.now() - started < forwardTimeoutMs / 2) {
          quickServfails.add(decoded.id ?? -1);
        }
      });
      for (let id = 0; id < total; id++) {
        // In bursts of 32: one burst of 300 overflows the socket's receive buffer.
        if (id % 32 === 0) await new Promise((resolve) => setTimeout(resolve, 5));
        client.send(
          dnsPacket.encode({
            type: "query",
            id,
            questions: [{ type: "A", name: `n${id}.example.org` }],
          }),
          port,
          "127.0.0.1",
        );
      }
      await waitUntil(() => quickServfails.size >= total - maxForwardsInFlight, forwardTimeoutMs);
      expect(quickServfails.size).toBe(total - maxForwardsInFlight);
    } finally {
      client.close();
      await server.stop();
      blackHole.close();
    }
  });

  it("REQ-041: accepts at most maxTcpConnections TCP connections at once", async () => {
    const server = new DnsServer({
      host: "127.0.0.1",
      port: 0,
      upstreams: [],
      logger: silentLogger,
      clock: systemClock,
    });
    server.setServices("cluster.test", []);
    const { port } = await server.start();
    const sockets: net.Socket[] = [];
    try {
      let closedByServer = 0;
      for (let i = 0; i < maxTcpConnections + 5; i++) {
        const socket = net.connect(port, "127.0.0.1");
        socket.on("error", () => undefined);
        socket.on("close", () => {
          closedByServer += 1;
        });
        sockets.push(socket);
        await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
      }
      await waitUntil(() => closedByServer >= 5, 5_000);
      expect(closedByServer).toBe(5);
    } finally {
      for (const socket of sockets) socket.destroy();
      await server.stop();
    }
  });

  it("REQ-041: refuses bad configuration with one-line errors", () => {
    const base = { host: "127.0.0.1", port: 0, logger: silentLogger, clock: systemClock };
    expect(() => new DnsServer({ ...base, host: "localhost" })).toThrow(/not an IP address/);
    expect(() => new DnsServer({ ...base, port: 70_000 })).toThrow(/not 0-65535/);
    expect(() => new DnsServer({ ...base, upstreams: ["dns.example:53"] })).toThrow(
      /is not "ip" or "ip:port"/,
    );
    expect(
      () => new DnsServer({ ...base, upstreams: ["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"] }),
    ).toThrow(/limit of 3/);
    const server = new DnsServer({ ...base, upstreams: [] });
    expect(() => server.setServices("Bad_Domain", [])).toThrow(/is not a DNS name/);
  });

  it("REQ-041: reads the nameservers of resolv.conf", () => {
    expect(
      resolvConfNameservers(
        "# comment\nsearch lan\nnameserver 192.0.2.1\nnameserver  2001:db8::1\nnameserver bogus\noptions ndots:5\n",
      ),
    ).toEqual(["192.0.2.1", "2001:db8::1"]);
  });
});

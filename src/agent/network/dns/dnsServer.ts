/**
 * The agent's DNS server (REQ-041, ADR 0046): answers the cluster domain from the
 * service set the agent holds — so names keep resolving while every coordinator is down
 * (NFR-A1) — and forwards every other name to the host's resolvers.
 *
 * - `<svc>.<ns>.svc.<domain>` A → the service's VIP; SRV `_<port>._<proto>.<svc>.<ns>.svc.<domain>`
 *   → the service port with the A record in the additional section. TTLs are 5 s: a
 *   VIP is stable, but a deleted service should stop resolving soon.
 * - A name in the domain with no record of the asked type → NOERROR and no answer (AAAA
 *   of a service: VIPs are IPv4); an unknown name in the domain → NXDOMAIN; both carry
 *   the zone's SOA in the authority section so resolvers cache the negative answer 5 s.
 * - Other names are forwarded unchanged to the upstreams in turn (UDP with a deadline,
 *   TCP for a query that came over TCP) and the first answer is relayed unchanged; none
 *   left → SERVFAIL.
 * - Bad packets get FORMERR (or nothing, when not even a header is there); a packet
 *   that is itself a response is dropped, so two servers cannot bounce errors forever.
 *
 * Built on `dns-packet` (wire format) with `node:dgram` and `node:net`: dns2 3.x needs
 * Node >= 22 (ADR 0046).
 */
import * as dgram from "node:dgram";
import { readFile } from "node:fs/promises";
import * as net from "node:net";
import dnsPacket, { type Answer, type DecodedPacket, type Packet } from "dns-packet";
import { CloudlessError } from "../../../api/errors.js";
import type { Service } from "../../../api/gen/cloudless/v1/service_pb.js";
import type { Clock } from "../../../lib/clock.js";
import type { Logger } from "../../../observe/logger.js";

export interface DnsServerOptions {
  host: string;
  /** 0: an ephemeral port, the same number for UDP and TCP. */
  port: number;
  /** "ip" or "ip:port" ("[v6]:port"); default: the nameservers of /etc/resolv.conf except this server. */
  upstreams?: string[];
  logger: Logger;
  clock: Clock;
}

export interface DnsStats {
  queries: number;
  answered: number;
  nxdomain: number;
  forwarded: number;
  failed: number;
}

/** TTL of every record we answer, and the SOA minimum (negative caching). */
export const recordTtlSeconds = 5;
/** A UDP answer without EDNS fits in 512 bytes (RFC 1035). */
export const maxUdpPayloadBytes = 512;
/**
 * The largest UDP answer we send even when EDNS offers more: 1232 bytes avoids IP
 * fragmentation on any path (DNS flag day 2020); a bigger answer is truncated (TC) and
 * the client retries over TCP.
 */
export const maxEdnsPayloadBytes = 1232;
/**
 * A query is a header, one name (at most 255 bytes) and an EDNS record: 4 KiB leaves room
 * for EDNS options; anything longer is not a query and closes the TCP connection.
 */
export const maxQueryBytes = 4_096;
/** Resolvers use TCP only after a truncated answer; 128 at once covers a busy node. */
export const maxTcpConnections = 128;
/** RFC 7766 §6.2.3 suggests closing idle DNS TCP connections after some seconds; we take 10. */
export const tcpIdleTimeoutMs = 10_000;
/** Forwarded queries waiting for an upstream; each holds a socket. Beyond it: SERVFAIL. */
export const maxForwardsInFlight = 256;
/**
 * One upstream's deadline: three upstreams (resolv.conf's MAXNS) time out in 4.5 s,
 * inside glibc's 5 s, so the client sees our SERVFAIL rather than its own timeout.
 */
export const forwardTimeoutMs = 1_500;
/** resolv.conf's MAXNS: glibc uses at most three nameservers. */
export const maxUpstreams = 3;
/** Services one server answers for (a /16 service range holds 65,534 VIPs). */
export const maxServices = 65_536;

const rcodeNoError = 0;
const rcodeFormErr = 1;
const rcodeServFail = 2;
const rcodeNxDomain = 3;
const rcodeNotImp = 4;
const responseFlag = 0x8000;

interface Upstream {
  readonly host: string;
  readonly port: number;
}

interface ServiceRecord {
  readonly fqdn: string;
  readonly vip: string;
}

interface SrvRecord {
  readonly service: ServiceRecord;
  readonly port: number;
}

interface Zone {
  readonly domain: string;
  /** Lowercase name → service. */
  readonly services: Map<string, ServiceRecord>;
  /** Lowercase `_<port>._<proto>.<fqdn>` → SRV target. */
  readonly srv: Map<string, SrvRecord>;
  /** Names that exist without records of their own (svc.<domain>, <ns>.svc.<domain>, …). */
  readonly emptyNames: Set<string>;
  readonly serial: number;
}

const labelPattern = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const portNamePattern = /^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/;

function isDnsName(name: string): boolean {
  return name.length <= 253 && name.split(".").every((label) => labelPattern.test(label));
}

function parseUpstream(text: string): Upstream {
  const bracketed = /^\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?$/.exec(text);
  let host: string | undefined;
  let portText: string | undefined;
  if (bracketed) {
    host = bracketed[1];
    portText = bracketed[2];
  } else if (net.isIP(text)) {
    host = text;
  } else {
    const colon = text.lastIndexOf(":");
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
  }
  const port = portText === undefined ? 53 : Number(portText);
  if (!host || !net.isIP(host) || !Number.isInteger(port) || port < 1 || port > 65_535) {
    throw CloudlessError.invalid(
      `DNS upstream "${text}" is not "ip" or "ip:port"; use e.g. 192.0.2.53 or 192.0.2.53:5353`,
    );
  }
  return { host, port };
}

/** The nameservers of a resolv.conf text, in order. */
export function resolvConfNameservers(text: string): string[] {
  return text
    .split("\n")
    .map((line) => /^\s*nameserver\s+(\S+)/.exec(line)?.[1])
    .filter((address): address is string => address !== undefined && net.isIP(address) !== 0);
}

function rcodeOf(message: Buffer): number {
  return message.length >= 4 ? message.readUInt16BE(2) & 0xf : rcodeServFail;
}

/** A header-only answer for a message we could not (or will not) decode further. */
function headerOnlyAnswer(query: Buffer, rcode: number): Buffer {
  const answer = Buffer.alloc(12);
  query.copy(answer, 0, 0, 2);
  const queryFlags = query.readUInt16BE(2);
  // Keep the opcode and RD bits, set QR and the rcode.
  answer.writeUInt16BE(responseFlag | (queryFlags & 0x7900) | rcode, 2);
  return answer;
}

export class DnsServer {
  private readonly options: DnsServerOptions;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private zone: Zone | undefined;
  private upstreams: Upstream[] | undefined;
  private udp: dgram.Socket | undefined;
  private tcp: net.Server | undefined;
  private readonly tcpSockets = new Set<net.Socket>();
  /** Cancels every forward in flight (stop). */
  private readonly inFlight = new Set<() => void>();
  private boundPort = 0;
  private serial = 0;
  private readonly counters: DnsStats = {
    queries: 0,
    answered: 0,
    nxdomain: 0,
    forwarded: 0,
    failed: 0,
  };

  constructor(options: DnsServerOptions) {
    if (!net.isIP(options.host)) {
      throw CloudlessError.invalid(`DNS listen host "${options.host}" is not an IP address`);
    }
    if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65_535) {
      throw CloudlessError.invalid(`DNS listen port ${options.port} is not 0-65535`);
    }
    if (options.upstreams && options.upstreams.length > maxUpstreams) {
      throw CloudlessError.invalid(
        `${options.upstreams.length} DNS upstreams exceed the limit of ${maxUpstreams} (resolv.conf's MAXNS)`,
      );
    }
    this.upstreams = options.upstreams?.map(parseUpstream);
    this.options = options;
    this.logger = options.logger;
    this.clock = options.clock;
  }

  /** Replaces the names served under `clusterDomain`; services with a bad name or VIP are skipped. */
  setServices(clusterDomain: string, services: readonly Service[]): void {
    const domain = clusterDomain.toLowerCase().replace(/\.$/, "");
    if (!isDnsName(domain)) {
      throw CloudlessError.invalid(
        `cluster domain "${clusterDomain}" is not a DNS name (labels of a-z, 0-9, -); use e.g. cluster.local`,
      );
    }
    if (services.length > maxServices) {
      throw CloudlessError.invalid(
        `${services.length} services exceed the DNS server's limit of ${maxServices}`,
      );
    }
    const zone: Zone = {
      domain,
      services: new Map(),
      srv: new Map(),
      emptyNames: new Set([`svc.${domain}`]),
      serial: ++this.serial,
    };
    let skipped = 0;
    for (const service of services) {
      const namespace = service.namespace.toLowerCase();
      const name = service.name.toLowerCase();
      if (
        !labelPattern.test(namespace) ||
        !labelPattern.test(name) ||
        net.isIPv4(service.vip) === false
      ) {
        skipped += 1;
        continue;
      }
      const record: ServiceRecord = {
        fqdn: `${name}.${namespace}.svc.${domain}`,
        vip: service.vip,
      };
      zone.services.set(record.fqdn, record);
      zone.emptyNames.add(`${namespace}.svc.${domain}`);
      for (const port of service.ports) {
        const portName = port.name.toLowerCase();
        const protocol = (port.protocol || "tcp").toLowerCase();
        if (!portNamePattern.test(portName) || (protocol !== "tcp" && protocol !== "udp")) continue;
        zone.srv.set(`_${portName}._${protocol}.${record.fqdn}`, {
          service: record,
          port: port.port,
        });
        zone.emptyNames.add(`_${protocol}.${record.fqdn}`);
      }
    }
    if (skipped > 0) {
      this.logger.warn(
        { skipped },
        "DNS: services without a valid name or IPv4 VIP were not served",
      );
    }
    this.zone = zone;
  }

  stats(): DnsStats {
    return { ...this.counters };
  }

  async start(): Promise<{ port: number }> {
    if (this.udp) throw new Error("DnsServer already started");
    if (this.upstreams === undefined) this.upstreams = await this.defaultUpstreams();
    // Port 0: UDP picks a free port and TCP takes the same number; another process may hold
    // that TCP port, so a few attempts.
    for (let attempt = 0; ; attempt++) {
      const udp = dgram.createSocket({ type: net.isIPv6(this.options.host) ? "udp6" : "udp4" });
      try {
        await new Promise<void>((resolve, reject) => {
          udp.once("error", reject);
          udp.bind(this.options.port, this.options.host, () => {
            udp.off("error", reject);
            resolve();
          });
        });
        const port = udp.address().port;
        const tcp = net.createServer((socket) => this.onTcpConnection(socket));
        tcp.maxConnections = maxTcpConnections;
        await new Promise<void>((resolve, reject) => {
          tcp.once("error", reject);
          tcp.listen(port, this.options.host, () => {
            tcp.off("error", reject);
            resolve();
          });
        });
        udp.on("message", (message, remote) => this.onUdpMessage(message, remote));
        udp.on("error", (err) => this.logger.warn({ err }, "DNS UDP socket error"));
        tcp.on("error", (err) => this.logger.warn({ err }, "DNS TCP listener error"));
        this.udp = udp;
        this.tcp = tcp;
        this.boundPort = port;
        this.logger.info(
          { host: this.options.host, port, upstreams: this.upstreams.length },
          "DNS server listening",
        );
        return { port };
      } catch (err) {
        udp.close();
        const retry =
          this.options.port === 0 &&
          attempt < 10 &&
          (err as NodeJS.ErrnoException).code === "EADDRINUSE";
        if (!retry) throw err;
      }
    }
  }

  async stop(): Promise<void> {
    for (const cancel of [...this.inFlight]) cancel();
    for (const socket of this.tcpSockets) socket.destroy();
    const udp = this.udp;
    const tcp = this.tcp;
    this.udp = undefined;
    this.tcp = undefined;
    if (udp) await new Promise<void>((resolve) => udp.close(() => resolve()));
    if (tcp) await new Promise<void>((resolve) => tcp.close(() => resolve()));
  }

  private async defaultUpstreams(): Promise<Upstream[]> {
    let text = "";
    try {
      text = await readFile("/etc/resolv.conf", "utf8");
    } catch {
      return [];
    }
    // A resolv.conf that names this server (port 53) must not make it forward to itself.
    return resolvConfNameservers(text)
      .filter((address) => !(this.options.port === 53 && address === this.options.host))
      .slice(0, maxUpstreams)
      .map((address) => ({ host: address, port: 53 }));
  }

  // -------------------------------------------------------------------------------------
  // Transports

  private onUdpMessage(message: Buffer, remote: dgram.RemoteInfo): void {
    void this.answer(message, "udp").then(
      (answer) => {
        if (answer && this.udp) this.udp.send(answer, remote.port, remote.address);
      },
      (err: unknown) => this.logger.warn({ err }, "DNS query failed"),
    );
  }

  private onTcpConnection(socket: net.Socket): void {
    this.tcpSockets.add(socket);
    let buffer = Buffer.alloc(0);
    let busy = false;
    let cancelIdle = this.clock.setTimeout(() => socket.destroy(), tcpIdleTimeoutMs);
    const touch = (): void => {
      cancelIdle();
      cancelIdle = this.clock.setTimeout(() => socket.destroy(), tcpIdleTimeoutMs);
    };
    socket.on("close", () => {
      cancelIdle();
      this.tcpSockets.delete(socket);
    });
    socket.on("error", () => socket.destroy());
    // One query at a time per connection; the socket is paused meanwhile, so a client that
    // pipelines queries cannot make us buffer more than one read.
    const drain = async (): Promise<void> => {
      if (busy) return;
      busy = true;
      socket.pause();
      try {
        while (buffer.length >= 2) {
          const length = buffer.readUInt16BE(0);
          if (length > maxQueryBytes || length < 12) {
            socket.destroy();
            return;
          }
          if (buffer.length < 2 + length) break;
          const message = buffer.subarray(2, 2 + length);
          buffer = buffer.subarray(2 + length);
          const answer = await this.answer(message, "tcp");
          if (socket.destroyed) return;
          if (answer) {
            const framed = Buffer.alloc(2 + answer.length);
            framed.writeUInt16BE(answer.length, 0);
            answer.copy(framed, 2);
            socket.write(framed);
          }
          touch();
        }
        if (buffer.length > 2 + maxQueryBytes) socket.destroy();
      } finally {
        busy = false;
        if (!socket.destroyed) socket.resume();
      }
    };
    socket.on("data", (chunk: Buffer) => {
      touch();
      buffer = Buffer.concat([buffer, chunk]);
      if (buffer.length > 2 + maxQueryBytes + 65_536) {
        socket.destroy();
        return;
      }
      void drain().catch((err: unknown) => {
        this.logger.warn({ err }, "DNS TCP query failed");
        socket.destroy();
      });
    });
  }

  // -------------------------------------------------------------------------------------
  // Answers

  /** The answer to one message, or undefined to stay silent. */
  private async answer(message: Buffer, transport: "udp" | "tcp"): Promise<Buffer | undefined> {
    if (message.length < 12) return undefined; // not even a header: nothing to answer to
    if (message.readUInt16BE(2) & responseFlag) return undefined; // a response: never answer one
    // Opcode 0 is QUERY; NOTIFY, UPDATE and the rest are not ours to serve.
    this.counters.queries += 1;
    if (message.length > maxQueryBytes) {
      this.counters.failed += 1;
      return headerOnlyAnswer(message, rcodeFormErr);
    }
    let query: DecodedPacket;
    try {
      query = dnsPacket.decode(message);
    } catch {
      this.counters.failed += 1;
      return headerOnlyAnswer(message, rcodeFormErr);
    }
    if (((message.readUInt16BE(2) >> 11) & 0xf) !== 0) {
      this.counters.failed += 1;
      return headerOnlyAnswer(message, rcodeNotImp);
    }
    const question = query.questions?.[0];
    if (!question || query.questions?.length !== 1) {
      this.counters.failed += 1;
      return headerOnlyAnswer(message, rcodeFormErr);
    }
    const opt = query.additionals?.find((record) => record.type === "OPT");
    const limitBytes =
      transport === "tcp"
        ? 65_535
        : opt && "udpPayloadSize" in opt && typeof opt.udpPayloadSize === "number"
          ? Math.min(maxEdnsPayloadBytes, Math.max(maxUdpPayloadBytes, opt.udpPayloadSize))
          : maxUdpPayloadBytes;
    const name = question.name.toLowerCase().replace(/\.$/, "");
    const zone = this.zone;
    if (zone && (name === zone.domain || name.endsWith(`.${zone.domain}`))) {
      return this.answerFromZone(zone, query, question, name, opt !== undefined, limitBytes);
    }
    return this.forward(message, transport);
  }

  private answerFromZone(
    zone: Zone,
    query: DecodedPacket,
    question: NonNullable<DecodedPacket["questions"]>[number],
    name: string,
    edns: boolean,
    limitBytes: number,
  ): Buffer {
    const answers: Answer[] = [];
    const additionals: Answer[] = [];
    let exists = true;
    const service = zone.services.get(name);
    const srv = zone.srv.get(name);
    if (service) {
      if (question.type === "A" || isAny(question.type)) {
        answers.push({ type: "A", name: question.name, ttl: recordTtlSeconds, data: service.vip });
      }
    } else if (srv) {
      if (question.type === "SRV" || isAny(question.type)) {
        answers.push({
          type: "SRV",
          name: question.name,
          ttl: recordTtlSeconds,
          data: { priority: 0, weight: 100, port: srv.port, target: srv.service.fqdn },
        });
        additionals.push({
          type: "A",
          name: srv.service.fqdn,
          ttl: recordTtlSeconds,
          data: srv.service.vip,
        });
      }
    } else if (name === zone.domain) {
      if (question.type === "SOA") answers.push(this.soa(zone));
    } else if (!zone.emptyNames.has(name)) {
      exists = false;
    }
    const rcode = exists ? rcodeNoError : rcodeNxDomain;
    if (exists) this.counters.answered += 1;
    else this.counters.nxdomain += 1;
    const recursionDesired = query.flag_rd ? dnsPacket.RECURSION_DESIRED : 0;
    const response: Packet = {
      type: "response",
      id: query.id,
      flags:
        dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_AVAILABLE | recursionDesired | rcode,
      questions: [question],
      answers,
      authorities: answers.length === 0 ? [this.soa(zone)] : [],
      additionals: edns ? [...additionals, ednsAnswerRecord] : additionals,
    };
    const encoded = dnsPacket.encode(response);
    if (encoded.length <= limitBytes) return encoded;
    // Too long for this client's UDP: the header and question with TC, it retries over TCP.
    return dnsPacket.encode({
      ...response,
      flags: (response.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE,
      answers: [],
      authorities: [],
      additionals: edns ? response.additionals?.filter((record) => record.type === "OPT") : [],
    });
  }

  private soa(zone: Zone): Answer {
    return {
      type: "SOA",
      name: zone.domain,
      ttl: recordTtlSeconds,
      data: {
        mname: `ns.dns.${zone.domain}`,
        rname: `hostmaster.${zone.domain}`,
        serial: zone.serial,
        refresh: 7_200,
        retry: 1_800,
        expire: 86_400,
        minimum: recordTtlSeconds,
      },
    };
  }

  // -------------------------------------------------------------------------------------
  // Forwarding

  private async forward(message: Buffer, transport: "udp" | "tcp"): Promise<Buffer> {
    const upstreams = (this.upstreams ?? []).filter(
      // Never to ourselves: a loop would only end at the in-flight limit.
      (upstream) => !(upstream.port === this.boundPort && upstream.host === this.options.host),
    );
    if (upstreams.length === 0 || this.inFlight.size >= maxForwardsInFlight) {
      this.counters.failed += 1;
      return headerOnlyAnswerWithQuestion(message, rcodeServFail);
    }
    for (const upstream of upstreams) {
      const answer =
        transport === "udp"
          ? await this.forwardUdp(message, upstream)
          : await this.forwardTcp(message, upstream);
      if (answer && answer.length >= 12 && answer.readUInt16BE(0) === message.readUInt16BE(0)) {
        // An upstream that fails (SERVFAIL/REFUSED) lets the next one try; NXDOMAIN is an answer.
        const rcode = rcodeOf(answer);
        if (rcode === rcodeServFail || rcode === 5) continue;
        this.counters.forwarded += 1;
        return answer;
      }
    }
    this.counters.failed += 1;
    return headerOnlyAnswerWithQuestion(message, rcodeServFail);
  }

  /** One UDP exchange with an upstream; undefined on a timeout or an ICMP error. */
  private forwardUdp(message: Buffer, upstream: Upstream): Promise<Buffer | undefined> {
    // A fresh socket per query: a random source port, and only the upstream can answer.
    const socket = dgram.createSocket(net.isIPv6(upstream.host) ? "udp6" : "udp4");
    return this.exchange(
      () => socket.close(),
      (finish, settled) => {
        socket.on("error", () => finish(undefined));
        socket.on("message", (answer) => {
          if (answer.length >= 2 && answer.readUInt16BE(0) === message.readUInt16BE(0))
            finish(answer);
        });
        // Connected, so an ICMP port-unreachable arrives as an error at once, not a timeout.
        socket.connect(upstream.port, upstream.host, () => {
          if (!settled()) socket.send(message, (err) => err && finish(undefined));
        });
      },
    );
  }

  /** One TCP exchange with an upstream; undefined on a timeout or error. */
  private forwardTcp(message: Buffer, upstream: Upstream): Promise<Buffer | undefined> {
    const socket = net.connect({ host: upstream.host, port: upstream.port });
    return this.exchange(
      () => socket.destroy(),
      (finish) => {
        let buffer = Buffer.alloc(0);
        socket.on("error", () => finish(undefined));
        socket.on("close", () => finish(undefined));
        socket.on("connect", () => {
          const framed = Buffer.alloc(2 + message.length);
          framed.writeUInt16BE(message.length, 0);
          message.copy(framed, 2);
          socket.write(framed);
        });
        socket.on("data", (chunk: Buffer) => {
          buffer = Buffer.concat([buffer, chunk]);
          if (buffer.length >= 2 && buffer.length >= 2 + buffer.readUInt16BE(0)) {
            finish(buffer.subarray(2, 2 + buffer.readUInt16BE(0)));
          }
        });
      },
    );
  }

  /**
   * The bookkeeping every forwarded exchange shares: one answer at most, a deadline, a place
   * in the in-flight set (which stop() cancels), and `release` (closing the socket) once.
   */
  private exchange(
    release: () => void,
    wire: (finish: (answer: Buffer | undefined) => void, settled: () => boolean) => void,
  ): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      let done = false;
      const finish = (answer: Buffer | undefined): void => {
        if (done) return;
        done = true;
        cancelTimer();
        this.inFlight.delete(cancel);
        release();
        resolve(answer);
      };
      const cancel = (): void => finish(undefined);
      const cancelTimer = this.clock.setTimeout(cancel, forwardTimeoutMs);
      this.inFlight.add(cancel);
      wire(finish, () => done);
    });
  }
}

/** dns-packet decodes type 255 as "ANY", which its types do not list. */
function isAny(type: string): boolean {
  return type === "ANY";
}

const ednsAnswerRecord: Answer = {
  type: "OPT",
  name: ".",
  udpPayloadSize: maxEdnsPayloadBytes,
  extendedRcode: 0,
  ednsVersion: 0,
  flags: 0,
  flag_do: false,
  options: [],
};

/** SERVFAIL that echoes the question, so the client matches it to its query. */
function headerOnlyAnswerWithQuestion(query: Buffer, rcode: number): Buffer {
  try {
    const decoded = dnsPacket.decode(query);
    return dnsPacket.encode({
      type: "response",
      id: decoded.id,
      flags:
        (decoded.flag_rd ? dnsPacket.RECURSION_DESIRED : 0) | dnsPacket.RECURSION_AVAILABLE | rcode,
      questions: decoded.questions ?? [],
    });
  } catch {
    return headerOnlyAnswer(query, rcode);
  }
}

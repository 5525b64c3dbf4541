/**
 * A test process that runs inside a network namespace (started with `nsenter --net=…`):
 * ServiceVips and DnsServer act on the namespace of the process that runs them, so the
 * namespace tests drive them here, one JSON command per stdin line, one JSON answer per
 * stdout line. It also runs the TCP servers and clients the tests need on both sides.
 * It stops everything it started when stdin closes.
 */
import * as dgram from "node:dgram";
import * as net from "node:net";
import { createInterface } from "node:readline";
import { create } from "@bufbuild/protobuf";
import { ServiceSchema } from "../../../../api/gen/cloudless/v1/service_pb.js";
import { systemClock } from "../../../../lib/clock.js";
import { silentLogger } from "../../../../observe/logger.js";
import { DnsServer } from "../../dns/dnsServer.js";
import { ServiceVips, type VipForward } from "../serviceVips.js";

export type DriverCommand =
  | { op: "vips"; table: string; serviceCidr: string }
  | { op: "unavailableReason" }
  | { op: "apply"; forwards: VipForward[] }
  | { op: "remove" }
  | { op: "listen"; tag: string }
  | { op: "listenUdp"; tag: string }
  | { op: "askUdp"; host: string; port: number; sourcePort: number; timeoutMs: number }
  | { op: "connect"; host: string; port: number; timeoutMs: number }
  | {
      op: "dns";
      clusterDomain: string;
      services: { namespace: string; name: string; vip: string }[];
    };

export type DriverAnswer =
  | { ok: true; port?: number; data?: string; ms?: number }
  | { ok: false; error: string; code?: string; ms?: number };

let vips: ServiceVips | undefined;
const servers: net.Server[] = [];
const udpServers: dgram.Socket[] = [];
const dnsServers: DnsServer[] = [];

function connect(host: string, port: number, timeoutMs: number): Promise<DriverAnswer> {
  const started = performance.now();
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    let data = "";
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ ok: false, error: "timeout", code: "TIMEOUT", ms: performance.now() - started });
    }, timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      data += chunk.toString();
    });
    socket.on("end", () => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ ok: true, data, ms: performance.now() - started });
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({
        ok: false,
        error: err.message,
        code: err.code ?? "",
        ms: performance.now() - started,
      });
    });
  });
}

/** One datagram from a fixed source port (as a resolver reusing its socket) and its answer. */
function askUdp(
  host: string,
  port: number,
  sourcePort: number,
  timeoutMs: number,
): Promise<DriverAnswer> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket({ type: "udp4", reuseAddr: true });
    const timer = setTimeout(() => {
      socket.close();
      resolve({ ok: false, error: "timeout", code: "TIMEOUT" });
    }, timeoutMs);
    socket.on("message", (message) => {
      clearTimeout(timer);
      socket.close();
      resolve({ ok: true, data: message.toString() });
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.close();
      resolve({ ok: false, error: err.message, code: err.code ?? "" });
    });
    socket.bind(sourcePort, () => socket.send("ping", port, host));
  });
}

async function handle(command: DriverCommand): Promise<DriverAnswer> {
  switch (command.op) {
    case "vips":
      vips = new ServiceVips({
        table: command.table,
        serviceCidr: command.serviceCidr,
        logger: silentLogger,
      });
      return { ok: true };
    case "unavailableReason":
      return { ok: true, data: (await ServiceVips.unavailableReason()) ?? "" };
    case "apply": {
      if (!vips) throw new Error("no vips");
      const started = performance.now();
      await vips.apply(command.forwards);
      return { ok: true, ms: performance.now() - started };
    }
    case "remove": {
      if (!vips) throw new Error("no vips");
      await vips.remove();
      return { ok: true };
    }
    case "listen": {
      const server = net.createServer((socket) => socket.end(command.tag));
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      return { ok: true, port: (server.address() as net.AddressInfo).port };
    }
    case "listenUdp": {
      const socket = dgram.createSocket("udp4");
      socket.on("message", (_message, remote) =>
        socket.send(command.tag, remote.port, remote.address),
      );
      udpServers.push(socket);
      await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
      return { ok: true, port: socket.address().port };
    }
    case "askUdp":
      return askUdp(command.host, command.port, command.sourcePort, command.timeoutMs);
    case "connect":
      return connect(command.host, command.port, command.timeoutMs);
    case "dns": {
      const server = new DnsServer({
        host: "127.0.0.1",
        port: 0,
        upstreams: [],
        logger: silentLogger,
        clock: systemClock,
      });
      server.setServices(
        command.clusterDomain,
        command.services.map((s) =>
          create(ServiceSchema, {
            namespace: s.namespace,
            name: s.name,
            vip: s.vip,
            ports: [{ name: "http", port: 80, protocol: "tcp" }],
          }),
        ),
      );
      dnsServers.push(server);
      return { ok: true, port: (await server.start()).port };
    }
  }
}

const lines = createInterface({ input: process.stdin });
let chain: Promise<void> = Promise.resolve();
lines.on("line", (line) => {
  chain = chain.then(async () => {
    let answer: DriverAnswer;
    try {
      answer = await handle(JSON.parse(line) as DriverCommand);
    } catch (err) {
      answer = { ok: false, error: err instanceof Error ? err.message : String(err) };
    }
    process.stdout.write(`${JSON.stringify(answer)}\n`);
  });
});
lines.on("close", () => {
  void chain.then(async () => {
    for (const server of servers) server.close();
    for (const socket of udpServers) socket.close();
    for (const server of dnsServers) await server.stop();
    process.exit(0);
  });
});
process.stdout.write(`${JSON.stringify({ ok: true })}\n`);

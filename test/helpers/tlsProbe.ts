import { readdir, readFile, readlink } from "node:fs/promises";
import * as http2 from "node:http2";
import * as https from "node:https";
import * as net from "node:net";
import * as tls from "node:tls";
import { Code, ConnectError } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { spiffeUri } from "../../src/api/identity.js";
import {
  type CoordinatorClients,
  createClients,
  createCoordinatorTransport,
} from "../../src/client/transport.js";
import {
  CertificateAuthority,
  createCertificateAuthority,
} from "../../src/control/security/pki.js";

/** A TCP socket a process listens on, found through /proc. */
export interface ListeningSocket {
  address: string;
  port: number;
  inode: number;
  family: "tcp" | "tcp6";
}

/** The socket inodes a process holds open, from the `socket:[N]` links in /proc/<pid>/fd. */
async function socketInodes(pid: number): Promise<Set<number>> {
  const inodes = new Set<number>();
  const fdDir = `/proc/${pid}/fd`;
  for (const fd of await readdir(fdDir)) {
    const target = await readlink(`${fdDir}/${fd}`).catch(() => "");
    const match = /^socket:\[(\d+)\]$/.exec(target);
    if (match) inodes.add(Number(match[1]));
  }
  return inodes;
}

function decodeAddress(hex: string, family: "tcp" | "tcp6"): string {
  if (family === "tcp") {
    // Little-endian 32-bit word.
    const bytes = Buffer.from(hex, "hex").reverse();
    return [...bytes].join(".");
  }
  // Four little-endian 32-bit words.
  const words: string[] = [];
  for (let i = 0; i < 32; i += 8) {
    words.push(
      Buffer.from(hex.slice(i, i + 8), "hex")
        .reverse()
        .toString("hex"),
    );
  }
  const full = (words.join("").match(/.{4}/g) ?? []).join(":");
  // The URL parser prints IPv6 in canonical (compressed) form.
  return new URL(`http://[${full}]/`).hostname.replace(/^\[|\]$/g, "");
}

/**
 * Every TCP port `pid` listens on: its socket inodes matched against the LISTEN (0A)
 * rows of /proc/<pid>/net/tcp and tcp6 (the process's own network namespace).
 */
export async function listeningSockets(pid: number): Promise<ListeningSocket[]> {
  const inodes = await socketInodes(pid);
  const found: ListeningSocket[] = [];
  for (const family of ["tcp", "tcp6"] as const) {
    const table = await readFile(`/proc/${pid}/net/${family}`, "utf8").catch(() => "");
    for (const line of table.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10) continue;
      const [, local = "", , state, , , , , , inode] = fields;
      if (state !== "0A") continue;
      if (!inodes.has(Number(inode))) continue;
      const [addressHex = "", portHex = ""] = local.split(":");
      found.push({
        family,
        address: decodeAddress(addressHex, family),
        port: Number.parseInt(portHex, 16),
        inode: Number(inode),
      });
    }
  }
  return found;
}

/** The address to dial for a listening socket (its own, or loopback for a wildcard). */
export function dialHost(socket: ListeningSocket): string {
  if (socket.family === "tcp") return socket.address === "0.0.0.0" ? "127.0.0.1" : socket.address;
  if (socket.address === "::") return "::1";
  // An IPv4-mapped address, printed by the URL parser as ::ffff:7f00:1.
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(socket.address);
  if (mapped?.[1] && mapped[2]) {
    const hex = mapped[1].padStart(4, "0") + mapped[2].padStart(4, "0");
    const ipv4 = [...Buffer.from(hex, "hex")].join(".");
    return ipv4 === "0.0.0.0" ? "127.0.0.1" : ipv4;
  }
  return socket.address;
}

export interface RawExchange {
  /** Everything the server sent before the connection ended. */
  received: Buffer;
  /** True when the server ended or reset the connection (rather than our deadline). */
  closedByServer: boolean;
  error?: string;
}

/**
 * Connects, sends `bytes` (then half-closes when `end`), and collects what comes back
 * until the server closes the connection or `timeoutMs` passes.
 */
export function rawExchange(
  host: string,
  port: number,
  bytes: Buffer | string,
  options: { end?: boolean; timeoutMs?: number } = {},
): Promise<RawExchange> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let error: string | undefined;
    let settled = false;
    const socket = net.connect({ host, port });
    const finish = (closedByServer: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({
        received: Buffer.concat(chunks),
        closedByServer,
        ...(error ? { error } : {}),
      });
    };
    const timer = setTimeout(() => finish(false), options.timeoutMs ?? 10_000);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", (e) => {
      error = e.message;
    });
    socket.on("end", () => finish(true));
    socket.on("close", () => finish(true));
    socket.once("connect", () => {
      if (options.end ?? false) socket.end(bytes);
      else socket.write(bytes);
    });
  });
}

/** The first bytes a real TLS client sends: a complete ClientHello record, captured locally. */
export async function captureClientHello(): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  try {
    const captured = new Promise<Buffer>((resolve) => {
      server.once("connection", (socket) => {
        const chunks: Buffer[] = [];
        socket.on("data", (chunk: Buffer) => {
          chunks.push(chunk);
          const all = Buffer.concat(chunks);
          // A TLS record: type(1) version(2) length(2) body(length).
          if (all.length >= 5 && all.length >= 5 + all.readUInt16BE(3)) {
            resolve(all.subarray(0, 5 + all.readUInt16BE(3)));
            socket.destroy();
          }
        });
        socket.on("error", () => undefined);
      });
    });
    const client = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false });
    client.on("error", () => undefined);
    const hello = await captured;
    client.destroy();
    return hello;
  } finally {
    server.close();
  }
}

export interface HttpsResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** HTTP/2 only: the trailers, where gRPC puts its status. */
  trailers?: Record<string, string | string[] | undefined>;
}

export interface PostOptions {
  host: string;
  port: number;
  path: string;
  body: string | Buffer;
  caPem: string;
  certPem?: string;
  keyPem?: string;
  contentType?: string;
  /** More request headers (e.g. `te: trailers` for gRPC). */
  headers?: Record<string, string>;
}

/**
 * An HTTPS/1.1 POST (Connect's HTTP/JSON protocol), with or without a client
 * certificate. A server may answer before it has read a large body and then close;
 * the answer is returned when it arrived, `status: 0` with the error when it did not.
 */
export function httpsPost(options: PostOptions): Promise<HttpsResult & { error?: string }> {
  return new Promise((resolve) => {
    let answered = false;
    const request = https.request(
      {
        host: options.host,
        port: options.port,
        path: options.path,
        method: "POST",
        agent: false,
        ca: options.caPem,
        ...(options.certPem ? { cert: options.certPem } : {}),
        ...(options.keyPem ? { key: options.keyPem } : {}),
        // The coordinator's certificate names it by SPIFFE URI and loopback IPs.
        checkServerIdentity: () => undefined,
        rejectUnauthorized: true,
        headers: {
          "content-type": options.contentType ?? "application/json",
          "content-length": Buffer.byteLength(options.body),
          "connect-protocol-version": "1",
        },
        timeout: 15_000,
      },
      (response) => {
        answered = true;
        const chunks: Buffer[] = [];
        const done = () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: Buffer.concat(chunks).toString("utf8"),
          });
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", done);
        response.on("error", done);
      },
    );
    request.on("timeout", () => request.destroy(new Error("HTTPS request timed out")));
    request.on("error", (error) => {
      if (!answered) resolve({ status: 0, headers: {}, body: "", error: error.message });
    });
    request.end(options.body);
  });
}

/** The same POST over HTTP/2, where a server can answer early without closing the connection. */
export function http2Post(options: PostOptions): Promise<HttpsResult> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://${options.host}:${options.port}`, {
      ca: options.caPem,
      ...(options.certPem ? { cert: options.certPem } : {}),
      ...(options.keyPem ? { key: options.keyPem } : {}),
      checkServerIdentity: () => undefined,
      rejectUnauthorized: true,
    });
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error("HTTP/2 request timed out"));
    }, 15_000);
    const finish = (result: HttpsResult | Error) => {
      clearTimeout(timer);
      session.close();
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    session.on("error", (error) => finish(error));
    const stream = session.request({
      ":method": "POST",
      ":path": options.path,
      "content-type": options.contentType ?? "application/json",
      "connect-protocol-version": "1",
      ...options.headers,
    });
    let status = 0;
    let headers: Record<string, string | string[] | undefined> = {};
    let trailers: Record<string, string | string[] | undefined> | undefined;
    const chunks: Buffer[] = [];
    stream.on("response", (received) => {
      status = Number(received[":status"]);
      headers = received;
    });
    stream.on("trailers", (received) => {
      trailers = received;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    const done = () =>
      finish({
        status,
        headers,
        body: Buffer.concat(chunks).toString("utf8"),
        ...(trailers ? { trailers } : {}),
      });
    stream.on("end", done);
    // The server may reset the rest of our upload once it has answered.
    stream.on("error", (error) => (status ? done() : finish(error)));
    stream.end(options.body);
  });
}

/** Connect/gRPC clients for a coordinator, with whatever credentials the test wants to try. */
export function clientsFor(options: {
  url: string;
  caPem: string;
  clusterName?: string;
  certPem?: string;
  keyPem?: string;
}): CoordinatorClients {
  return createClients(
    createCoordinatorTransport({
      baseUrl: options.url,
      caPem: options.caPem,
      ...(options.clusterName ? { clusterName: options.clusterName } : {}),
      ...(options.certPem ? { certPem: options.certPem } : {}),
      ...(options.keyPem ? { keyPem: options.keyPem } : {}),
      timeoutMs: 15_000,
    }),
  );
}

/**
 * Clients speaking the other protocols the port serves: Connect (HTTP/JSON) over
 * HTTP/2 or HTTP/1.1, and gRPC-web. The server is checked against the CA only.
 */
export function clientsOverProtocol(
  protocol: "connect-h2" | "connect-h1" | "grpc-web",
  options: { url: string; caPem: string; certPem?: string; keyPem?: string },
): CoordinatorClients {
  const nodeOptions = {
    ca: options.caPem,
    ...(options.certPem ? { cert: options.certPem } : {}),
    ...(options.keyPem ? { key: options.keyPem } : {}),
    rejectUnauthorized: true,
    checkServerIdentity: () => undefined,
  };
  const common = { baseUrl: options.url, defaultTimeoutMs: 15_000, nodeOptions };
  const transport =
    protocol === "grpc-web"
      ? createGrpcWebTransport({ ...common, httpVersion: "2" })
      : createConnectTransport({
          ...common,
          httpVersion: protocol === "connect-h2" ? "2" : "1.1",
          useBinaryFormat: false,
        });
  return createClients(transport);
}

/** Awaits a call that must fail, and returns its ConnectError (a success fails the test). */
export async function rpcError(call: Promise<unknown> | (() => Promise<unknown>)): Promise<{
  code: Code;
  codeName: string;
  message: string;
}> {
  try {
    await (typeof call === "function" ? call() : call);
  } catch (error) {
    const connect = ConnectError.from(error);
    return { code: connect.code, codeName: Code[connect.code], message: connect.rawMessage };
  }
  throw new Error("the call succeeded, but it was expected to be refused");
}

/**
 * An admin credential for `clusterName` from a CA the coordinator never saw: same
 * cluster name and SPIFFE identity, different trust root.
 */
export async function foreignAdminCredentials(clusterName: string): Promise<{
  caPem: string;
  certPem: string;
  keyPem: string;
  caFingerprint: string;
}> {
  const nowMs = Date.now();
  const generated = await createCertificateAuthority({ clusterName, nowMs });
  const ca = await CertificateAuthority.load(generated.certPem, generated.keyPem);
  const admin = await ca.issueKeyPair({
    subjectName: "admin",
    spiffeUri: spiffeUri(clusterName, "admin", "admin"),
    ttlMs: 3600_000,
    nowMs,
    usage: "client",
  });
  return {
    caPem: ca.certPem,
    certPem: admin.certPem,
    keyPem: admin.keyPem,
    caFingerprint: ca.fingerprintSha256,
  };
}

/** The lines a user reads on stderr: everything but the JSON log lines. */
export function humanLines(stderr: string): string[] {
  return stderr
    .split("\n")
    .map((line) => line.trimEnd())
    .filter((line) => line.length > 0 && !line.startsWith("{"));
}

/** True when output contains a JavaScript stack trace. */
export function hasStackTrace(text: string): boolean {
  return /^\s+at .+(\(|:\d+:\d+)/m.test(text) || /\b(TypeError|ReferenceError):/.test(text);
}

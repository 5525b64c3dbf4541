/**
 * The mesh flow protocol (issue 14, ADR 0046): on a TLS connection between two agents
 * (direct, or inside a relayed HTTP/2 stream) the dialer sends one header line — JSON,
 * `\n`-terminated, at most MAX_FLOW_HEADER_BYTES — and the acceptor answers one line,
 * `{"ok":true}` once it has connected to the replica, or `{"ok":false,"error":…}` and
 * closes. After that the connection carries the flow's bytes both ways.
 */
import type { Duplex } from "node:stream";

/** The ALPN protocol of a mesh flow connection (a relay session negotiates "h2"). */
export const MESH_ALPN = "cloudless-mesh/1";

/**
 * Longest header line, newline included. A connect header is four names of at most 253
 * characters and a traceparent of 55: 2 KiB leaves room and bounds what an authenticated
 * but misbehaving peer can make us buffer before a flow exists.
 */
export const MAX_FLOW_HEADER_BYTES = 2048;

/** Longest name field (a DNS name's limit; namespaces, services and ports are shorter). */
const MAX_NAME_CHARS = 253;
/** W3C traceparent is 55 characters; anything longer is not one. */
const MAX_TRACEPARENT_CHARS = 55;
const TRACEPARENT_PATTERN = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const NAME_PATTERN = /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/;

export interface ConnectHeader {
  v: 1;
  op: "connect";
  namespace: string;
  service: string;
  /** The service port's name. */
  port: string;
  replica: string;
  traceparent?: string;
}

export interface PingHeader {
  v: 1;
  op: "ping";
}

export type FlowHeader = ConnectHeader | PingHeader;

export type FlowReply = { ok: true } | { ok: false; error: string };

/** The header as one line, newline included. */
export function encodeFlowHeader(header: FlowHeader): string {
  const line = `${JSON.stringify(header)}\n`;
  if (Buffer.byteLength(line) > MAX_FLOW_HEADER_BYTES) {
    throw new RangeError(`mesh flow header is longer than ${MAX_FLOW_HEADER_BYTES} bytes`);
  }
  return line;
}

export function encodeFlowReply(reply: FlowReply): string {
  // The error is cut so a reply always fits in one header-sized line.
  const body = reply.ok ? reply : { ok: false, error: reply.error.slice(0, 512) };
  return `${JSON.stringify(body)}\n`;
}

function checkName(what: string, value: unknown): string {
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_NAME_CHARS) {
    throw new Error(`${what} must be a name of 1 to ${MAX_NAME_CHARS} characters`);
  }
  if (!NAME_PATTERN.test(value)) throw new Error(`${what} ${JSON.stringify(value)} is not a name`);
  return value;
}

/** Parses a header line (without its newline); throws an Error saying what is wrong. */
export function parseFlowHeader(line: string): FlowHeader {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error("the flow header is not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error("the flow header is not a JSON object");
  }
  const record = value as Record<string, unknown>;
  if (record.v !== 1) throw new Error(`unsupported flow header version ${String(record.v)}`);
  if (record.op === "ping") return { v: 1, op: "ping" };
  if (record.op !== "connect") throw new Error(`unknown flow op ${JSON.stringify(record.op)}`);
  const header: ConnectHeader = {
    v: 1,
    op: "connect",
    namespace: checkName("namespace", record.namespace),
    service: checkName("service", record.service),
    port: checkName("port", record.port),
    replica: checkName("replica", record.replica),
  };
  if (record.traceparent !== undefined) {
    const traceparent = record.traceparent;
    if (
      typeof traceparent !== "string" ||
      traceparent.length > MAX_TRACEPARENT_CHARS ||
      !TRACEPARENT_PATTERN.test(traceparent)
    ) {
      throw new Error("traceparent is not a W3C traceparent");
    }
    header.traceparent = traceparent;
  }
  return header;
}

export function parseFlowReply(line: string): FlowReply {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error("the mesh reply is not JSON");
  }
  const record = (typeof value === "object" && value !== null ? value : {}) as Record<
    string,
    unknown
  >;
  if (record.ok === true) return { ok: true };
  if (record.ok === false) {
    return { ok: false, error: typeof record.error === "string" ? record.error : "refused" };
  }
  throw new Error("the mesh reply has no ok field");
}

/**
 * Reads one `\n`-terminated line from a stream without consuming what follows it (the
 * rest is pushed back with unshift, so the flow's first bytes are not lost). Rejects when
 * the line is longer than maxBytes, the stream ends or errors first, or `timeoutMs`
 * passes; the caller closes the stream then.
 */
/** A wire deadline passed: what the caller reports as a timeout, whatever else failed. */
export class DeadlineError extends Error {}

export function readLine(stream: Duplex, maxBytes: number, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    let settled = false;
    const finish = (error: Error | undefined, line?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      stream.off("readable", onReadable);
      stream.off("end", onEnd);
      stream.off("close", onEnd);
      stream.off("error", onError);
      if (error) reject(error);
      else resolve(line!);
    };
    const onReadable = () => {
      for (;;) {
        const chunk = stream.read() as Buffer | null;
        if (chunk === null) return;
        const newline = chunk.indexOf(0x0a);
        if (newline === -1) {
          chunks.push(chunk);
          length += chunk.length;
          if (length >= maxBytes) {
            finish(new Error(`the header line is longer than ${maxBytes} bytes`));
            return;
          }
          continue;
        }
        if (length + newline + 1 > maxBytes) {
          finish(new Error(`the header line is longer than ${maxBytes} bytes`));
          return;
        }
        chunks.push(chunk.subarray(0, newline));
        const rest = chunk.subarray(newline + 1);
        if (rest.length > 0) stream.unshift(rest);
        finish(undefined, Buffer.concat(chunks).toString("utf8"));
        return;
      }
    };
    const onEnd = () => finish(new Error("the connection closed before a header line"));
    const onError = (error: Error) => finish(error);
    // A timer of its own: the line is a wire deadline, not a decision under the Clock.
    const timer = setTimeout(
      () => finish(new DeadlineError(`no header line within ${timeoutMs} ms`)),
      timeoutMs,
    );
    stream.on("readable", onReadable);
    stream.on("end", onEnd);
    stream.on("close", onEnd);
    stream.on("error", onError);
    onReadable();
  });
}

/** Bytes a piped flow moved, updated as they move. */
export interface FlowCounters {
  /** From `a` to `b`. */
  aToB: number;
  /** From `b` to `a`. */
  bToA: number;
}

/**
 * Pipes two duplexes both ways until both directions end: an end on one side half-closes
 * the other (TCP half-close is kept), an error or an abrupt close on either destroys
 * both. `onChunk` sees every chunk's size and direction (byte counters); `onClose` runs
 * once when both sides are gone.
 */
export function pipeFlow(
  a: Duplex,
  b: Duplex,
  onChunk: (direction: "aToB" | "bToA", bytes: number) => void,
  onClose: () => void,
): void {
  let closed = 0;
  const destroyBoth = () => {
    a.destroy();
    b.destroy();
  };
  // A side that closes after both its directions ended closed cleanly, and the other
  // side, which sent and received the same ends, closes by itself once it has flushed
  // (destroying it now would drop its last bytes). Any other close cuts the flow.
  const onSideClose = (side: Duplex, other: Duplex) => {
    closed += 1;
    if (!(side.readableEnded && side.writableFinished)) other.destroy();
    if (closed === 2) onClose();
  };
  a.on("data", (chunk: Buffer) => {
    onChunk("aToB", chunk.length);
    if (!b.write(chunk)) a.pause();
  });
  b.on("data", (chunk: Buffer) => {
    onChunk("bToA", chunk.length);
    if (!a.write(chunk)) b.pause();
  });
  b.on("drain", () => a.resume());
  a.on("drain", () => b.resume());
  a.on("end", () => b.end());
  b.on("end", () => a.end());
  a.on("error", destroyBoth);
  b.on("error", destroyBoth);
  a.once("close", () => onSideClose(a, b));
  b.once("close", () => onSideClose(b, a));
  a.resume();
  b.resume();
}

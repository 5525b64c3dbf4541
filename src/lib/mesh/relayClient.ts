/**
 * The client side of relaying (REQ-003): an HTTP/2 session to a relay (a coordinator's API
 * listener or a node started with --relay), and the three requests the relay hub serves.
 * The caller runs TLS inside a dial or accept stream end to end with the other node.
 */
import * as http2 from "node:http2";
import type { PeerCertificate } from "node:tls";
import { RELAY_ACCEPT_PATH, RELAY_DIAL_PATH, RELAY_LISTEN_PATH } from "./relayHub.js";

/**
 * HTTP/2 flow-control windows of a relay session. The 64 KiB default caps a stream at one
 * window per round trip, and relayed flows are bulk TCP: 1 MiB per stream and 8 MiB per
 * session let a few flows run at link speed while bounding what a relay buffers per flow.
 * A server mounting the hub should offer the same (relayHttp2Settings).
 */
export const RELAY_STREAM_WINDOW_BYTES = 1024 * 1024;
export const RELAY_SESSION_WINDOW_BYTES = 8 * 1024 * 1024;
export const relayHttp2Settings: http2.Settings = { initialWindowSize: RELAY_STREAM_WINDOW_BYTES };

/** Longest line on a listen stream (`{"accept":"<uuid>","from":"<node>"}` is ~120 bytes). */
export const MAX_RELAY_LINE_BYTES = 1024;

export interface RelayTls {
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** A relay refused a request (its HTTP status and line), or the request failed. */
export class RelayRequestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "RelayRequestError";
  }
}

/** Splits "host:port" or "[v6]:port"; throws on anything else. */
export function parseHostPort(address: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(address);
  const port = Number(match?.[3]);
  if (!match || !Number.isInteger(port) || port < 1 || port > 65_535) {
    throw new Error(`relay address ${JSON.stringify(address)} is not host:port`);
  }
  return { host: (match[1] ?? match[2])!, port };
}

/**
 * Opens an HTTP/2 session to a relay over mutual TLS (ALPN h2) and resolves once it is
 * connected. `verifyServer` checks the relay's certificate (already verified against the
 * CA) names who the caller expects; it returns an Error to refuse.
 */
export function openRelaySession(
  address: string,
  tls: RelayTls,
  verifyServer: (cert: PeerCertificate) => Error | undefined,
  timeoutMs: number,
): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    // Inside the promise: a bad address is a rejection, never a throw at the caller.
    const { host, port } = parseHostPort(address);
    const authority = `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
    const session = http2.connect(authority, {
      ca: tls.caPem,
      cert: tls.certPem,
      key: tls.keyPem,
      minVersion: "TLSv1.2",
      ALPNProtocols: ["h2"],
      settings: relayHttp2Settings,
      checkServerIdentity: (_host, cert) => verifyServer(cert),
    });
    // A wire deadline on real time: how long a connect may take.
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error(`relay ${address} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    timer.unref();
    session.once("connect", () => {
      clearTimeout(timer);
      session.setLocalWindowSize(RELAY_SESSION_WINDOW_BYTES);
      session.off("error", onError);
      // Later session errors end the session; the owner learns it from "close".
      session.on("error", () => {});
      resolve(session);
    });
    const onError = (error: Error) => {
      clearTimeout(timer);
      session.destroy();
      reject(error);
    };
    session.once("error", onError);
  });
}

/**
 * Sends one relay request and resolves with its stream once the relay answered 200; a
 * refusal rejects with RelayRequestError carrying the relay's status and message.
 */
export function relayRequest(
  session: http2.ClientHttp2Session,
  path: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<http2.ClientHttp2Stream> {
  return new Promise((resolve, reject) => {
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request({ ":method": "POST", ":path": path }, { endStream: false });
    } catch (error) {
      reject(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    let settled = false;
    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      stream.destroy();
      reject(error);
    };
    const onAbort = () => fail(new Error("the relay request was aborted"));
    signal?.addEventListener("abort", onAbort, { once: true });
    // A wire deadline on real time.
    const timer = setTimeout(
      () => fail(new RelayRequestError(504, `the relay did not answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
    timer.unref();
    stream.once("error", (error) => fail(error));
    stream.once("close", () => fail(new Error("the relay closed the stream")));
    stream.once("response", (headers) => {
      const status = Number(headers[":status"]);
      if (status === 200) {
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        resolve(stream);
        return;
      }
      // The refusal's body is one short line; read at most a line's worth of it.
      let body = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => {
        if (body.length < MAX_RELAY_LINE_BYTES) body += chunk;
      });
      stream.once("end", () => {
        let message = `the relay answered ${status}`;
        try {
          const parsed = JSON.parse(body.split("\n")[0] ?? "") as { error?: unknown };
          if (typeof parsed.error === "string") message = parsed.error;
        } catch {
          // Not our hub's line: the status says enough.
        }
        fail(new RelayRequestError(status, message));
      });
    });
  });
}

export const relayPaths = {
  listen: RELAY_LISTEN_PATH,
  dial: (node: string) => `${RELAY_DIAL_PATH}?node=${encodeURIComponent(node)}`,
  accept: (id: string) => `${RELAY_ACCEPT_PATH}?id=${encodeURIComponent(id)}`,
};

/** One incoming flow announced on a listen stream. */
export interface RelayAccept {
  accept: string;
  from: string;
}

/**
 * Calls `onAccept` for each announcement on a listen stream; a line longer than
 * MAX_RELAY_LINE_BYTES or not an announcement destroys the stream (the relay misbehaves).
 */
export function readListenStream(
  stream: http2.ClientHttp2Stream,
  onAccept: (accept: RelayAccept) => void,
): void {
  let buffered = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => {
    buffered += chunk;
    for (;;) {
      const newline = buffered.indexOf("\n");
      if (newline === -1) break;
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      try {
        const parsed = JSON.parse(line) as Partial<RelayAccept>;
        if (typeof parsed.accept !== "string" || typeof parsed.from !== "string") {
          throw new Error("not an announcement");
        }
        onAccept({ accept: parsed.accept, from: parsed.from });
      } catch {
        stream.destroy();
        return;
      }
    }
    if (buffered.length > MAX_RELAY_LINE_BYTES) stream.destroy();
  });
}

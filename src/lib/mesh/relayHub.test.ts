import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import {
  parseHostPort,
  type RelayAccept,
  RelayRequestError,
  readListenStream,
  relayPaths,
  relayRequest,
} from "./relayClient.js";
import { handleRelayRequest, RelayHub, type RelayHubLimits } from "./relayHub.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/**
 * The hub on a plain HTTP/2 server; the caller's node name comes from a test header (the
 * hub trusts whoever mounts it to have authenticated the caller: TLS is tested with the
 * mesh node). Returns a session factory per node.
 */
async function startHub(members: Set<string>, limits: Partial<RelayHubLimits> = {}) {
  const hub = new RelayHub({
    isMember: (node) => members.has(node),
    logger: pino({ level: "silent" }),
    limits,
  });
  const server = http2.createServer((request, response) => {
    handleRelayRequest(hub, request, response, String(request.headers["x-test-node"]));
  });
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        hub.close();
        for (const session of sessions) session.destroy();
        server.close(() => resolve());
      }),
  );
  const clients: http2.ClientHttp2Session[] = [];
  cleanups.push(() => {
    for (const client of clients) client.destroy();
  });
  /** A session speaking as `node`. */
  const as = (node: string) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => {});
    clients.push(session);
    const request = session.request.bind(session);
    session.request = ((
      headers: http2.OutgoingHttpHeaders,
      options?: http2.ClientSessionRequestOptions,
    ) => request({ ...headers, "x-test-node": node }, options)) as typeof session.request;
    return session;
  };
  return { hub, as };
}

function nextAccept(stream: http2.ClientHttp2Stream): Promise<RelayAccept> {
  return new Promise((resolve) => readListenStream(stream, resolve));
}

function readAll(stream: http2.ClientHttp2Stream): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    stream.on("data", (chunk: Buffer) => {
      text += chunk.toString();
    });
    stream.once("end", () => resolve(text));
    stream.once("error", reject);
  });
}

describe("relay hub (REQ-003)", () => {
  it("REQ-003: joins a dial to the target's accept stream, both ways, half-close kept", async () => {
    const { hub, as } = await startHub(new Set(["a", "b"]));
    const b = as("b");
    const listen = await relayRequest(b, relayPaths.listen, 2_000);
    const announced = nextAccept(listen);
    const dialing = relayRequest(as("a"), relayPaths.dial("b"), 2_000);
    const accept = await announced;
    expect(accept.from).toBe("a");
    const acceptStream = await relayRequest(b, relayPaths.accept(accept.accept), 2_000);
    const dialStream = await dialing;
    const atB = readAll(acceptStream);
    dialStream.end("from a");
    expect(await atB).toBe("from a");
    const atA = readAll(dialStream);
    acceptStream.end("from b");
    expect(await atA).toBe("from b");
    expect(hub.stats().bytesFromNode.get("a")).toBe(6);
    expect(hub.stats().bytesFromNode.get("b")).toBe(6);
  });

  it("REQ-003: refuses a non-member caller or target, a node with no listen stream, and a stolen accept id", async () => {
    const { hub, as } = await startHub(new Set(["a", "b", "c"]));
    const refusal = (promise: Promise<unknown>) =>
      promise.then(
        () => "accepted",
        (error: unknown) =>
          error instanceof RelayRequestError ? `${error.status} ${error.message}` : String(error),
      );
    expect(await refusal(relayRequest(as("x"), relayPaths.listen, 2_000))).toBe(
      "403 node x is not a member of this cluster",
    );
    expect(await refusal(relayRequest(as("a"), relayPaths.dial("z"), 2_000))).toContain("404");
    expect(await refusal(relayRequest(as("a"), relayPaths.dial("b"), 2_000))).toBe(
      "404 node b is not connected to this relay",
    );
    const b = as("b");
    const listen = await relayRequest(b, relayPaths.listen, 2_000);
    const announced = nextAccept(listen);
    const dialing = refusal(relayRequest(as("a"), relayPaths.dial("b"), 2_000));
    const { accept } = await announced;
    // C learnt the id: it is not the target, so it cannot take the flow.
    expect(await refusal(relayRequest(as("c"), relayPaths.accept(accept), 2_000))).toBe(
      "404 no pending flow with that id",
    );
    expect(await refusal(relayRequest(as("b"), "/cloudless.mesh.v1/other", 2_000))).toContain(
      "404",
    );
    expect(hub.stats().pendingDials).toBe(1);
    const aStream = await relayRequest(b, relayPaths.accept(accept), 2_000);
    aStream.destroy();
    expect(await dialing).not.toContain("504");
  });

  it("REQ-003: a dial the target never accepts times out; listen streams and pending dials are bounded", async () => {
    const { hub, as } = await startHub(new Set(["a", "b", "c", "d"]), {
      pendingDialTimeoutMs: 200,
      maxListenStreamsPerNode: 2,
      maxPendingDials: 2,
      maxPendingDialsPerNode: 1,
    });
    const b = as("b");
    await relayRequest(b, relayPaths.listen, 2_000);
    await relayRequest(b, relayPaths.listen, 2_000);
    await expect(relayRequest(b, relayPaths.listen, 2_000)).rejects.toMatchObject({
      status: 429,
    });
    // Caught at once: they fail at the hub's deadline, maybe before the asserts reach them.
    const first = relayRequest(as("a"), relayPaths.dial("b"), 2_000).catch((e: unknown) => e);
    await expect(relayRequest(as("a"), relayPaths.dial("b"), 2_000)).rejects.toMatchObject({
      status: 503,
      message: "node a has 1 dials waiting here (the limit)",
    });
    const second = relayRequest(as("c"), relayPaths.dial("b"), 2_000).catch((e: unknown) => e);
    await expect(relayRequest(as("d"), relayPaths.dial("b"), 2_000)).rejects.toMatchObject({
      status: 503,
      message: "2 dials are waiting here (the limit)",
    });
    expect(await second).toMatchObject({ status: 504 });
    expect(await first).toMatchObject({
      status: 504,
      message: "node b did not accept within the deadline",
    });
    expect(hub.stats().pendingDials).toBe(0);
    expect(hub.stats().listeners).toBe(2);
  });

  it("REQ-003: relay addresses parse as host:port or [v6]:port, anything else is refused", () => {
    expect(parseHostPort("10.0.0.1:7443")).toEqual({ host: "10.0.0.1", port: 7443 });
    expect(parseHostPort("[fd00::1]:7443")).toEqual({ host: "fd00::1", port: 7443 });
    expect(parseHostPort("coord.example:443")).toEqual({ host: "coord.example", port: 443 });
    expect(() => parseHostPort("10.0.0.1")).toThrow("not host:port");
    expect(() => parseHostPort("h:99999")).toThrow("not host:port");
  });
});

import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Http2SessionManager } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import { ignoreLateSessionError, SessionErrorGuard } from "./transport.js";

let server: http2.Http2Server | undefined;
const serverSessions = new Set<http2.ServerHttp2Session>();

afterEach(async () => {
  for (const session of serverSessions) session.destroy();
  serverSessions.clear();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

async function startServer(): Promise<string> {
  server = http2.createServer();
  server.on("session", (session) => serverSessions.add(session));
  server.on("stream", (stream) => {
    stream.respond({ ":status": 200 });
    stream.end("ok");
  });
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server!.address() as AddressInfo).port}`;
}

describe("SessionErrorGuard", () => {
  it("NFR-A1 an error on a session connect-node no longer listens to does not end the process", async () => {
    const url = await startServer();
    const guard = new SessionErrorGuard(new Http2SessionManager(url, { pingTimeoutMs: 5_000 }));
    expect(guard.authority).toBe(new URL(url).origin);
    const stream = await guard.request("GET", "/", {}, {});
    const session = stream.session as http2.ClientHttp2Session;
    stream.resume();
    await new Promise((resolve) => stream.once("close", resolve));

    // What connect-node does on a PING answered too late, after its own listeners are gone:
    // destroy the session with an error. Without a listener that error is uncaught.
    for (const listener of session.listeners("error")) {
      if (listener !== ignoreLateSessionError) session.off("error", listener as () => void);
    }
    expect(session.listeners("error")).toEqual([ignoreLateSessionError]);
    const uncaught: unknown[] = [];
    const onUncaught = (error: unknown) => uncaught.push(error);
    process.on("uncaughtException", onUncaught);
    try {
      session.destroy(new Error("PING timed out"));
      await new Promise((resolve) => session.once("close", resolve));
    } finally {
      process.off("uncaughtException", onUncaught);
    }
    expect(uncaught).toEqual([]);

    // The manager connects anew for the next request.
    const next = await guard.request("GET", "/", {}, {});
    const nextSession = next.session as http2.ClientHttp2Session;
    expect(nextSession).not.toBe(session);
    next.resume();
    await new Promise((resolve) => next.once("close", resolve));
    nextSession.destroy();
  }, 10_000);
});

import http from "node:http";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { ProbeExec } from "./probeTypes.js";
import { runProbeOnce } from "./runProbeOnce.js";

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((close) => close()));
});

/** A loopback address other than the default probe host (127.0.0.1). */
const otherLoopback = "127.0.0.2";

async function listen(server: net.Server, host = "127.0.0.1"): Promise<number> {
  const sockets = new Set<net.Socket>();
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        // Drop lingering connections (the silent server holds some) so close() returns.
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  );
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("no port");
  return address.port;
}

/** A port nothing listens on: bound by us, then released. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("no port");
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return address.port;
}

describe("runProbeOnce http", () => {
  it("REQ-032 http probe passes on 200 and fails on 500 from the same server", async () => {
    const statuses = [200, 500];
    const paths: string[] = [];
    const server = http.createServer((request, response) => {
      paths.push(request.url ?? "");
      response.statusCode = statuses.shift() ?? 500;
      response.end("body");
    });
    const port = await listen(server);
    const action = { http: { path: "/healthz", port } };

    expect(await runProbeOnce(action, { timeoutMs: 2000 })).toEqual({
      ok: true,
      message: "HTTP 200",
    });
    expect(await runProbeOnce(action, { timeoutMs: 2000 })).toEqual({
      ok: false,
      message: "HTTP 500",
    });
    expect(paths).toEqual(["/healthz", "/healthz"]);
  });

  it("REQ-032 http probe treats a redirect as healthy without following it", async () => {
    const server = http.createServer((_request, response) => {
      response.writeHead(302, { location: "http://127.0.0.1:1/elsewhere" });
      response.end();
    });
    const port = await listen(server);
    const result = await runProbeOnce({ http: { path: "/", port } }, { timeoutMs: 2000 });
    expect(result).toEqual({ ok: true, message: "HTTP 302" });
  });

  it("REQ-032 http probe reports connection refused", async () => {
    const port = await closedPort();
    const result = await runProbeOnce({ http: { path: "/", port } }, { timeoutMs: 2000 });
    // Marked refused: nothing listened, so the supervisor has nobody to identify.
    expect(result).toEqual({ ok: false, message: "connection refused", refused: true });
  });

  it("REQ-032 http probe gives up at its deadline on a server that never answers", async () => {
    const server = net.createServer(() => {
      // Accepts the connection and says nothing.
    });
    const port = await listen(server);
    const result = await runProbeOnce({ http: { path: "/", port } }, { timeoutMs: 150 });
    expect(result).toEqual({ ok: false, message: "timed out after 150 ms" });
  });

  it("REQ-032 uses the host from the options when the action names none", async () => {
    // Listens on 127.0.0.2 only (all of 127/8 is loopback on Linux), which is not the
    // default host: a probe that ignored the option would be refused.
    const server = http.createServer((_request, response) => response.end());
    const port = await listen(server, otherLoopback);
    const action = { http: { path: "healthz", port } };
    expect(await runProbeOnce(action, { timeoutMs: 2000, host: otherLoopback })).toEqual({
      ok: true,
      message: "HTTP 200",
    });
    expect(await runProbeOnce(action, { timeoutMs: 2000 })).toEqual({
      ok: false,
      message: "connection refused",
      refused: true,
    });
  });
});

describe("runProbeOnce tcp", () => {
  it("REQ-032 tcp probe passes on an open port and fails on a closed one", async () => {
    const server = net.createServer((socket) => socket.end());
    const open = await listen(server);
    expect(await runProbeOnce({ tcp: { port: open } }, { timeoutMs: 2000 })).toEqual({
      ok: true,
      message: `connected to 127.0.0.1:${open}`,
    });

    const closed = await closedPort();
    expect(await runProbeOnce({ tcp: { port: closed } }, { timeoutMs: 2000 })).toEqual({
      ok: false,
      message: "connection refused",
      refused: true,
    });
  });

  it("REQ-032 tcp probe connects to the host from the options when the action names none", async () => {
    const server = net.createServer((socket) => socket.end());
    const port = await listen(server, otherLoopback);
    expect(await runProbeOnce({ tcp: { port } }, { timeoutMs: 2000, host: otherLoopback })).toEqual(
      { ok: true, message: `connected to ${otherLoopback}:${port}` },
    );
    // The action's own host wins over the option.
    expect(
      await runProbeOnce(
        { tcp: { port, host: "127.0.0.1" } },
        { timeoutMs: 2000, host: otherLoopback },
      ),
    ).toEqual({ ok: false, message: "connection refused", refused: true });
  });
});

describe("runProbeOnce exec", () => {
  it("REQ-032 exec probe passes on exit code 0 and fails otherwise, with the output", async () => {
    const commands: string[][] = [];
    const codes = [0, 1];
    const exec: ProbeExec = async (command) => {
      commands.push(command);
      const exitCode = codes.shift() ?? 1;
      return { exitCode, stdout: "", stderr: exitCode === 0 ? "" : "not ready yet\n" };
    };
    const action = { exec: { command: ["cat", "/tmp/healthy"] } };
    expect(await runProbeOnce(action, { timeoutMs: 1000, exec })).toEqual({
      ok: true,
      message: "exit code 0",
    });
    expect(await runProbeOnce(action, { timeoutMs: 1000, exec })).toEqual({
      ok: false,
      message: "exit code 1: not ready yet",
    });
    expect(commands).toEqual([
      ["cat", "/tmp/healthy"],
      ["cat", "/tmp/healthy"],
    ]);
  });

  it("REQ-032 exec probe fails when the runtime throws or never answers", async () => {
    const action = { exec: { command: ["true"] } };
    const throwing: ProbeExec = async () => {
      throw new Error("container is not running");
    };
    expect(await runProbeOnce(action, { timeoutMs: 1000, exec: throwing })).toEqual({
      ok: false,
      message: "exec failed: container is not running",
    });

    const silent: ProbeExec = () => new Promise(() => {});
    expect(await runProbeOnce(action, { timeoutMs: 50, exec: silent })).toEqual({
      ok: false,
      message: "timed out after 50 ms",
    });
  });

  it("exec probe without a runtime fails with a clear message", async () => {
    const result = await runProbeOnce({ exec: { command: ["true"] } }, { timeoutMs: 1000 });
    expect(result.ok).toBe(false);
    expect(result.message).toMatch(/no runtime/);
  });
});

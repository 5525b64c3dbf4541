import http from "node:http";
import net from "node:net";
import type { ProbeAction, ProbeExec, ProbeResult, RunProbeOptions } from "./probeTypes.js";

const defaultHost = "127.0.0.1";
/** Bounds how much command output ends up in a status line. */
const maxOutputChars = 200;

/**
 * Performs one probe against real sockets (or the runtime's exec) and never throws:
 * every failure is a result with a message. The deadline is wall-clock time on
 * purpose: it bounds a real network call, whatever clock schedules the probes.
 */
export async function runProbeOnce(
  action: ProbeAction,
  options: RunProbeOptions,
): Promise<ProbeResult> {
  const timeoutMs = Math.max(1, Math.floor(options.timeoutMs));
  const host = options.host ?? defaultHost;
  try {
    if ("http" in action) {
      return await httpProbe(
        action.http.host ?? host,
        action.http.port,
        action.http.path,
        timeoutMs,
      );
    }
    if ("tcp" in action) return await tcpProbe(action.tcp.host ?? host, action.tcp.port, timeoutMs);
    return await execProbe(action.exec.command, options.exec, timeoutMs);
  } catch (error) {
    // Only a bug gets here (e.g. an invalid port throwing synchronously); still a result.
    return { ok: false, message: `probe error: ${errorMessage(error)}` };
  }
}

function httpProbe(
  host: string,
  port: number,
  path: string,
  timeoutMs: number,
): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let settled = false;
    const request = http.request({
      host,
      port,
      path: path.startsWith("/") ? path : `/${path}`,
      method: "GET",
      // No pooling: a probe must open its own connection, or a stuck keep-alive socket
      // could make a dead server look alive.
      agent: false,
      headers: { "user-agent": "cloudless-probe/1", accept: "*/*", connection: "close" },
    });
    const finish = (result: ProbeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      request.destroy();
      resolve(result);
    };
    const timer = setTimeout(
      () => finish({ ok: false, message: `timed out after ${timeoutMs} ms` }),
      timeoutMs,
    );
    request.on("response", (response) => {
      // Destroying the request can abort the body stream; that is expected, not an error.
      response.on("error", () => {});
      response.resume();
      const status = response.statusCode ?? 0;
      // Kubernetes semantics: any 2xx or 3xx is healthy; redirects are not followed.
      finish({ ok: status >= 200 && status < 400, message: `HTTP ${status}` });
    });
    request.on("error", (error) => finish(socketFailure(error)));
    request.end();
  });
}

function tcpProbe(host: string, port: number, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let settled = false;
    const socket = net.connect({ host, port });
    const finish = (result: ProbeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(
      () => finish({ ok: false, message: `timed out after ${timeoutMs} ms` }),
      timeoutMs,
    );
    socket.once("connect", () => finish({ ok: true, message: `connected to ${host}:${port}` }));
    socket.on("error", (error) => finish(socketFailure(error)));
  });
}

async function execProbe(
  command: string[],
  exec: ProbeExec | undefined,
  timeoutMs: number,
): Promise<ProbeResult> {
  if (!exec) {
    return { ok: false, message: "exec probe has no runtime to run the command in" };
  }
  if (command.length === 0) return { ok: false, message: "exec probe has an empty command" };
  let cancelTimer = () => {};
  // The runtime is asked to honour the timeout, but a wedged engine might not: our own
  // deadline makes sure the probe loop never waits longer than timeoutMs.
  const deadline = new Promise<ProbeResult>((resolve) => {
    const timer = setTimeout(
      () => resolve({ ok: false, message: `timed out after ${timeoutMs} ms` }),
      timeoutMs,
    );
    cancelTimer = () => clearTimeout(timer);
  });
  const run = exec(command, timeoutMs).then(
    (result): ProbeResult => {
      const output = (result.stderr?.trim() || result.stdout?.trim() || "").slice(
        0,
        maxOutputChars,
      );
      const base = `exit code ${result.exitCode}`;
      return { ok: result.exitCode === 0, message: output ? `${base}: ${output}` : base };
    },
    (error: unknown): ProbeResult => ({
      ok: false,
      message: `exec failed: ${errorMessage(error)}`,
    }),
  );
  try {
    return await Promise.race([run, deadline]);
  } finally {
    cancelTimer();
  }
}

function socketFailure(error: Error): ProbeResult {
  const refused = (error as NodeJS.ErrnoException).code === "ECONNREFUSED";
  return { ok: false, message: describeSocketError(error), ...(refused ? { refused } : {}) };
}

/** Short, stable messages for the socket errors an operator will actually see. */
function describeSocketError(error: Error): string {
  const code = (error as NodeJS.ErrnoException).code;
  switch (code) {
    case "ECONNREFUSED":
      return "connection refused";
    case "ECONNRESET":
      return "connection reset";
    case "EHOSTUNREACH":
      return "host unreachable";
    case "ENETUNREACH":
      return "network unreachable";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "host not found";
    default:
      return error.message || String(code ?? "socket error");
  }
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

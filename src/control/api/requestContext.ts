/**
 * Per-request observability (REQ-070): a request ID and a child logger carrying it for
 * every call, and — while tracing is on — a SERVER span per unary call, joined to the
 * caller's trace when the request carries a W3C `traceparent` header. Streams
 * (heartbeats, watches, logs, exec) get a request ID and logger but no span: they last
 * as long as their peer wants, and a span per heartbeat would drown everything else.
 */
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextKey,
  type Interceptor,
} from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import type { Rng } from "../../lib/rng.js";
import { startStopwatch } from "../../lib/stopwatch.js";
import type { Logger } from "../../observe/logger.js";
import {
  endSpan,
  extractContext,
  failSpan,
  runInSpan,
  spanKind,
  startSpan,
} from "../../observe/tracing.js";
import { peerKey } from "./peer.js";

/** Response header (and error metadata) that tells the caller its request ID. */
export const requestIdHeader = "x-request-id";

export const requestLoggerKey = createContextKey<Logger | undefined>(undefined, {
  description: "the logger of one API request (carries its reqId)",
});

/** The request's logger (with reqId and method), or `fallback` outside a request. */
export function requestLogger(context: { values: ContextValues }, fallback: Logger): Logger {
  return context.values.get(requestLoggerKey) ?? fallback;
}

/** Codes that mean the server failed (OpenTelemetry RPC conventions); others are the caller's. */
const serverFaults = new Set<Code>([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

/** A caller's own request ID is kept if it is short and plain; otherwise a new one is made. */
function requestIdOf(header: string | null, rng: Rng): string {
  if (header && /^[A-Za-z0-9._:-]{1,64}$/.test(header)) return header;
  return rng.bytes(8).toString("hex");
}

/** Put it outermost: its span and logger then cover the other interceptors too. */
export function requestContextInterceptor(logger: Logger, rng: Rng): Interceptor {
  return (next) => async (request) => {
    const procedure = `${request.service.typeName}/${request.method.name}`;
    const reqId = requestIdOf(request.header.get(requestIdHeader), rng);
    if (request.method.methodKind !== "unary") {
      request.contextValues.set(requestLoggerKey, logger.child({ reqId, method: procedure }));
      return next(request);
    }
    const peer = request.contextValues.get(peerKey);
    const span = startSpan(
      procedure,
      {
        "rpc.system": "connect_rpc",
        "rpc.service": request.service.typeName,
        "rpc.method": request.method.name,
        "cloudless.request_id": reqId,
        ...(peer.identity
          ? { "cloudless.peer": `${peer.identity.kind}/${peer.identity.name}` }
          : {}),
      },
      // Joins the caller's trace when it sent one; never whatever context happens to be
      // active in the server.
      { kind: spanKind.server, parent: extractContext(request.header.get("traceparent")) },
    );
    return runInSpan(span, async () => {
      const log = logger.child({ reqId, method: procedure });
      request.contextValues.set(requestLoggerKey, log);
      const elapsedMs = startStopwatch();
      try {
        const response = await next(request);
        span.setAttribute("rpc.response.status_code", "ok");
        response.header.set(requestIdHeader, reqId);
        log.debug({ code: "ok", durationMs: Math.round(elapsedMs()) }, "served");
        return response;
      } catch (error) {
        const connectError = ConnectError.from(error);
        const code = codeToString(connectError.code);
        span.setAttributes({
          "rpc.response.status_code": code,
          "rpc.connect_rpc.error_code": code,
        });
        if (serverFaults.has(connectError.code)) {
          failSpan(span, connectError);
        }
        if (error instanceof ConnectError) error.metadata.set(requestIdHeader, reqId);
        log.debug({ code, durationMs: Math.round(elapsedMs()) }, "served");
        throw error;
      } finally {
        endSpan(span);
      }
    });
  };
}

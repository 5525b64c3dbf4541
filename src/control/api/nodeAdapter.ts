import { Code, ConnectError, type ConnectRouter, createConnectRouter } from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerRequest } from "@connectrpc/connect/protocol";
import {
  type ConnectNodeAdapterOptions,
  compressionBrotli,
  compressionGzip,
  type connectNodeAdapter,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import { limits } from "../../api/limits.js";

type NodeHandler = ReturnType<typeof connectNodeAdapter>;

/** A method whose oversized requests get the method's own answer instead of Connect's. */
export interface RequestCap {
  /** Bytes of request body at most (at most the router's readMaxBytes). */
  maxBytes: number;
  /** The error an oversized request gets, in whichever protocol it came. */
  refusal: () => ConnectError;
}

/**
 * connectNodeAdapter (@connectrpc/connect-node 2.1), with one addition: per-method
 * request caps. Connect refuses a body over readMaxBytes itself, before any interceptor
 * runs, with ResourceExhausted and a message of its own; for ApplyWorkload that made a
 * 5 MB spec get another answer than a 300 KiB one (issue 12). A capped method's body is
 * counted as it arrives and refused with the method's own error once past the cap, or at
 * once when its declared length already is.
 */
export function cappedNodeAdapter(
  options: ConnectNodeAdapterOptions & { caps: ReadonlyMap<string, RequestCap> },
): NodeHandler {
  const router: ConnectRouter = createConnectRouter({
    ...options,
    acceptCompression: options.acceptCompression ?? [compressionGzip, compressionBrotli],
  });
  options.routes(router);
  const paths = new Map<string, UniversalHandler>();
  for (const handler of router.handlers) {
    const cap = options.caps.get(handler.requestPath);
    paths.set(handler.requestPath, cap ? capped(handler, cap) : handler);
  }
  return (request, response) => {
    const handler = paths.get(request.url?.split("?", 2)[0] ?? "");
    if (!handler) {
      if (options.fallback) {
        options.fallback(request, response);
      } else {
        response.writeHead(404);
        response.end();
      }
      return;
    }
    const universal = universalRequestFromNodeRequest(
      request,
      response,
      undefined,
      options.contextValues?.(request),
    );
    handler(universal)
      .then((answer) => universalResponseToNodeResponse(answer, response))
      .catch((reason: unknown) => {
        // As in connectNodeAdapter: a client that went away is no failure of ours.
        if (ConnectError.from(reason).code === Code.Aborted) return;
        response.destroy();
      });
  };
}

function capped(handler: UniversalHandler, cap: RequestCap): UniversalHandler {
  const run = (request: UniversalServerRequest) => {
    const body = request.body;
    if (typeof body !== "object" || body === null || !(Symbol.asyncIterator in body)) {
      return handler(request);
    }
    const declared = Number(request.header.get("content-length") ?? Number.NaN);
    const counted = body as AsyncIterable<Uint8Array>;
    // gRPC, gRPC-web and Connect streaming frame each message with its length, which
    // Connect checks against readMaxBytes as soon as it has read the frame's header.
    const framed = /^application\/(grpc|connect\+)/i.test(request.header.get("content-type") ?? "");
    if (!(declared > cap.maxBytes)) {
      return handler({ ...request, body: countBytes(counted, cap.maxBytes, cap.refusal, framed) });
    }
    // Connect would refuse a declared length over its readMaxBytes before reading a
    // byte, in its own words; without the length it reads, and the first chunk is ours.
    const header = new Headers(request.header);
    header.delete("content-length");
    return handler({ ...request, header, body: countBytes(counted, 0, cap.refusal, framed) });
  };
  return Object.assign(run, {
    protocolNames: handler.protocolNames,
    service: handler.service,
    method: handler.method,
    requestPath: handler.requestPath,
    allowedMethods: handler.allowedMethods,
    supportedContentType: handler.supportedContentType,
  });
}

/**
 * How much of a refused body is still read (and dropped) so the refusal reaches the
 * client after its upload, on a healthy connection. Answered early instead, the rest of
 * the upload arrives on a closed stream: HTTP/2 counts each such frame as invalid and,
 * after 1,000 on one connection (three 5 MB requests), ends it with ENHANCE_YOUR_CALM,
 * failing every call on it. Past this the stream is reset.
 */
const drainMaxBytes = 4 * limits.requestBytes;

/**
 * The body as it arrives, refused once past `maxBytes`; when `framed`, also as soon as
 * the first frame's header (a flags byte and a 32-bit length) declares more. A refused
 * body is read to its end (up to drainMaxBytes) before the refusal is thrown.
 */
async function* countBytes(
  body: AsyncIterable<Uint8Array>,
  maxBytes: number,
  refusal: () => ConnectError,
  framed: boolean,
): AsyncIterable<Uint8Array> {
  let total = 0;
  let refused = false;
  const header: number[] = [];
  for await (const chunk of body) {
    total += chunk.byteLength;
    if (refused || total > maxBytes) {
      refused = true;
      if (total > drainMaxBytes) throw refusal();
      continue;
    }
    if (framed && header.length < 5) {
      for (let i = 0; i < chunk.byteLength && header.length < 5; i++) header.push(chunk[i] ?? 0);
      refused = header.length === 5 && Buffer.from(header).readUInt32BE(1) > maxBytes;
      if (refused) continue;
    }
    yield chunk;
  }
  if (refused) throw refusal();
}

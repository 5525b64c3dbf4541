import type { OutgoingHttpHeaders } from "node:http";

/**
 * The `grpc-message` status text, percent-encoded as the gRPC spec says
 * (PROTOCOL-HTTP2.md, "Percent-Encoded"): every byte of its UTF-8 form outside printable
 * ASCII (0x20–0x7E), and `%` itself, becomes `%XX`; everything else stays as it is.
 * connect-node encodes with encodeURIComponent, which also escapes `;`, `/`, `:`, `"`
 * and more; grpc-js decodes with decodeURI, which leaves `%3B`, `%2F` and `%3A` in the
 * text its users read. Text encoded by the spec decodes the same with either.
 */
export function percentEncodeGrpcMessage(message: string): string {
  let encoded = "";
  for (const byte of Buffer.from(message, "utf8")) {
    encoded +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return encoded;
}

/** Re-encodes a grpc-message value written by connect-node (encodeURIComponent). */
function reencode(value: string): string {
  let message: string;
  try {
    message = decodeURIComponent(value);
  } catch {
    // Not connect-node's encoding (our own writers use the spec's): keep it.
    return value;
  }
  return percentEncodeGrpcMessage(message);
}

function withSpecGrpcMessage(headers: OutgoingHttpHeaders): OutgoingHttpHeaders {
  const result: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    result[name] =
      name.toLowerCase() === "grpc-message" && typeof value === "string" ? reencode(value) : value;
  }
  return result;
}

/** The parts of a Node HTTP/1 or HTTP/2 response that carry headers and trailers. */
interface HeaderWriter {
  writeHead(status: number, ...rest: unknown[]): unknown;
  addTrailers(trailers: OutgoingHttpHeaders): void;
}

/**
 * Makes every `grpc-message` the response sends, in its headers (a trailers-only error)
 * or its trailers, encoded as the gRPC spec says. Applied to gRPC and gRPC-web requests
 * before connect-node's handler writes them.
 */
export function encodeGrpcMessagesPerSpec(response: HeaderWriter): void {
  const writeHead = response.writeHead.bind(response);
  response.writeHead = (status: number, ...rest: unknown[]) =>
    writeHead(
      status,
      ...rest.map((argument) =>
        typeof argument === "object" && argument !== null && !Array.isArray(argument)
          ? withSpecGrpcMessage(argument as OutgoingHttpHeaders)
          : argument,
      ),
    );
  const addTrailers = response.addTrailers.bind(response);
  response.addTrailers = (trailers: OutgoingHttpHeaders) =>
    addTrailers(withSpecGrpcMessage(trailers));
}

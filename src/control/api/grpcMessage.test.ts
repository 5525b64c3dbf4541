import type { OutgoingHttpHeaders } from "node:http";
import { describe, expect, it } from "vitest";
import { encodeGrpcMessagesPerSpec, percentEncodeGrpcMessage } from "./grpcMessage.js";

describe("REQ-080 grpc-message percent-encoding (gRPC PROTOCOL-HTTP2.md)", () => {
  it.each([
    ['node "a/b:c" not found; join again', 'node "a/b:c" not found; join again'],
    ["100% done", "100%25 done"],
    ["é ✓", "%C3%A9 %E2%9C%93"],
    ["line\nbreak\ttab\u007f", "line%0Abreak%09tab%7F"],
    ["", ""],
  ])(
    "%j is sent as %j and reads back the same with decodeURI and decodeURIComponent",
    (text, wire) => {
      expect(percentEncodeGrpcMessage(text)).toBe(wire);
      expect(decodeURI(wire)).toBe(text);
      expect(decodeURIComponent(wire)).toBe(text);
    },
  );

  it("rewrites connect-node's encodeURIComponent form in headers and trailers, and nothing else", () => {
    const written: { head: unknown[]; trailers: OutgoingHttpHeaders[] } = {
      head: [],
      trailers: [],
    };
    const response = {
      writeHead: (...args: unknown[]) => {
        written.head = args;
        return response;
      },
      addTrailers: (trailers: OutgoingHttpHeaders) => {
        written.trailers.push(trailers);
      },
    };
    encodeGrpcMessagesPerSpec(response);
    const message = 'workload "web" not found; see: cloudless workload list';
    response.writeHead(200, {
      "content-type": "application/grpc",
      "grpc-status": "5",
      "grpc-message": encodeURIComponent(message),
    });
    response.addTrailers({ "grpc-status": "5", "grpc-message": encodeURIComponent(message) });
    expect(written.head).toEqual([
      200,
      { "content-type": "application/grpc", "grpc-status": "5", "grpc-message": message },
    ]);
    expect(written.trailers).toEqual([{ "grpc-status": "5", "grpc-message": message }]);
    // A value that is not valid URI encoding is passed on as it is.
    response.addTrailers({ "grpc-message": "50%" });
    expect(written.trailers.at(-1)).toEqual({ "grpc-message": "50%" });
  });
});

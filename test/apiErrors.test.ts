import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GetNodeRequestSchema, NodeService } from "../src/api/gen/cloudless/v1/node_pb.js";
import { TokenService } from "../src/api/gen/cloudless/v1/token_pb.js";
import { type ClientCredentials, loadClientConfig } from "../src/client/config.js";
import { TestCluster } from "./helpers/cluster.js";
import { TestResources } from "./helpers/processes.js";
import { http2Post, httpsPost } from "./helpers/tlsProbe.js";

/** A gRPC request body: the 5-byte envelope (uncompressed, length) and the message. */
function grpcFrame(message: Uint8Array): Buffer {
  const envelope = Buffer.alloc(5);
  envelope.writeUInt32BE(message.length, 1);
  return Buffer.concat([envelope, Buffer.from(message)]);
}

/** grpc-js (1.14, src/subchannel-call.ts) reads grpc-message with decodeURI. */
function asGrpcJsReadsIt(value: string): string {
  return decodeURI(value);
}

describe("API errors as other clients read them", () => {
  const resources = new TestResources();
  let cluster: TestCluster;
  let admin: ClientCredentials;

  beforeAll(async () => {
    cluster = await TestCluster.start(resources);
    admin = await loadClientConfig(cluster.configPath);
  });
  afterAll(async () => {
    await resources.cleanup();
  });

  const grpcCall = (path: string, body: Buffer, withCert: boolean) =>
    http2Post({
      host: "127.0.0.1",
      port: cluster.port,
      path,
      body,
      caPem: admin.caPem,
      ...(withCert ? { certPem: admin.certPem, keyPem: admin.keyPem } : {}),
      contentType: "application/grpc",
      headers: { te: "trailers" },
    });

  it("REQ-080 hardening: grpc-message is percent-encoded as the gRPC spec says, so a grpc-js client reads ';', '/' and ':' as written", async () => {
    const name = "no/such:node;here é";
    const getNode = `/${NodeService.typeName}/${NodeService.method.getNode.name}`;
    const notFound = await grpcCall(
      getNode,
      grpcFrame(toBinary(GetNodeRequestSchema, create(GetNodeRequestSchema, { name }))),
      true,
    );
    // An error after the handler ran: the status is in the trailers (or, for a
    // trailers-only answer, in the headers).
    const status = { ...notFound.headers, ...notFound.trailers };
    expect(status["grpc-status"], JSON.stringify(status)).toBe("5");
    const encoded = String(status["grpc-message"]);
    // Printable ASCII stays as it is; only '%' and bytes outside 0x20-0x7E are encoded.
    expect(encoded).toContain("no/such:node;here %C3%A9");
    expect(encoded).not.toMatch(/%3B|%2F|%3A|%20|%22/i);
    expect(asGrpcJsReadsIt(encoded)).toContain(`"${name}"`);
    expect(decodeURIComponent(encoded)).toBe(asGrpcJsReadsIt(encoded));

    // Refused before any handler (no client certificate): the same encoding.
    const anonymous = await grpcCall(getNode, grpcFrame(new Uint8Array()), false);
    const refusal = { ...anonymous.headers, ...anonymous.trailers };
    expect(refusal["grpc-status"]).toBe("16");
    const refusalText = String(refusal["grpc-message"]);
    expect(refusalText).toMatch(/no client certificate was presented; use the admin config/);
    expect(refusalText).not.toMatch(/%3B|%20|%60/i);
  });

  it("REQ-080 hardening: HTTP/JSON refuses a field the method does not have, naming it, and does nothing", async () => {
    const createToken = `/${TokenService.typeName}/${TokenService.method.createToken.name}`;
    const post = (body: unknown) =>
      httpsPost({
        host: "127.0.0.1",
        port: cluster.port,
        path: createToken,
        body: JSON.stringify(body),
        caPem: admin.caPem,
        certPem: admin.certPem,
        keyPem: admin.keyPem,
      });
    const tokens = async () => (await cluster.cliJson<unknown[]>(["token", "list"])).length;
    const before = await tokens();

    const typo = await post({ ttlSeconds: 60, descriptoin: "typo", zzz: 1 });
    expect(typo.status, typo.body).toBe(400);
    const error = JSON.parse(typo.body) as { code: string; message: string };
    expect(error.code).toBe("invalid_argument");
    expect(error.message).toMatch(/"descriptoin" is unknown/);
    expect(await tokens()).toBe(before);

    // The same request without the stray fields is served.
    const good = await post({ ttlSeconds: 60, description: "fine" });
    expect(good.status, good.body).toBe(200);
    expect(await tokens()).toBe(before + 1);
  });
});

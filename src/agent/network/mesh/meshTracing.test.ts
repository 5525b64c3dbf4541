/**
 * The mesh's span per accepted flow, with tracing on (its own file: the tracer is global to
 * the process, and the other mesh tests run with it off).
 */
import * as net from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { meshPeer, testCluster } from "../../../../test/helpers/meshCertificates.js";
import { OtlpReceiver } from "../../../../test/helpers/otlp.js";
import { systemClock } from "../../../lib/clock.js";
import { silentLogger } from "../../../observe/logger.js";
import { initTracing, shutdownTracing } from "../../../observe/tracing.js";
import { MeshNode } from "./meshNode.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
});

describe("mesh tracing", () => {
  it("REQ-040 REQ-070: the accepting node records a mesh.flow span whose parent is the traceparent the dialler sent", async () => {
    const otlp = await OtlpReceiver.start();
    cleanups.push(() => otlp.close());
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = otlp.endpoint;
    expect(await initTracing({ serviceName: "cloudless-agent" })).toBe(true);

    const replica = net.createServer((socket) => socket.end("from the replica"));
    await new Promise<void>((resolve) => replica.listen({ host: "127.0.0.1", port: 0 }, resolve));
    cleanups.push(() => new Promise<void>((resolve) => replica.close(() => resolve())));
    const replicaPort = (replica.address() as net.AddressInfo).port;

    const cluster = await testCluster("test");
    const nodes: Record<string, { node: MeshNode; port: number }> = {};
    for (const name of ["a", "b"]) {
      const pair = await cluster.issue("node", name);
      const node = new MeshNode({
        identity: () => ({
          clusterName: "test",
          nodeName: name,
          caPem: cluster.caPem,
          certPem: pair.certPem,
          keyPem: pair.keyPem,
        }),
        host: "127.0.0.1",
        port: 0,
        relay: false,
        resolveLocal: () => replicaPort,
        logger: silentLogger,
        clock: systemClock,
      });
      cleanups.push(() => node.stop());
      nodes[name] = { node, port: (await node.start()).port };
    }
    const peers = ["a", "b"].map((name) => meshPeer(name, { port: nodes[name]!.port }));
    for (const { node } of Object.values(nodes)) node.setPeers(peers, []);

    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const parentSpanId = "00f067aa0ba902b7";
    const flow = await nodes.a!.node.dial(
      "b",
      { namespace: "default", service: "web", port: "http", replicaId: "r1" },
      { timeoutMs: 5_000, traceparent: `00-${traceId}-${parentSpanId}-01` },
    );
    const body = await new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      flow.on("data", (chunk: Buffer) => chunks.push(chunk));
      flow.on("error", reject);
      flow.on("end", () => resolve(Buffer.concat(chunks).toString()));
      flow.end();
    });
    expect(body).toBe("from the replica");
    flow.destroy();
    // The span ends once both sides of the accepted flow closed; shutdownTracing flushes it.
    const deadline = Date.now() + 5_000;
    while (nodes.b!.node.inboundFlowCount() > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(nodes.b!.node.inboundFlowCount()).toBe(0);
    await shutdownTracing();

    const span = otlp.spans.find((s) => s.name === "mesh.flow");
    expect(span).toBeDefined();
    expect(span?.traceId).toBe(traceId);
    expect(span?.parentSpanId).toBe(parentSpanId);
    expect(span?.kind).toBe(2);
    expect(span?.attributes).toMatchObject({
      "cloudless.peer.node": "a",
      "cloudless.service": "default/web",
      "cloudless.service.port": "http",
      "cloudless.replica": "r1",
      "cloudless.bytes.from_replica": 16,
    });
  });
});

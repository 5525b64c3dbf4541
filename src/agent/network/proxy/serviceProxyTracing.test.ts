/**
 * The proxy's span per connection, with tracing on (its own file: the tracer is global to
 * the process, and the other proxy tests run with it off).
 */
import * as net from "node:net";
import type { Duplex } from "node:stream";
import { create } from "@bufbuild/protobuf";
import { afterAll, describe, expect, it } from "vitest";
import { OtlpReceiver } from "../../../../test/helpers/otlp.js";
import { ServiceSchema } from "../../../api/gen/cloudless/v1/service_pb.js";
import { systemClock } from "../../../lib/clock.js";
import { seededRng } from "../../../lib/rng.js";
import { silentLogger } from "../../../observe/logger.js";
import { initTracing, shutdownTracing } from "../../../observe/tracing.js";
import type { MeshDialOptions, MeshTarget } from "../networkTypes.js";
import { ServiceProxy } from "./serviceProxy.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
});

describe("ServiceProxy tracing", () => {
  it("REQ-042 REQ-070: each proxied connection is a span, and its traceparent goes with the mesh dial", async () => {
    const otlp = await OtlpReceiver.start();
    cleanups.push(() => otlp.close());
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = otlp.endpoint;
    expect(await initTracing({ serviceName: "cloudless-agent" })).toBe(true);

    const backend = net.createServer((socket) => socket.end("remote"));
    await new Promise<void>((resolve) => backend.listen({ host: "127.0.0.1", port: 0 }, resolve));
    cleanups.push(() => new Promise<void>((resolve) => backend.close(() => resolve())));
    const backendPort = (backend.address() as net.AddressInfo).port;
    const dials: MeshDialOptions[] = [];
    const mesh = {
      dial(_node: string, _target: MeshTarget, options?: MeshDialOptions): Promise<Duplex> {
        dials.push(options ?? {});
        return new Promise((resolve, reject) => {
          const socket = net.connect(backendPort, "127.0.0.1");
          socket.once("connect", () => resolve(socket));
          socket.once("error", reject);
        });
      },
    };
    const proxy = new ServiceProxy({
      locality: { node: "n1", zone: "a", region: "r" },
      rng: seededRng(3),
      clock: systemClock,
      logger: silentLogger,
      mesh,
    });
    cleanups.push(() => proxy.close());
    await proxy.setServices([
      create(ServiceSchema, {
        namespace: "default",
        name: "web",
        vip: "10.96.0.20",
        ports: [{ name: "http", port: 80, protocol: "tcp" }],
        endpoints: [
          {
            replicaId: "r1",
            node: "n2",
            zone: "b",
            region: "r",
            ready: true,
            weight: 1,
            hostPorts: { http: 4000 },
          },
        ],
      }),
    ]);
    const listenPort = proxy.listenerPort("default", "web", "http")!;
    const body = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(listenPort, "127.0.0.1");
      const chunks: Buffer[] = [];
      socket.on("data", (chunk: Buffer) => chunks.push(chunk));
      socket.on("error", reject);
      socket.on("close", () => resolve(Buffer.concat(chunks).toString()));
    });
    expect(body).toBe("remote");
    // The span ends when both sides have closed; shutdownTracing then flushes it.
    const deadline = Date.now() + 5_000;
    while (proxy.openSockets > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(proxy.openSockets).toBe(0);
    await shutdownTracing();

    const span = otlp.spans.find((s) => s.name === "proxy.connection");
    expect(span).toBeDefined();
    expect(span?.attributes).toMatchObject({
      "cloudless.service": "default/web",
      "cloudless.service.port": "http",
      "cloudless.endpoint": "r1",
      "cloudless.endpoint.node": "n2",
      "cloudless.bytes.from_endpoint": 6,
    });
    expect(dials[0]?.traceparent).toBe(`00-${span?.traceId}-${span?.spanId}-01`);
  });
});

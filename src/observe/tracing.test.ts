import { PassThrough } from "node:stream";
import { ROOT_CONTEXT, trace } from "@opentelemetry/api";
import { afterAll, describe, expect, it } from "vitest";
import { OtlpReceiver } from "../../test/helpers/otlp.js";
import { createLogger } from "./logger.js";
import {
  activeTraceIds,
  extractContext,
  initTracing,
  injectTraceparent,
  runUntraced,
  shutdownTracing,
  startSpan,
  tracingConfigured,
  tracingEnabled,
  withChildSpan,
  withSpan,
} from "./tracing.js";

const traceparentPattern = /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/;

/** A logger writing into an array of parsed lines. */
function capturingLogger(): {
  logger: ReturnType<typeof createLogger>;
  lines: Record<string, unknown>[];
} {
  const lines: Record<string, unknown>[] = [];
  const destination = new PassThrough();
  destination.on("data", (chunk: Buffer) => {
    for (const line of chunk.toString().split("\n")) {
      if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
    }
  });
  return { logger: createLogger({ component: "test", destination }), lines };
}

/** Lets the PassThrough deliver what pino wrote. */
const drained = () => new Promise((resolve) => setImmediate(resolve));

// The tests of this file share one process (and its global tracer): off first, then on.
describe("tracing while not configured", () => {
  it("REQ-070 is configured only by an OTLP endpoint, and OTEL_SDK_DISABLED wins", () => {
    expect(tracingConfigured({})).toBe(false);
    expect(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" })).toBe(true);
    expect(
      tracingConfigured({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://collector:4318/v1/traces" }),
    ).toBe(true);
    expect(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: "  " })).toBe(false);
    expect(
      tracingConfigured({
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318",
        OTEL_SDK_DISABLED: "true",
      }),
    ).toBe(false);
    expect(
      tracingConfigured({
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318",
        OTEL_TRACES_EXPORTER: "none",
      }),
    ).toBe(false);
  });

  it("REQ-070 without OTEL_EXPORTER_OTLP_ENDPOINT every helper is a no-op", async () => {
    delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
    delete process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
    expect(await initTracing({ serviceName: "cloudless-coordinator" })).toBe(false);
    expect(tracingEnabled()).toBe(false);
    // No tracer provider was registered: the API's tracers record nothing.
    expect(trace.getTracer("probe").startSpan("probe").isRecording()).toBe(false);

    const { logger, lines } = capturingLogger();
    const result = await withSpan("outer", { a: 1 }, async (span) => {
      expect(span.isRecording()).toBe(false);
      expect(injectTraceparent()).toBeUndefined();
      expect(activeTraceIds()).toEqual({});
      logger.info("inside");
      return withChildSpan("inner", {}, () => 42);
    });
    expect(result).toBe(42);
    expect(startSpan("manual", {}).isRecording()).toBe(false);
    expect(runUntraced(() => "plain")).toBe("plain");
    const remote = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    expect(extractContext(remote)).toBeUndefined();
    expect(extractContext(remote, ROOT_CONTEXT)).toBe(ROOT_CONTEXT);
    await drained();
    expect(lines[0]).toMatchObject({ msg: "inside", component: "test" });
    expect(lines[0]).not.toHaveProperty("traceId");
    await shutdownTracing();
  });

  it("REQ-070 OTEL_SDK_DISABLED=true keeps tracing off even with an endpoint", async () => {
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = "http://127.0.0.1:9";
    process.env.OTEL_SDK_DISABLED = "true";
    try {
      expect(await initTracing({ serviceName: "cloudless-agent" })).toBe(false);
      expect(tracingEnabled()).toBe(false);
    } finally {
      delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
      delete process.env.OTEL_SDK_DISABLED;
      await shutdownTracing();
    }
  });
});

describe("tracing to an OTLP/HTTP receiver", () => {
  let receiver: OtlpReceiver | undefined;
  afterAll(async () => {
    await shutdownTracing();
    await receiver?.close();
    delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
  });

  it("REQ-070 exports nested spans, carries context through traceparent strings and stamps log lines", async () => {
    const otlp = await OtlpReceiver.start();
    receiver = otlp;
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = otlp.endpoint;
    expect(
      await initTracing({
        serviceName: "cloudless-agent",
        version: "9.9.9",
        node: Promise.resolve("node-a"),
      }),
    ).toBe(true);
    expect(tracingEnabled()).toBe(true);
    const { logger, lines } = capturingLogger();

    // Outside any span, child spans are not made.
    expect(withChildSpan("orphan", {}, () => "ran")).toBe("ran");

    let traceparent: string | undefined;
    let outerIds: { traceId?: string; spanId?: string } = {};
    await withSpan("outer", { "test.attr": "x" }, async () => {
      outerIds = activeTraceIds();
      logger.info({ token: "secret-value" }, "in a span");
      await withChildSpan("inner", { "test.inner": true }, async () => undefined);
      traceparent = injectTraceparent();
      // Work started from here but belonging to no request begins its own trace.
      await runUntraced(async () => {
        withChildSpan("not-made", {}, () => undefined);
        await withSpan("detached", {}, async () => undefined);
      });
    });
    expect(traceparent).toMatch(traceparentPattern);
    await withSpan("remote-child", {}, async () => undefined, {
      parent: extractContext(traceparent),
    });
    await expect(
      withSpan("failing", {}, async () => {
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    logger.info("outside");

    await shutdownTracing();
    expect(tracingEnabled()).toBe(false);

    const spans = otlp.spans;
    const byName = (name: string) => spans.find((s) => s.name === name);
    const outer = byName("outer");
    expect(outer).toBeDefined();
    expect(outer?.parentSpanId).toBe("");
    expect(outer?.attributes["test.attr"]).toBe("x");
    expect(outer?.service).toBe("cloudless-agent");
    expect(outer?.resource["service.version"]).toBe("9.9.9");
    expect(outer?.resource["cloudless.node"]).toBe("node-a");
    expect(traceparent).toBe(`00-${outer?.traceId}-${outer?.spanId}-01`);
    expect(byName("inner")).toMatchObject({
      traceId: outer?.traceId,
      parentSpanId: outer?.spanId,
    });
    expect(byName("remote-child")).toMatchObject({
      traceId: outer?.traceId,
      parentSpanId: outer?.spanId,
    });
    expect(byName("detached")?.parentSpanId).toBe("");
    expect(byName("detached")?.traceId).not.toBe(outer?.traceId);
    expect(byName("failing")?.statusCode).toBe(2);
    expect(byName("orphan")).toBeUndefined();
    expect(byName("not-made")).toBeUndefined();

    await drained();
    const inSpan = lines.find((line) => line.msg === "in a span");
    expect(inSpan).toMatchObject({ traceId: outer?.traceId, spanId: outer?.spanId });
    expect(outerIds).toEqual({ traceId: outer?.traceId, spanId: outer?.spanId });
    // Redaction still applies.
    expect(inSpan?.token).toBe("[REDACTED]");
    expect(lines.find((line) => line.msg === "outside")).not.toHaveProperty("traceId");
  });
});

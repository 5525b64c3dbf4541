/**
 * OpenTelemetry traces (REQ-070). Off unless an OTLP endpoint is configured the
 * standard way (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, and
 * not OTEL_SDK_DISABLED=true): then spans go in batches to that endpoint over OTLP/HTTP
 * (JSON). While off, every helper here is a plain function call — neither the SDK nor
 * the API package is even loaded, so commands and daemons that do not trace pay nothing.
 *
 * Spans are created by hand (no auto-instrumentation). Trace context crosses processes
 * as a W3C `traceparent` string: in request headers, on workload and replica records,
 * and in the Assignment message pushed to agents.
 */
import type {
  Attributes,
  Context,
  Link,
  Span,
  SpanKind,
  TextMapPropagator,
  TimeInput,
  Tracer,
} from "@opentelemetry/api";
import type { Logger } from "./logger.js";

export type { Span };

type Api = typeof import("@opentelemetry/api");

/** Span kinds (the API's enum values, usable without loading the API). */
export const spanKind = {
  internal: 0 as SpanKind,
  server: 1 as SpanKind,
  client: 2 as SpanKind,
};

export interface TracingOptions {
  serviceName: "cloudless-coordinator" | "cloudless-agent";
  /** The node name (agents); a promise when it is only known after enrollment. */
  node?: string | Promise<string | undefined>;
  /** Version reported as service.version. */
  version?: string;
  /** Where export problems are reported (rate-limited); silent without one. */
  logger?: Logger;
}

interface TracingState {
  api: Api;
  tracer: Tracer;
  propagator: TextMapPropagator;
  shutdown(): Promise<void>;
}

let state: TracingState | undefined;
let starting: Promise<boolean> | undefined;

/** A span that records nothing, handed to callbacks while tracing is off. */
const noopSpan: Span = {
  spanContext: () => ({ traceId: "0".repeat(32), spanId: "0".repeat(16), traceFlags: 0 }),
  setAttribute() {
    return this;
  },
  setAttributes() {
    return this;
  },
  addEvent() {
    return this;
  },
  addLink() {
    return this;
  },
  addLinks() {
    return this;
  },
  setStatus() {
    return this;
  },
  updateName() {
    return this;
  },
  end: () => undefined,
  isRecording: () => false,
  recordException: () => undefined,
};

/** Whether the environment asks for traces: an OTLP endpoint, and the SDK not disabled. */
export function tracingConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  if ((env.OTEL_SDK_DISABLED ?? "").trim().toLowerCase() === "true") return false;
  if ((env.OTEL_TRACES_EXPORTER ?? "").trim().toLowerCase() === "none") return false;
  return Boolean(
    env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim(),
  );
}

/** Whether spans are being recorded in this process. */
export function tracingEnabled(): boolean {
  return state !== undefined;
}

/**
 * Starts exporting spans if the environment configures an endpoint (see
 * tracingConfigured); resolves with whether it did. Once per process: later calls
 * return the first one's answer.
 */
export function initTracing(options: TracingOptions): Promise<boolean> {
  if (!starting) {
    starting = start(options).catch((error: unknown) => {
      options.logger?.warn({ err: error }, "cannot start tracing; continuing without traces");
      return false;
    });
  }
  return starting;
}

async function start(options: TracingOptions): Promise<boolean> {
  // The exporter and batch processor read the same variables (process.env) themselves.
  if (!tracingConfigured(process.env)) return false;
  // Loaded only now: a process that does not trace never pays for the SDK.
  const [
    api,
    { AsyncLocalStorageContextManager },
    { W3CTraceContextPropagator },
    { BasicTracerProvider, BatchSpanProcessor },
    { OTLPTraceExporter },
    { defaultResource, detectResources, envDetector, resourceFromAttributes },
    { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION },
  ] = await Promise.all([
    import("@opentelemetry/api"),
    import("@opentelemetry/context-async-hooks"),
    import("@opentelemetry/core"),
    import("@opentelemetry/sdk-trace-base"),
    import("@opentelemetry/exporter-trace-otlp-http"),
    import("@opentelemetry/resources"),
    import("@opentelemetry/semantic-conventions"),
  ]);
  const { context, diag, trace } = api;
  if (options.logger) diag.setLogger(rateLimitedDiag(options.logger), api.DiagLogLevel.WARN);
  const contextManager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);

  // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override what is set here.
  const resource = defaultResource()
    .merge(
      resourceFromAttributes({
        [ATTR_SERVICE_NAME]: options.serviceName,
        ...(options.version ? { [ATTR_SERVICE_VERSION]: options.version } : {}),
        ...(options.node !== undefined ? { "cloudless.node": options.node } : {}),
      }),
    )
    .merge(detectResources({ detectors: [envDetector] }));
  // Endpoint, headers, timeout, compression and TLS files come from the OTEL_EXPORTER_OTLP_*
  // variables; queue size, batch size and delay from OTEL_BSP_* (defaults: a queue of
  // 2048 spans — more are dropped, never buffered without bound — batches of 512, 5 s).
  const exporter = new OTLPTraceExporter();
  const provider = new BasicTracerProvider({
    resource,
    spanProcessors: [new BatchSpanProcessor(exporter)],
  });
  trace.setGlobalTracerProvider(provider);
  state = {
    api,
    tracer: provider.getTracer("cloudless", options.version),
    propagator: new W3CTraceContextPropagator(),
    async shutdown() {
      await provider.shutdown();
      trace.disable();
      context.disable();
      diag.disable();
    },
  };
  return true;
}

/**
 * Flushes the spans still queued and stops tracing, waiting at most `deadlineMs` (an
 * unreachable collector must not hold up a stopping daemon). A no-op when off.
 */
export async function shutdownTracing(deadlineMs = 5_000): Promise<void> {
  await starting;
  const current = state;
  state = undefined;
  starting = undefined;
  if (!current) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    current.shutdown().catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, deadlineMs);
      timer.unref();
    }),
  ]);
  clearTimeout(timer);
}

export interface SpanStartOptions {
  kind?: SpanKind;
  /** The parent; default the active context. */
  parent?: Context | undefined;
  /** Start a new trace even if a span is active. */
  root?: boolean;
  links?: Link[];
  startTime?: TimeInput;
}

function startWith(
  current: TracingState,
  name: string,
  attributes: Attributes,
  options: SpanStartOptions,
  parent: Context,
): Span {
  return current.tracer.startSpan(
    name,
    {
      attributes,
      ...(options.kind !== undefined ? { kind: options.kind } : {}),
      ...(options.root ? { root: true } : {}),
      ...(options.links ? { links: options.links } : {}),
      ...(options.startTime !== undefined ? { startTime: options.startTime } : {}),
    },
    parent,
  );
}

/**
 * Runs `fn` inside a new span (active for everything `fn` awaits) and ends the span when
 * `fn` returns or its promise settles; a throw or rejection marks the span as failed.
 * While tracing is off, it just calls `fn`.
 */
export function withSpan<T>(
  name: string,
  attributes: Attributes,
  fn: (span: Span) => T,
  options: SpanStartOptions = {},
): T {
  const current = state;
  if (!current) return fn(noopSpan);
  const { context, trace } = current.api;
  const parent = options.parent ?? context.active();
  const span = startWith(current, name, attributes, options, parent);
  let result: T;
  try {
    result = context.with(trace.setSpan(parent, span), fn, undefined, span);
  } catch (error) {
    failSpan(span, error);
    span.end();
    throw error;
  }
  if (isPromiseLike(result)) {
    return result.then(
      (value) => {
        span.end();
        return value;
      },
      (error: unknown) => {
        failSpan(span, error);
        span.end();
        throw error;
      },
    ) as T;
  }
  span.end();
  return result;
}

/**
 * Like withSpan, but only inside a span that is still recording: store and driver calls
 * become children of the work that made them, and background calls (a heartbeat's store
 * write, a periodic status check) create no spans of their own.
 */
export function withChildSpan<T>(
  name: string,
  attributes: Attributes | (() => Attributes),
  fn: () => T,
  kind?: SpanKind,
): T {
  if (!state) return fn();
  const { context, trace } = state.api;
  if (!trace.getSpan(context.active())?.isRecording()) return fn();
  return withSpan(
    name,
    typeof attributes === "function" ? attributes() : attributes,
    fn,
    kind !== undefined ? { kind } : {},
  );
}

/** Starts a span that is not made active; end it with endSpan. A no-op span while off. */
export function startSpan(
  name: string,
  attributes: Attributes,
  options: SpanStartOptions = {},
): Span {
  if (!state) return noopSpan;
  return startWith(state, name, attributes, options, options.parent ?? state.api.context.active());
}

/** Runs `fn` with `span` active, so spans made inside become its children. */
export function runInSpan<T>(span: Span, fn: () => T): T {
  if (!state || !span.isRecording()) return fn();
  const { context, trace } = state.api;
  return context.with(trace.setSpan(context.active(), span), fn);
}

/** Runs `fn` outside any span: work it starts begins its own traces. */
export function runUntraced<T>(fn: () => T): T {
  if (!state) return fn();
  return state.api.context.with(state.api.ROOT_CONTEXT, fn);
}

/** Ends a span, marking it failed when `error` is given. */
export function endSpan(span: Span, error?: unknown): void {
  if (error !== undefined) failSpan(span, error);
  span.end();
}

/** Marks a span failed (error status, and the exception as an event). */
export function failSpan(span: Span, error: unknown): void {
  if (!state || !span.isRecording()) return;
  if (error instanceof Error) span.recordException(error);
  span.setStatus({
    code: state.api.SpanStatusCode.ERROR,
    message: error instanceof Error ? error.message : String(error),
  });
}

/** The active context (undefined while off): a parent for startSpan. */
export function activeContext(): Context | undefined {
  return state?.api.context.active();
}

/**
 * The W3C traceparent of the given span, or of the given context's span (default: the
 * active one); undefined when tracing is off or there is no span.
 */
export function injectTraceparent(from?: Context | Span): string | undefined {
  if (!state) return undefined;
  const { context, trace, isSpanContextValid, ROOT_CONTEXT } = state.api;
  const ctx =
    from === undefined
      ? context.active()
      : "spanContext" in from
        ? trace.setSpan(ROOT_CONTEXT, from)
        : from;
  const spanContext = trace.getSpanContext(ctx);
  if (!spanContext || !isSpanContextValid(spanContext)) return undefined;
  const carrier: Record<string, string> = {};
  state.propagator.inject(ctx, carrier, {
    set: (target, key, value) => {
      target[key] = value;
    },
  });
  return carrier.traceparent;
}

/**
 * A context whose parent is the span a traceparent names, on top of `base` (default: the
 * root context); `base` itself when the string is missing or malformed. Undefined while
 * tracing is off.
 */
export function extractContext(
  traceparent: string | undefined | null,
  base?: Context,
): Context | undefined {
  if (!state) return base;
  const from = base ?? state.api.ROOT_CONTEXT;
  if (!traceparent) return from;
  return state.propagator.extract(
    from,
    { traceparent },
    {
      get: (carrier, key) => carrier[key as "traceparent"],
      keys: (carrier) => Object.keys(carrier),
    },
  );
}

/** A span link to the span a traceparent names (none when it is missing or malformed). */
export function linksTo(traceparent: string | undefined): Link[] {
  if (!state || !traceparent) return [];
  const ctx = extractContext(traceparent);
  const spanContext = ctx ? state.api.trace.getSpanContext(ctx) : undefined;
  return spanContext && state.api.isSpanContextValid(spanContext) ? [{ context: spanContext }] : [];
}

/** A link to the active span (none while off or outside a span). */
export function activeLinks(): Link[] {
  if (!state) return [];
  const spanContext = state.api.trace.getActiveSpan()?.spanContext();
  return spanContext && state.api.isSpanContextValid(spanContext) ? [{ context: spanContext }] : [];
}

/**
 * traceId and spanId of the active span, for log lines; empty while off. Always a new
 * object: pino's mixin merges the line's fields into it.
 */
export function activeTraceIds(): { traceId?: string; spanId?: string } {
  if (!state) return {};
  const spanContext = state.api.trace.getActiveSpan()?.spanContext();
  if (!spanContext || !state.api.isSpanContextValid(spanContext)) return {};
  return { traceId: spanContext.traceId, spanId: spanContext.spanId };
}

function isPromiseLike(value: unknown): value is Promise<unknown> {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as { then?: unknown }).then === "function"
  );
}

/** The SDK's own warnings (an unreachable collector) at most once a minute each kind. */
function rateLimitedDiag(logger: Logger) {
  const lastMs = new Map<string, number>();
  const report =
    (level: "warn" | "error") =>
    (message: string, ...args: unknown[]) => {
      const now = Date.now();
      if (now - (lastMs.get(level) ?? 0) < 60_000) return;
      lastMs.set(level, now);
      logger[level]({ detail: args.map(String).join(" ") }, `tracing: ${message}`);
    };
  const ignore = () => undefined;
  return {
    error: report("error"),
    warn: report("warn"),
    info: ignore,
    debug: ignore,
    verbose: ignore,
  };
}

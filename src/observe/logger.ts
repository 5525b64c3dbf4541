import { type LevelWithSilent, type Logger, pino } from "pino";
import { redactToken } from "../api/token.js";
import { activeTraceIds } from "./tracing.js";

export type { Logger };

/**
 * JSON-lines logs on stderr (stdout stays free for command output). Known secret
 * fields are redacted by path, and any string that looks like a bootstrap token, whole
 * or mangled, is masked by the hooks below (api/token.ts redactToken) as a second line
 * of defence. While tracing is on, each
 * line written inside a span carries its traceId and spanId; lines about one API request
 * carry its reqId (see src/control/api/requestContext.ts).
 */
const redactPaths = [
  "token",
  "*.token",
  "keyPem",
  "*.keyPem",
  "key",
  "*.key",
  "secret",
  "*.secret",
  "password",
  "*.password",
  "authorization",
  "*.authorization",
  "req.headers.authorization",
];

export const logLevels = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;

export function isLogLevel(value: string): value is LevelWithSilent {
  return (logLevels as readonly string[]).includes(value);
}

/** Log lines dropped because their destination was gone (see guardDestination). */
let droppedLines = 0;

/** How many log lines this process dropped because their destination was gone. */
export function droppedLogLines(): number {
  return droppedLines;
}

interface GuardedDestination {
  write(chunk: string): boolean;
}

const guards = new WeakMap<NodeJS.WritableStream, GuardedDestination>();

/**
 * A log destination that can break (stderr whose reader died: EPIPE) drops lines from
 * then on and counts them, instead of failing each write. Without it the failed write's
 * error reached the agent's uncaughtException handler, which logged it, which failed
 * again: a loop that kept the event loop busy (no timer, no signal handled) at ~6,500
 * lines/s (issue 12). A broken pipe never mends, so there is no retry.
 */
export function guardDestination(stream: NodeJS.WritableStream): GuardedDestination {
  const known = guards.get(stream);
  if (known) return known;
  let broken = false;
  const markBroken = () => {
    broken = true;
  };
  stream.on("error", markBroken);
  const guard: GuardedDestination = {
    write(chunk) {
      if (broken || (stream as NodeJS.WritableStream & { destroyed?: boolean }).destroyed) {
        droppedLines += 1;
        return true;
      }
      try {
        return stream.write(chunk, (error) => {
          if (!error) return;
          markBroken();
          droppedLines += 1;
        });
      } catch {
        markBroken();
        droppedLines += 1;
        return true;
      }
    },
  };
  guards.set(stream, guard);
  return guard;
}

export function createLogger(options: {
  component: string;
  level?: LevelWithSilent;
  node?: string;
  destination?: NodeJS.WritableStream;
}): Logger {
  return pino(
    {
      level: options.level ?? "info",
      base: { component: options.component, ...(options.node ? { node: options.node } : {}) },
      redact: { paths: redactPaths, censor: "[REDACTED]" },
      timestamp: pino.stdTimeFunctions.isoTime,
      mixin: activeTraceIds,
      formatters: { level: (label) => ({ level: label }) },
      hooks: {
        logMethod(args, method) {
          const masked = args.map((arg) => (typeof arg === "string" ? redactToken(arg) : arg));
          method.apply(this, masked as Parameters<typeof method>);
        },
      },
      serializers: {
        err: (error: unknown) => {
          const serialized = pino.stdSerializers.err(error as Error);
          if (serialized && typeof serialized.message === "string") {
            serialized.message = redactToken(serialized.message);
          }
          // The stack starts with the message, so it carries the same token.
          if (serialized && typeof serialized.stack === "string") {
            serialized.stack = redactToken(serialized.stack);
          }
          return serialized;
        },
      },
    },
    guardDestination(options.destination ?? process.stderr),
  );
}

export const silentLogger: Logger = pino({ level: "silent" });

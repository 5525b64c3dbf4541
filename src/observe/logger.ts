import { type LevelWithSilent, type Logger, pino } from "pino";
import { activeTraceIds } from "./tracing.js";

export type { Logger };

/**
 * JSON-lines logs on stderr (stdout stays free for command output). Known secret
 * fields are redacted by path, and any string that looks like a bootstrap token is
 * masked by the serializer below as a second line of defence. While tracing is on, each
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

const tokenPattern = /(CL1::[0-9a-f]{64}::[a-z0-9]{10}\.)[A-Za-z0-9_-]+/g;

/** Masks the secret part of any bootstrap token in a string. */
export function maskTokens(text: string): string {
  return text.replace(tokenPattern, "$1[REDACTED]");
}

export const logLevels = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;

export function isLogLevel(value: string): value is LevelWithSilent {
  return (logLevels as readonly string[]).includes(value);
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
          const masked = args.map((arg) => (typeof arg === "string" ? maskTokens(arg) : arg));
          method.apply(this, masked as Parameters<typeof method>);
        },
      },
      serializers: {
        err: (error: unknown) => {
          const serialized = pino.stdSerializers.err(error as Error);
          if (serialized && typeof serialized.message === "string") {
            serialized.message = maskTokens(serialized.message);
          }
          return serialized;
        },
      },
    },
    (options.destination ?? process.stderr) as pino.DestinationStream,
  );
}

export const silentLogger: Logger = pino({ level: "silent" });

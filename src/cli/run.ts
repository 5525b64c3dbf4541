import { CloudlessError } from "../api/errors.js";
import { exitAfterOutput } from "./exit.js";

const exitCodes: Record<CloudlessError["code"], number> = {
  InvalidArgument: 2,
  NotFound: 3,
  AlreadyExists: 4,
  Conflict: 4,
  // As Conflict: clients before this code read gRPC FailedPrecondition as Conflict.
  FailedPrecondition: 4,
  Unauthenticated: 5,
  PermissionDenied: 5,
  Unavailable: 6,
  // As timeout(1): the command (e.g. an exec) ran out of time.
  DeadlineExceeded: 124,
  Internal: 1,
};

/**
 * Runs a command action and turns any failure into one line on stderr and a
 * non-zero exit code. A stack trace is shown only for internal errors, and only
 * with CLOUDLESS_DEBUG=1.
 */
export function action<A extends unknown[]>(
  fn: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (error) {
      await reportAndExit(error);
    }
  };
}

/** One line on stderr, then the error's exit code once all output has been written. */
export async function reportAndExit(error: unknown): Promise<never> {
  const normalized =
    error instanceof CloudlessError
      ? error
      : CloudlessError.internal(error instanceof Error ? error.message : String(error), error);
  process.stderr.write(`error: ${normalized.message}\n`);
  if (process.env.CLOUDLESS_DEBUG === "1" && normalized.cause instanceof Error) {
    process.stderr.write(`${normalized.cause.stack ?? ""}\n`);
  }
  return exitAfterOutput(exitCodes[normalized.code]);
}

export function fail(message: string): never {
  throw CloudlessError.invalid(message);
}

/**
 * The one error type at the API boundary, with a closed set of codes. Inside the
 * code base expected failures are returned as values; a CloudlessError is what
 * crosses the wire (mapped to Connect/gRPC codes in exactly one place, below:
 * toConnectError on the server, fromConnectError on every client) and what the CLI
 * prints as one line.
 */
import { Code, ConnectError } from "@connectrpc/connect";

export const errorCodes = [
  "NotFound",
  "AlreadyExists",
  "Conflict",
  "InvalidArgument",
  /**
   * The cluster is not in a state the call needs, and retrying alone will not change it
   * (a corrupt store, a lease that expired): an operator or the caller must act first.
   */
  "FailedPrecondition",
  "Unauthenticated",
  "PermissionDenied",
  "Unavailable",
  /** The operation's own deadline passed (an exec that outlived its timeout). */
  "DeadlineExceeded",
  "Internal",
] as const;

export type ErrorCode = (typeof errorCodes)[number];

/** The response header that names the leader when a follower cannot serve a call. */
export const leaderUrlHeader = "cloudless-leader-url";

/**
 * The response metadata that names our ErrorCode next to the Connect code: Connect codes
 * do not map back one to one, and a DeadlineExceeded without it is the client's own.
 */
export const errorCodeHeader = "x-cloudless-code";

export class CloudlessError extends Error {
  /** Set when the call needs the leader and this coordinator is not it. */
  readonly leaderUrl: string | undefined;

  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown; leaderUrl?: string },
  ) {
    super(message, options);
    this.name = "CloudlessError";
    this.leaderUrl = options?.leaderUrl;
  }

  /** A follower's answer to a call only the leader serves (heartbeats, logs, exec). */
  static notLeader(leaderUrl: string | undefined): CloudlessError {
    return leaderUrl
      ? new CloudlessError("Unavailable", `not the leader; the leader is ${leaderUrl}`, {
          leaderUrl,
        })
      : new CloudlessError("Unavailable", "no leader elected yet; retry shortly");
  }

  static notFound(message: string): CloudlessError {
    return new CloudlessError("NotFound", message);
  }
  static alreadyExists(message: string): CloudlessError {
    return new CloudlessError("AlreadyExists", message);
  }
  static conflict(message: string): CloudlessError {
    return new CloudlessError("Conflict", message);
  }
  static invalid(message: string): CloudlessError {
    return new CloudlessError("InvalidArgument", message);
  }
  static failedPrecondition(message: string): CloudlessError {
    return new CloudlessError("FailedPrecondition", message);
  }
  static unauthenticated(message: string): CloudlessError {
    return new CloudlessError("Unauthenticated", message);
  }
  static permissionDenied(message: string): CloudlessError {
    return new CloudlessError("PermissionDenied", message);
  }
  static unavailable(message: string): CloudlessError {
    return new CloudlessError("Unavailable", message);
  }
  static deadlineExceeded(message: string): CloudlessError {
    return new CloudlessError("DeadlineExceeded", message);
  }
  static internal(message: string, cause?: unknown): CloudlessError {
    return new CloudlessError("Internal", message, { cause });
  }

  /**
   * Normalizes anything thrown into a CloudlessError: an error that knows its own code
   * (ReportsCloudlessError, e.g. the store's) reports it; unknown errors become Internal.
   */
  static from(error: unknown): CloudlessError {
    if (error instanceof CloudlessError) return error;
    if (reportsCloudlessError(error)) {
      const reported = error.toCloudlessError();
      if (reported instanceof CloudlessError) return reported;
    }
    return CloudlessError.internal(
      "internal error; see the coordinator log for details and report it if it persists",
      error,
    );
  }
}

/**
 * An error of a layer below the API that knows which of our codes it is (the store:
 * unreachable, quorum lost, a compare-and-swap that kept losing). The edge asks it
 * through CloudlessError.from instead of importing that layer (ADR 0038, ADR 0043); the
 * answer's message is one line for the caller, its cause the error itself (for the log).
 */
export interface ReportsCloudlessError {
  toCloudlessError(): CloudlessError;
}

function reportsCloudlessError(error: unknown): error is ReportsCloudlessError {
  return (
    error instanceof Error &&
    typeof (error as Partial<ReportsCloudlessError>).toCloudlessError === "function"
  );
}

// ---------------------------------------------------------------------------------------
// On the wire: Connect/gRPC codes and the x-cloudless-code metadata

/** The single place where our closed error codes meet Connect/gRPC codes. */
const toConnectCode: Record<ErrorCode, Code> = {
  NotFound: Code.NotFound,
  AlreadyExists: Code.AlreadyExists,
  Conflict: Code.Aborted,
  InvalidArgument: Code.InvalidArgument,
  FailedPrecondition: Code.FailedPrecondition,
  Unauthenticated: Code.Unauthenticated,
  PermissionDenied: Code.PermissionDenied,
  Unavailable: Code.Unavailable,
  DeadlineExceeded: Code.DeadlineExceeded,
  Internal: Code.Internal,
};

const fromConnectCode = new Map<Code, ErrorCode>([
  [Code.NotFound, "NotFound"],
  [Code.AlreadyExists, "AlreadyExists"],
  [Code.Aborted, "Conflict"],
  [Code.FailedPrecondition, "FailedPrecondition"],
  [Code.InvalidArgument, "InvalidArgument"],
  [Code.OutOfRange, "InvalidArgument"],
  [Code.ResourceExhausted, "InvalidArgument"],
  [Code.Unimplemented, "InvalidArgument"],
  [Code.Unauthenticated, "Unauthenticated"],
  [Code.PermissionDenied, "PermissionDenied"],
  [Code.Unavailable, "Unavailable"],
  // Without errorCodeHeader it is the client's own deadline: the coordinator did not
  // answer in time, which callers treat as unreachable (try the next one). A deadline
  // the coordinator reports (an exec that ran out of time) carries the header.
  [Code.DeadlineExceeded, "Unavailable"],
  [Code.Canceled, "Unavailable"],
]);

/** Server side: whatever a handler threw becomes a ConnectError with one of our codes. */
export function toConnectError(error: unknown): ConnectError {
  if (error instanceof ConnectError) {
    const code = fromConnectCode.get(error.code) ?? "Internal";
    if (code === "Internal") return toConnectError(CloudlessError.from(error));
    return new ConnectError(error.rawMessage, toConnectCode[code], error.metadata);
  }
  const normalized = CloudlessError.from(error);
  return new ConnectError(normalized.message, toConnectCode[normalized.code], {
    [errorCodeHeader]: normalized.code,
    ...(normalized.leaderUrl ? { [leaderUrlHeader]: normalized.leaderUrl } : {}),
  });
}

/** Client side: a ConnectError (or anything) back into a CloudlessError. */
export function fromConnectError(error: unknown): CloudlessError {
  if (error instanceof CloudlessError) return error;
  if (error instanceof ConnectError) {
    const named = error.metadata.get(errorCodeHeader);
    const code: ErrorCode =
      named && isErrorCode(named) ? named : (fromConnectCode.get(error.code) ?? "Internal");
    const leaderUrl = error.metadata.get(leaderUrlHeader) ?? undefined;
    return new CloudlessError(code, error.rawMessage, {
      cause: error,
      ...(leaderUrl ? { leaderUrl } : {}),
    });
  }
  return CloudlessError.from(error);
}

function isErrorCode(value: string): value is ErrorCode {
  return value in toConnectCode;
}

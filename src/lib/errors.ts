/**
 * The one error type at the API boundary, with a closed set of codes. Inside the
 * code base expected failures are returned as values; a CloudlessError is what
 * crosses the wire (mapped to Connect/gRPC codes in exactly one place,
 * control/api/errorMapping.ts) and what the CLI prints as one line.
 */
export const errorCodes = [
  "NotFound",
  "AlreadyExists",
  "Conflict",
  "InvalidArgument",
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

  /** Normalizes anything thrown into a CloudlessError; unknown errors become Internal. */
  static from(error: unknown): CloudlessError {
    if (error instanceof CloudlessError) return error;
    return CloudlessError.internal(
      "internal error; see the coordinator log for details and report it if it persists",
      error,
    );
  }
}

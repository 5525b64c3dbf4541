import { Code, ConnectError } from "@connectrpc/connect";
import { CloudlessError, type ErrorCode, leaderUrlHeader } from "../../lib/errors.js";

/** The single place where our closed error codes meet Connect/gRPC codes. */
const toConnectCode: Record<ErrorCode, Code> = {
  NotFound: Code.NotFound,
  AlreadyExists: Code.AlreadyExists,
  Conflict: Code.Aborted,
  InvalidArgument: Code.InvalidArgument,
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
  [Code.FailedPrecondition, "Conflict"],
  [Code.InvalidArgument, "InvalidArgument"],
  [Code.OutOfRange, "InvalidArgument"],
  [Code.ResourceExhausted, "InvalidArgument"],
  [Code.Unimplemented, "InvalidArgument"],
  [Code.Unauthenticated, "Unauthenticated"],
  [Code.PermissionDenied, "PermissionDenied"],
  [Code.Unavailable, "Unavailable"],
  // Without x-cloudless-code it is the client's own deadline: the coordinator did not
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
    "x-cloudless-code": normalized.code,
    ...(normalized.leaderUrl ? { [leaderUrlHeader]: normalized.leaderUrl } : {}),
  });
}

/** Client side: a ConnectError (or anything) back into a CloudlessError. */
export function fromConnectError(error: unknown): CloudlessError {
  if (error instanceof CloudlessError) return error;
  if (error instanceof ConnectError) {
    const named = error.metadata.get("x-cloudless-code");
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

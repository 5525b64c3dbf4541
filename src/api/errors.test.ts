import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  CloudlessError,
  errorCodeHeader,
  fromConnectError,
  type ReportsCloudlessError,
  toConnectError,
} from "./errors.js";

/** An error of a layer below the API that knows its code, as the store's errors do. */
class LowerLayerError extends Error implements ReportsCloudlessError {
  constructor(private readonly reported: unknown) {
    super("detail for the log only: host 10.0.0.7:2379, etcdserver: no leader");
  }
  toCloudlessError(): CloudlessError {
    return this.reported as CloudlessError;
  }
}

describe("REQ-080 contract: the one wire mapping of errors", () => {
  it("asks an error that reports its own code, and answers with its line, not the detail", () => {
    const error = new LowerLayerError(
      CloudlessError.unavailable("the cluster store is unavailable; retry when it is back"),
    );
    const wire = toConnectError(error);
    expect(wire.code).toBe(Code.Unavailable);
    expect(wire.rawMessage).toBe("the cluster store is unavailable; retry when it is back");
    expect(wire.metadata.get(errorCodeHeader)).toBe("Unavailable");
    expect(wire.rawMessage).not.toContain("10.0.0.7");
    expect(CloudlessError.from(error).code).toBe("Unavailable");
  });

  it("treats a report that is not a CloudlessError as unknown: Internal, generic message", () => {
    const wire = toConnectError(new LowerLayerError({ code: "Unavailable", message: "x" }));
    expect(wire.code).toBe(Code.Internal);
    expect(wire.rawMessage).toMatch(/^internal error; see the coordinator log/);
  });

  it("keeps anything else Internal", () => {
    expect(toConnectError(new Error("boom at /srv/x")).code).toBe(Code.Internal);
    expect(toConnectError("a string").code).toBe(Code.Internal);
  });

  it("maps FailedPrecondition to gRPC 9 and back, with and without the code header", () => {
    const wire = toConnectError(CloudlessError.failedPrecondition("the store is corrupt"));
    expect(wire.code).toBe(Code.FailedPrecondition);
    expect(fromConnectError(wire).code).toBe("FailedPrecondition");
    const bare = new ConnectError("precondition failed", Code.FailedPrecondition);
    expect(fromConnectError(bare).code).toBe("FailedPrecondition");
    expect(toConnectError(bare).code).toBe(Code.FailedPrecondition);
  });

  it("maps Conflict to gRPC Aborted (10) and back", () => {
    const wire = toConnectError(CloudlessError.conflict('node "a" is being changed concurrently'));
    expect(wire.code).toBe(Code.Aborted);
    expect(fromConnectError(wire)).toMatchObject({
      code: "Conflict",
      message: 'node "a" is being changed concurrently',
    });
  });
});

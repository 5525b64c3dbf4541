import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { errorCodeHeader, fromConnectError, toConnectError } from "../../api/errors.js";
import { ManualClock } from "../../lib/clock.js";
import { openSqliteStore } from "./sqliteStore.js";
import { StoreError, type StoreErrorKind } from "./store.js";

const detail =
  "etcd at 127.0.0.1:2379,127.0.0.1:2381 could not serve range (etcdserver: no leader); " +
  "check that a majority of the etcd members are running and reachable";

describe("REQ-012 contract: store errors at the API edge (issue 13)", () => {
  const cases: [StoreErrorKind, Code, string, RegExp][] = [
    [
      "unavailable",
      Code.Unavailable,
      "Unavailable",
      /^the cluster store is unavailable \(etcd: no quorum\); retry when it is back$/,
    ],
    [
      "locked",
      Code.Unavailable,
      "Unavailable",
      /^the cluster store is unavailable \(etcd: no quorum\); retry/,
    ],
    ["closed", Code.Unavailable, "Unavailable", /^the cluster store is closed \(this coordinator/],
    ["conflict", Code.Aborted, "Conflict", /^etcd at /],
    [
      "corrupt",
      Code.FailedPrecondition,
      "FailedPrecondition",
      /^the cluster store is corrupt \(etcd: no quorum\); an operator must restore it/,
    ],
    ["leaseNotFound", Code.FailedPrecondition, "FailedPrecondition", /^etcd at /],
    ["invalid", Code.Internal, "Internal", /^internal error; see the coordinator log/],
  ];

  it.each(cases)(
    "a %s store error is answered as gRPC %i (%s), in one line",
    (kind, code, name, message) => {
      const error = new StoreError(detail, kind, {
        cause: new Error("grpc: 14 UNAVAILABLE"),
        brief: "etcd: no quorum",
      });
      const wire = toConnectError(error);
      expect(wire.code).toBe(code);
      expect(wire.metadata.get(errorCodeHeader)).toBe(name);
      expect(wire.rawMessage).toMatch(message);
      expect(wire.rawMessage).not.toContain("\n");
      expect(wire.rawMessage).not.toMatch(/\bat .*\.[jt]s:\d+/);
      // The client reads back the same code and line.
      expect(fromConnectError(wire)).toMatchObject({ code: name, message: wire.rawMessage });
    },
  );

  it("keeps the store error as the cause, for the coordinator's log", () => {
    const error = new StoreError(detail, "unavailable", { brief: "etcd: no quorum" });
    const reported = error.toCloudlessError();
    expect(reported.cause).toBe(error);
    expect(reported.message).not.toContain("127.0.0.1");
  });

  it("says only that the store is unavailable when there is no brief", () => {
    const wire = toConnectError(new StoreError(detail, "unavailable"));
    expect(wire.rawMessage).toBe("the cluster store is unavailable; retry when it is back");
  });

  describe("with a real SQLite store", () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), "cloudless-store-errors-"));
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it("a call on a closed store is answered Unavailable, not Internal", async () => {
      const store = await openSqliteStore({
        path: join(dir, "store.db"),
        clock: new ManualClock(),
      });
      await store.close();
      const failure = await store.get("/nodes/a").catch((error: unknown) => error);
      expect(failure).toBeInstanceOf(StoreError);
      const wire = toConnectError(failure);
      expect(wire.code).toBe(Code.Unavailable);
      expect(wire.rawMessage).toMatch(/^the cluster store is closed/);
    });
  });
});

import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { NetworkReportSchema } from "../../api/gen/cloudless/v1/service_pb.js";
import { ManualClock } from "../../lib/clock.js";
import { silentLogger } from "../../observe/logger.js";
import type { Store } from "../store/store.js";
import { MeshReports, meshRecordOf } from "./meshReports.js";
import { relayAddressOf } from "./servicesModule.js";

function report(fields: Parameters<typeof create<typeof NetworkReportSchema>>[1]) {
  return create(NetworkReportSchema, fields);
}

describe("REQ-040 agents' network reports", () => {
  it("are checked before they are kept: too many addresses, an unknown path kind", () => {
    const many = meshRecordOf(
      "n1",
      report({ advertiseAddresses: Array.from({ length: 17 }, (_, i) => `10.0.0.${i}`) }),
      0,
    );
    expect(many).toEqual({ ok: false, reason: "more than 16 advertise_addresses" });
    const path = meshRecordOf("n1", report({ peers: [{ node: "n2", path: "teleport" }] }), 0);
    expect(path.ok).toBe(false);
    const good = meshRecordOf(
      "n1",
      report({ meshPort: 7444, peers: [{ node: "n2", path: "relayed", via: "n3", rttMs: 2.5 }] }),
      5,
    );
    expect(good.ok && good.record).toMatchObject({
      node: "n1",
      meshPort: 7444,
      reportedAtMs: 5,
      peers: [{ node: "n2", path: "relayed", via: "n3", rttMs: 2.5 }],
    });
  });

  it("are written at once when a path changes (at most once a second), counters alone at most every 30 s", async () => {
    const clock = new ManualClock();
    const writes: string[] = [];
    // A unit test of the write schedule: the store only records puts.
    const store = {
      put: async (_key: string, value: string) => {
        writes.push(value);
        return 1;
      },
    } as unknown as Store;
    let peerChanges = 0;
    const reports = new MeshReports({
      store,
      clock,
      logger: silentLogger,
      onPeerChange: () => peerChanges++,
    });
    const accept = (path: string, bytes: bigint) => {
      const checked = meshRecordOf(
        "n1",
        report({ meshPort: 7444, peers: [{ node: "n2", path, bytesSent: bytes }] }),
        clock.nowMs(),
      );
      if (!checked.ok) throw new Error(checked.reason);
      reports.accept(checked.record);
    };
    accept("direct", 1n);
    expect(writes).toHaveLength(1);
    expect(peerChanges).toBe(1);
    // Counters only: not written until 30 s have passed.
    clock.advance(10_000);
    accept("direct", 2n);
    expect(writes).toHaveLength(1);
    clock.advance(20_000);
    accept("direct", 3n);
    expect(writes).toHaveLength(2);
    // A path change is written, but not twice within a second.
    clock.advance(200);
    accept("relayed", 4n);
    expect(writes).toHaveLength(2);
    accept("direct", 5n);
    clock.advance(800);
    expect(writes).toHaveLength(3);
    expect(JSON.parse(writes[2] ?? "{}").peers[0].path).toBe("direct");
    // Port and addresses unchanged: the snapshot's peers did not change.
    expect(peerChanges).toBe(1);
    reports.stop();
  });

  it("relays are the coordinators' API host:port", () => {
    expect(relayAddressOf("https://10.0.0.1:7443")).toBe("10.0.0.1:7443");
    expect(relayAddressOf("https://[fd00::1]:7443")).toBe("[fd00::1]:7443");
    expect(relayAddressOf("not a url")).toBe("");
  });
});

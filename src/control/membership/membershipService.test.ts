import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { createLogger } from "../../observe/logger.js";
import type { EventLog, NewEvent } from "../events/eventLog.js";
import { emptyCapacity, emptyInfo, nodeKey } from "../nodes/nodeRecord.js";
import { NodeRegistry } from "../nodes/nodeRegistry.js";
import { testNodeRecord } from "../nodes/testing/nodeRecords.js";
import { openSqliteStore, type SqliteStore } from "../store/sqliteStore.js";
import { type HelloReport, MembershipService } from "./membershipService.js";
import { defaultMembershipConfig } from "./membershipTracker.js";

let dir: string;
let store: SqliteStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cloudless-membership-"));
  store = await openSqliteStore({ path: join(dir, "store.db"), clock: new ManualClock() });
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

const report: HelloReport = {
  capacity: emptyCapacity(),
  info: emptyInfo(),
  region: "",
  zone: "",
  labels: {},
  taints: [],
  address: "",
  restartGraceMs: 0,
};

/** An event log whose writes finish only when the test lets them. */
class HeldEventLog {
  readonly recorded: NewEvent[] = [];
  private readonly waiting: (() => void)[] = [];

  record(event: NewEvent): Promise<void> {
    return new Promise((resolve) =>
      this.waiting.push(() => {
        this.recorded.push(event);
        resolve();
      }),
    );
  }

  get pending(): number {
    return this.waiting.length;
  }

  releaseOne(): void {
    this.waiting.shift()?.();
  }

  async flush(): Promise<void> {
    while (this.waiting.length > 0) this.releaseOne();
  }
}

describe("MembershipService", () => {
  it("REQ-031 F1 a node's status is written while earlier transitions' events are still being written", async () => {
    const registry = new NodeRegistry(store);
    for (const name of ["a", "b"])
      await store.put(nodeKey(name), JSON.stringify(testNodeRecord(name)));
    const events = new HeldEventLog();
    const clock = new ManualClock();
    const service = new MembershipService(
      registry,
      events as unknown as EventLog,
      clock,
      createLogger({ component: "test", level: "silent" }),
    );
    await service.start();
    const statusOf = async (name: string) => (await registry.get(name))?.status;

    const helloA = service.hello("a", report);
    await vi.waitFor(async () => {
      expect(await statusOf("a")).toBe("Ready");
      expect(events.pending).toBe(1);
    });
    clock.advance(250);
    // a's NodeReady event is held: b's record must not wait for it (a lost node's
    // replacements start from its record, not from its event).
    const helloB = service.hello("b", report);
    await vi.waitFor(async () => expect(await statusOf("b")).toBe("Ready"));

    await vi.waitFor(() => {
      events.releaseOne();
      expect(events.recorded).toHaveLength(2);
    });
    await Promise.all([helloA, helloB]);
    // In decision order, each stamped with the time of its transition.
    expect(events.recorded.map((e) => [e.subject, e.type, e.timeMs])).toEqual([
      ["node/a", "NodeReady", 1_700_000_000_000],
      ["node/b", "NodeReady", 1_700_000_000_250],
    ]);
    await service.stop();
  });

  it("NFR-A1 a reconnecting node's grace and Lost deadline are recorded, shown in its event, and kept by the next leader", async () => {
    const registry = new NodeRegistry(store);
    await store.put(nodeKey("a"), JSON.stringify(testNodeRecord("a")));
    const recorded: NewEvent[] = [];
    const events = {
      record: async (event: NewEvent) => {
        recorded.push(event);
      },
      flush: async () => undefined,
    };
    const clock = new ManualClock();
    const logger = createLogger({ component: "test", level: "silent" });
    const config = { ...defaultMembershipConfig, maxRestartGraceMs: 60_000 };
    const first = new MembershipService(
      registry,
      events as unknown as EventLog,
      clock,
      logger,
      config,
    );
    await first.start();
    // Asks for more than the cap: granted the cap.
    await first.hello("a", { ...report, restartGraceMs: 3_600_000 });
    expect((await registry.get("a"))?.restartGraceMs).toBe(60_000);
    clock.advance(1_000);
    const closedAtMs = clock.nowMs();
    first.streamClosed("a");
    await first.flush();
    const record = await registry.get("a");
    expect(record).toMatchObject({
      status: "NotReady",
      statusReason: "Reconnecting",
      lostDeadlineMs: closedAtMs + 60_000,
    });
    expect(recorded.at(-1)).toMatchObject({
      type: "NodeNotReady",
      reason: "Reconnecting",
      attributes: { lostDeadline: new Date(closedAtMs + 60_000).toISOString() },
    });
    // The leader changes; the new one keeps the deadline rather than its 10 s startup grace.
    await first.stop();
    clock.advance(5_000);
    const second = new MembershipService(
      registry,
      events as unknown as EventLog,
      clock,
      logger,
      config,
    );
    await second.start();
    clock.advance(50_000);
    await second.flush();
    expect((await registry.get("a"))?.status).toBe("NotReady");
    clock.advance(5_000);
    await second.flush();
    expect(await registry.get("a")).toMatchObject({ status: "Lost", statusReason: "NoReconnect" });
    expect((await registry.get("a"))?.lostDeadlineMs).toBeUndefined();
    await second.stop();
  });
});

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { toConnectError } from "../../api/errors.js";
import { ManualClock } from "../../lib/clock.js";
import { seededRng } from "../../lib/rng.js";
import { openSqliteStore, type SqliteStore } from "../store/sqliteStore.js";
import type { TxnRequest } from "../store/store.js";
import { type NodeRecord, nodeKey } from "./nodeRecord.js";
import { NodeRegistry } from "./nodeRegistry.js";
import { testNodeRecord } from "./testing/nodeRecords.js";

let dir: string;
let store: SqliteStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cloudless-nodes-"));
  store = await openSqliteStore({ path: join(dir, "store.db"), clock: new ManualClock() });
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

describe("NodeRegistry.updateMany", () => {
  it("updates many nodes in transactions of at most 100 operations, and reports missing ones", async () => {
    for (let i = 0; i < 250; i++)
      await store.put(nodeKey(`n${i}`), JSON.stringify(testNodeRecord(`n${i}`)));
    const txns: TxnRequest[] = [];
    const counting = new Proxy(store, {
      get(target, property, receiver) {
        if (property === "txn") {
          return (request: TxnRequest) => {
            txns.push(request);
            return target.txn(request);
          };
        }
        return Reflect.get(target, property, receiver);
      },
    });
    const registry = new NodeRegistry(counting);
    const changes = new Map<string, (record: NodeRecord) => NodeRecord>();
    for (let i = 0; i < 250; i++) {
      changes.set(`n${i}`, (record) => ({ ...record, status: "Ready" }));
    }
    changes.set("gone", (record) => record);
    const results = await registry.updateMany(changes);
    expect(results.get("gone")).toBeInstanceOf(Error);
    expect((await registry.list()).every((n) => n.status === "Ready")).toBe(true);
    expect([...results.values()].filter((r) => !(r instanceof Error))).toHaveLength(250);
    // 3 chunks: a read and a write each.
    expect(txns).toHaveLength(6);
    for (const txn of txns) {
      expect(txn.success.length).toBeLessThanOrEqual(100);
      expect(txn.compare.length).toBeLessThanOrEqual(100);
    }
  });

  it("retries one by one the nodes whose batched write lost a race", async () => {
    await store.put(nodeKey("a"), JSON.stringify(testNodeRecord("a")));
    await store.put(nodeKey("b"), JSON.stringify(testNodeRecord("b")));
    const registry = new NodeRegistry(store);
    let raced = false;
    const results = await registry.updateMany(
      new Map([
        [
          "a",
          (record: NodeRecord) => {
            if (!raced) {
              raced = true;
              // Someone else writes "a" between the batch's read and its write.
              void store.put(
                nodeKey("a"),
                JSON.stringify({ ...testNodeRecord("a"), cordoned: true }),
              );
            }
            return { ...record, status: "Ready" as const };
          },
        ],
        ["b", (record: NodeRecord) => ({ ...record, status: "Ready" as const })],
      ]),
    );
    const a = results.get("a") as NodeRecord;
    expect(a.status).toBe("Ready");
    expect(a.cordoned).toBe(true);
    expect((await registry.get("b"))?.status).toBe("Ready");
  });
});

describe("NodeRegistry.update through compareAndSwap (issue 13)", () => {
  it("re-applies the change on what a concurrent writer wrote, and after 8 lost races answers Conflict (Aborted) as before", async () => {
    await store.put(nodeKey("a"), JSON.stringify(testNodeRecord("a")));
    let racesLeft = 2;
    const commits: TxnRequest[] = [];
    const racing = new Proxy(store, {
      get(target, property, receiver) {
        if (property === "txn") {
          return async (request: TxnRequest) => {
            commits.push(request);
            if (racesLeft > 0) {
              racesLeft--;
              // Someone else cordons "a" between our read and our commit.
              const other = { ...testNodeRecord("a"), cordoned: true, labels: { race: "x" } };
              await target.put(nodeKey("a"), JSON.stringify(other));
            }
            return target.txn(request);
          };
        }
        return Reflect.get(target, property, receiver);
      },
    });
    const clock = new ManualClock();
    const delays: number[] = [];
    const immediate = {
      nowMs: () => clock.nowMs(),
      setTimeout(fn: () => void, delayMs: number) {
        delays.push(delayMs);
        queueMicrotask(fn);
        return () => undefined;
      },
    };
    const registry = new NodeRegistry(racing, { clock: immediate, rng: seededRng(5) });
    const written = await registry.update("a", (record) => ({ ...record, status: "Ready" }));
    expect(written).toMatchObject({ status: "Ready", cordoned: true });
    expect(commits).toHaveLength(3);
    expect(delays).toHaveLength(2);

    racesLeft = Number.POSITIVE_INFINITY;
    commits.length = 0;
    const failure = await registry
      .update("a", (record) => ({ ...record, labels: { mine: "y" } }))
      .catch((error: unknown) => error);
    expect(commits).toHaveLength(8);
    const wire = toConnectError(failure);
    expect(wire.code).toBe(Code.Aborted);
    expect(wire.rawMessage).toBe('node "a" is being changed concurrently; try again');
    await expect(registry.update("gone", (record) => record)).rejects.toMatchObject({
      code: "NotFound",
    });
  });
});

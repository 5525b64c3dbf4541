import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
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

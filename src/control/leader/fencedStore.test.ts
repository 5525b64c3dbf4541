import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CloudlessError } from "../../api/errors.js";
import { ManualClock } from "../../lib/clock.js";
import { openSqliteStore } from "../store/sqliteStore.js";
import type { Compare, Store } from "../store/store.js";
import { FencedStore } from "./fencedStore.js";
import { leaderKey } from "./leaderElection.js";

describe("fenced store", () => {
  let dir: string;
  let store: Store;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-fence-"));
    store = await openSqliteStore({ path: path.join(dir, "store.db"), clock: new ManualClock() });
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function becomeLeader(id: string): Promise<Compare> {
    await store.put(leaderKey, JSON.stringify({ id }));
    const kv = await store.get(leaderKey);
    return {
      key: leaderKey,
      target: "createRevision",
      op: "==",
      createRevision: kv?.createRevision ?? 0,
    };
  }

  it("NFR-R1 refuses every write before an election and after the fence is cleared", async () => {
    const fenced = new FencedStore(store);
    await expect(fenced.put("/a", "1")).rejects.toThrow(/no longer the leader/);
    fenced.setFence(await becomeLeader("c1"));
    await fenced.put("/a", "1");
    expect((await store.get("/a"))?.value).toBe("1");
    fenced.setFence(undefined);
    await expect(fenced.delete("/a")).rejects.toBeInstanceOf(CloudlessError);
    expect((await store.get("/a"))?.value).toBe("1");
  });

  it("NFR-R1 a deposed leader's writes are refused once another coordinator holds /leader", async () => {
    const fenced = new FencedStore(store);
    fenced.setFence(await becomeLeader("c1"));
    // c1 stalls past its lease; c2 is elected (the key is recreated, a new createRevision).
    await store.delete(leaderKey);
    await becomeLeader("c2");
    await expect(fenced.put("/plan", "from-c1")).rejects.toThrow(/no longer the leader/);
    expect(await store.get("/plan")).toBeUndefined();
    expect(fenced.fenced).toBe(false);
  });

  it("NFR-R1 a failed compare of the caller's own is an ordinary failed txn while the fence holds", async () => {
    const fenced = new FencedStore(store);
    fenced.setFence(await becomeLeader("c1"));
    await store.put("/r", "v1");
    const result = await fenced.txn({
      compare: [{ key: "/r", target: "value", op: "==", value: "v0" }],
      success: [{ type: "put", key: "/r", value: "v2" }],
    });
    expect(result.succeeded).toBe(false);
    expect((await store.get("/r"))?.value).toBe("v1");
    expect(fenced.fenced).toBe(true);
  });
});

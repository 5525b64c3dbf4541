import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { createCoordinatorMetrics } from "../../observe/metrics.js";
import { InstrumentedStore } from "./instrumentedStore.js";
import { openSqliteStore } from "./sqliteStore.js";
import { runStoreContract } from "./storeContract.js";

// The decorator must not change behaviour: the whole contract runs through it.
runStoreContract("sqlite behind InstrumentedStore", async () => {
  const dir = await mkdtemp(join(tmpdir(), "cloudless-istore-"));
  const path = join(dir, "store.db");
  const clock = new ManualClock();
  const metrics = createCoordinatorMetrics({ defaultMetrics: false });
  let current = new InstrumentedStore(await openSqliteStore({ path, clock }), metrics);
  return {
    store: current,
    clock,
    reopen: async () => {
      current = new InstrumentedStore(await openSqliteStore({ path, clock }), metrics);
      return current;
    },
    cleanup: async () => {
      try {
        await current.close();
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
});

describe("InstrumentedStore", () => {
  const dirs: string[] = [];
  afterEach(async () => {
    await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  });

  async function open() {
    const dir = await mkdtemp(join(tmpdir(), "cloudless-istore-"));
    dirs.push(dir);
    const metrics = createCoordinatorMetrics({ defaultMetrics: false });
    const store = new InstrumentedStore(
      await openSqliteStore({ path: join(dir, "store.db"), clock: new ManualClock() }),
      metrics,
    );
    return { store, metrics };
  }

  async function counts(metrics: ReturnType<typeof createCoordinatorMetrics>) {
    const byOperation: Record<string, number> = {};
    for (const value of (await metrics.storeOperationDuration.get()).values) {
      if (value.metricName?.endsWith("_count")) {
        byOperation[String(value.labels.operation)] = value.value;
      }
    }
    const errors: Record<string, number> = {};
    for (const value of (await metrics.storeOperationErrors.get()).values) {
      errors[String(value.labels.operation)] = value.value;
    }
    return { byOperation, errors };
  }

  it("REQ-070 times each operation under its own label and counts failures", async () => {
    const { store, metrics } = await open();
    expect(store.backend).toBe("sqlite");
    await store.put("/a", "1");
    await store.put("/b", "2");
    await store.get("/a");
    await store.range("/");
    await store.txn({ compare: [], success: [{ type: "get", key: "/a" }] });
    await store.delete("/b");
    await store.close();
    await expect(store.get("/a")).rejects.toThrow();
    const { byOperation, errors } = await counts(metrics);
    expect(byOperation).toEqual({ put: 2, get: 2, range: 1, txn: 1, delete: 1 });
    expect(errors).toEqual({ get: 1 });
  });
});

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { parseWorkloadValue } from "../../api/workload/parse.js";
import { ManualClock } from "../../lib/clock.js";
import { seededRng } from "../../lib/rng.js";
import { createLogger } from "../../observe/logger.js";
import { EventLog, eventKeyPrefix } from "../events/eventLog.js";
import { openSqliteStore, type SqliteStore } from "../store/sqliteStore.js";
import { AssignmentHub } from "./assignmentHub.js";
import { replicaPrefix, type WorkloadRecord, workloadKey } from "./records.js";
import { WorkloadController } from "./workloadController.js";

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A fresh store on a manual clock that starts at the same instant every time. */
async function freshStore(): Promise<{ store: SqliteStore; clock: ManualClock }> {
  const dir = await mkdtemp(join(tmpdir(), "cloudless-rng-"));
  const clock = new ManualClock();
  const store = await openSqliteStore({ path: join(dir, "store.db"), clock });
  cleanups.push(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { store, clock };
}

/** The replica ids one controller pass creates for a 5-replica workload, with `seed`. */
async function replicaIdsWithSeed(seed: number): Promise<string[]> {
  const { store, clock } = await freshStore();
  const parsed = parseWorkloadValue({
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: "web" },
    spec: { command: ["sleep", "60"], resources: { cpuMillicores: 10, memoryMiB: 8 }, replicas: 5 },
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  const record: WorkloadRecord = {
    uid: "uid-web",
    namespace: "default",
    name: "web",
    revision: 1,
    templateHash: "t",
    spec: parsed.doc,
    replicas: 5,
    minAvailable: parsed.doc.spec.minAvailable,
    createdAtMs: clock.nowMs(),
    updatedAtMs: clock.nowMs(),
  };
  await store.put(workloadKey("default", "web"), JSON.stringify(record));
  const controller = new WorkloadController({
    store,
    clock,
    rng: seededRng(seed),
    logger: createLogger({ component: "test", level: "silent" }),
    events: new EventLog(store, clock),
    assignments: new AssignmentHub(),
    resyncIntervalMs: 60_000,
  });
  cleanups.push(() => controller.stop());
  await controller.start();
  clock.advance(1_000);
  await controller.settled();
  return (await store.range(replicaPrefix, { keysOnly: true })).kvs.map((kv) => kv.key).sort();
}

describe("randomness comes from the injected Rng (ADR 0041)", () => {
  it("REQ-020 replica ids are drawn from the controller's rng: the same seed gives the same ids", async () => {
    const first = await replicaIdsWithSeed(11);
    expect(first).toHaveLength(5);
    expect(await replicaIdsWithSeed(11)).toEqual(first);
    expect(await replicaIdsWithSeed(12)).not.toEqual(first);
  });

  it("REQ-071 event keys take their suffix from the event log's rng", async () => {
    const keysWithSeed = async (seed: number) => {
      const { store, clock } = await freshStore();
      const log = new EventLog(store, clock, undefined, seededRng(seed));
      for (let i = 0; i < 3; i++) {
        await log.record({
          type: "Probe",
          category: "operations",
          subject: "test/probe",
          reason: "Probe",
          message: `event ${i}`,
        });
      }
      return (await store.range(eventKeyPrefix, { keysOnly: true })).kvs.map((kv) => kv.key);
    };
    const first = await keysWithSeed(5);
    expect(first).toHaveLength(3);
    expect(await keysWithSeed(5)).toEqual(first);
    expect(await keysWithSeed(6)).not.toEqual(first);
  });
});

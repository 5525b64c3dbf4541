import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseWorkloadValue } from "../../api/workload/parse.js";
import { ManualClock } from "../../lib/clock.js";
import { seededRng } from "../../lib/rng.js";
import { createLogger } from "../../observe/logger.js";
import { EventLog } from "../events/eventLog.js";
import { nodeKey } from "../nodes/nodeRecord.js";
import { testNodeRecord } from "../nodes/testing/nodeRecords.js";
import { openSqliteStore, type SqliteStore } from "../store/sqliteStore.js";
import { AssignmentHub } from "./assignmentHub.js";
import { replicaPrefix, type WorkloadRecord, workloadKey } from "./records.js";
import { WorkloadController } from "./workloadController.js";

let dir: string;
let store: SqliteStore;
let clock: ManualClock;
let controller: WorkloadController | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cloudless-controller-"));
  clock = new ManualClock();
  store = await openSqliteStore({ path: join(dir, "store.db"), clock });
});

afterEach(async () => {
  await controller?.stop();
  controller = undefined;
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

async function putWorkload(name: string, replicas: number, cpuMillicores = 10): Promise<void> {
  const parsed = parseWorkloadValue({
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name },
    spec: { command: ["sleep", "60"], resources: { cpuMillicores, memoryMiB: 8 }, replicas },
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  const record: WorkloadRecord = {
    uid: `uid-${name}`,
    namespace: "default",
    name,
    revision: 1,
    templateHash: "t",
    spec: parsed.doc,
    replicas,
    minAvailable: parsed.doc.spec.minAvailable,
    createdAtMs: clock.nowMs(),
    updatedAtMs: clock.nowMs(),
  };
  await store.put(workloadKey("default", name), JSON.stringify(record));
}

async function replicaCount(): Promise<number> {
  return (await store.range(replicaPrefix, { keysOnly: true })).kvs.length;
}

/** Replicas with a node, by workload. */
async function placedByWorkload(): Promise<Record<string, number>> {
  const placed: Record<string, number> = {};
  for (const kv of (await store.range(replicaPrefix)).kvs) {
    const replica = JSON.parse(kv.value) as { workload: string; node: string };
    if (replica.node !== "") placed[replica.workload] = (placed[replica.workload] ?? 0) + 1;
  }
  return placed;
}

function newController(replicasPerPass: number): WorkloadController {
  return new WorkloadController({
    store,
    clock,
    rng: seededRng(1),
    logger: createLogger({ component: "test", level: "silent" }),
    events: new EventLog(store, clock),
    assignments: new AssignmentHub(),
    replicasPerPass,
    resyncIntervalMs: 60_000,
  });
}

/** Lets the pending pass timer fire and waits until that pass has finished. */
async function runOnePass(): Promise<void> {
  clock.advance(1_000);
  await controller?.settled();
}

describe("workload controller", () => {
  it("REQ-020 hardening: a pass writes at most replicasPerPass replicas; later passes write the rest", async () => {
    await putWorkload("big", 25);
    await putWorkload("small", 3);
    controller = newController(10);
    await controller.start();
    const counts: number[] = [];
    for (let pass = 0; pass < 4; pass++) {
      await runOnePass();
      counts.push(await replicaCount());
    }
    // 28 replicas asked for, 10 per pass: 10, 20, 28, and nothing more after that.
    expect(counts).toEqual([10, 20, 28, 28]);
  });

  it("REQ-022 hardening: a pass schedules at most replicasPerPass, in a window that moves on, so replicas that fit nowhere do not starve the rest", async () => {
    const node = testNodeRecord("n1");
    node.status = "Ready";
    node.info.drivers = ["process"];
    node.capacity = { ...node.capacity, cpuMillicores: 4000, memoryMiB: 4096, storageGiB: 10 };
    await store.put(nodeKey("n1"), JSON.stringify(node));
    // "a-huge" sorts first and asks for more CPU than any node has: its 12 replicas
    // would fill every window of 10 if the window always started at the front.
    await putWorkload("a-huge", 12, 100_000);
    await putWorkload("b-small", 6);
    controller = newController(10);
    await controller.start();
    for (let pass = 0; pass < 8; pass++) await runOnePass();
    expect(await replicaCount()).toBe(18);
    expect(await placedByWorkload()).toEqual({ "b-small": 6 });
  });
});

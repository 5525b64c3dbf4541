/**
 * The controller's retry path, in process (ManualClock, seeded rng, a real SQLite store):
 * the scheduler harness's rejecting planner in front of the coordinator's plan applier,
 * and the applier's own re-check refusing a placement on a node cordoned meanwhile.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseWorkloadValue } from "../../api/workload/parse.js";
import { ManualClock } from "../../lib/clock.js";
import { seededRng } from "../../lib/rng.js";
import { createLogger } from "../../observe/logger.js";
import { type ControllerMetrics, createCoordinatorMetrics } from "../../observe/metrics.js";
import { EventLog } from "../events/eventLog.js";
import { type NodeRecord, nodeKey } from "../nodes/nodeRecord.js";
import { testNodeRecord } from "../nodes/testing/nodeRecords.js";
import { RejectingPlanner } from "../scheduler/testing/harness.js";
import type { Plan } from "../scheduler/types.js";
import { openSqliteStore, type SqliteStore } from "../store/sqliteStore.js";
import { AssignmentHub } from "./assignmentHub.js";
import type { PlanApplier, PlanContext } from "./planApplier.js";
import { maxPlanAttempts } from "./planRetry.js";
import { type ReplicaRecord, replicaPrefix, type WorkloadRecord, workloadKey } from "./records.js";
import { WorkloadController } from "./workloadController.js";

let dir: string;
let store: SqliteStore;
let clock: ManualClock;
let events: EventLog;
let metrics: ControllerMetrics;
let controller: WorkloadController | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cloudless-plan-retry-"));
  clock = new ManualClock();
  store = await openSqliteStore({ path: join(dir, "store.db"), clock });
  events = new EventLog(store, clock, undefined, seededRng(7));
  metrics = createCoordinatorMetrics({ defaultMetrics: false });
});

afterEach(async () => {
  await controller?.stop();
  controller = undefined;
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

function readyNode(name: string): NodeRecord {
  const node = testNodeRecord(name);
  node.status = "Ready";
  node.info.drivers = ["process"];
  node.capacity = { ...node.capacity, cpuMillicores: 4000, memoryMiB: 4096, storageGiB: 10 };
  return node;
}

async function putWorkload(name: string, replicas: number): Promise<void> {
  const parsed = parseWorkloadValue({
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name },
    spec: { command: ["sleep", "60"], resources: { cpuMillicores: 10, memoryMiB: 8 }, replicas },
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

async function replicas(): Promise<ReplicaRecord[]> {
  return (await store.range(replicaPrefix)).kvs.map((kv) => JSON.parse(kv.value) as ReplicaRecord);
}

function newController(planApplier: (applier: PlanApplier) => PlanApplier): WorkloadController {
  return new WorkloadController({
    store,
    clock,
    rng: seededRng(1),
    logger: createLogger({ component: "test", level: "silent" }),
    events,
    assignments: new AssignmentHub(),
    metrics,
    // Far away: every pass these tests see comes from the controller asking for one.
    resyncIntervalMs: 60_000,
    planApplier,
  });
}

/** Lets the pending pass timer fire (not the resync) and waits for that pass. */
async function runOnePass(): Promise<void> {
  clock.advance(1_000);
  await controller?.settled();
}

async function failuresByReason(): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const { labels, value } of (await metrics.placementFailures.get()).values) {
    counts[String(labels.reason)] = value;
  }
  return counts;
}

async function eventTypes(): Promise<string[]> {
  return (await events.list({ types: ["ReplicasPlaced", "PlacementRetriesExhausted"] })).map(
    (event) => event.type,
  );
}

describe("controller: a plan the applier refuses", () => {
  it("REQ-012 a plan refused twice is retried at once, and the replica is placed when the refusals end; metrics and events say so", async () => {
    await store.put(nodeKey("n1"), JSON.stringify(readyNode("n1")));
    await putWorkload("web", 1);
    let planner: RejectingPlanner<PlanContext> | undefined;
    controller = newController((applier) => {
      planner = new RejectingPlanner(applier, { rejections: 2 });
      return planner;
    });
    await controller.start();
    for (let pass = 0; pass < 5; pass++) await runOnePass();

    expect(planner?.refused).toBe(2);
    // Three plans, one a pass: the two refused, then the one committed; none after.
    expect(planner?.plans).toHaveLength(3);
    expect((await replicas()).map((r) => r.node)).toEqual(["n1"]);
    expect(controller.placementsTotal).toBe(1);
    expect(await failuresByReason()).toEqual({ Conflict: 2 });
    expect((await metrics.placements.get()).values[0]?.value).toBe(1);
    expect(await eventTypes()).toEqual(["ReplicasPlaced"]);
  });

  it("REQ-071 retries are bounded: a planner that refuses every plan sees maxPlanAttempts plans, then one per resync, and one PlacementRetriesExhausted event says why", async () => {
    await store.put(nodeKey("n1"), JSON.stringify(readyNode("n1")));
    await putWorkload("web", 2);
    let planner: RejectingPlanner<PlanContext> | undefined;
    controller = newController((applier) => {
      planner = new RejectingPlanner(applier, { rejections: "always" });
      return planner;
    });
    await controller.start();
    for (let pass = 0; pass < 20; pass++) await runOnePass();

    expect(maxPlanAttempts).toBe(5);
    expect(planner?.plans).toHaveLength(maxPlanAttempts);
    expect((await replicas()).map((r) => r.node)).toEqual(["", ""]);
    expect(await failuresByReason()).toEqual({ Conflict: 2 * maxPlanAttempts });
    const exhausted = await events.list({ types: ["PlacementRetriesExhausted"] });
    expect(exhausted.map((e) => [e.subject, e.reason, e.message])).toEqual([
      [
        "workload/default/web",
        "Conflict",
        "2 replicas not placed: the plan applier refused 5 plans in a row (last: Conflict, plan 5 refused by the test planner); retried on the next change or resync",
      ],
    ]);

    // The resync tries once more, without a second event.
    clock.advance(60_000);
    await controller.settled();
    for (let pass = 0; pass < 5; pass++) await runOnePass();
    expect(planner?.plans).toHaveLength(maxPlanAttempts + 1);
    expect(await events.list({ types: ["PlacementRetriesExhausted"] })).toHaveLength(1);
  });

  it("REQ-012 the coordinator's applier re-checks: a placement on a node cordoned after the plan was made is refused (NodeChanged) and the next pass places it on another node", async () => {
    await store.put(nodeKey("n1"), JSON.stringify(readyNode("n1")));
    await store.put(nodeKey("n2"), JSON.stringify(readyNode("n2")));
    await putWorkload("web", 1);
    const submitted: Plan[] = [];
    let cordoned = "";
    controller = newController((applier) => ({
      apply: async (plan, ...context) => {
        submitted.push(plan);
        if (submitted.length === 1) {
          // Between the plan and its commit, the node it chose is cordoned.
          cordoned = plan.placements[0]?.node ?? "";
          const node = readyNode(cordoned);
          node.cordoned = true;
          const revision = await store.put(nodeKey(cordoned), JSON.stringify(node));
          await controller?.cache.waitFor(revision);
        }
        return applier.apply(plan, ...context);
      },
    }));
    await controller.start();
    for (let pass = 0; pass < 5; pass++) await runOnePass();

    expect(submitted).toHaveLength(2);
    expect(cordoned).not.toBe("");
    const placedOn = (await replicas()).map((r) => r.node);
    expect(placedOn).toHaveLength(1);
    expect(placedOn[0]).not.toBe(cordoned);
    expect(placedOn[0]).not.toBe("");
    expect(await failuresByReason()).toEqual({ NodeChanged: 1 });
    expect(await eventTypes()).toEqual(["ReplicasPlaced"]);
  });
});

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { createLogger } from "../../observe/logger.js";
import { nodeKey } from "../nodes/nodeRecord.js";
import { testNodeRecord } from "../nodes/testing/nodeRecords.js";
import { openSqliteStore, type SqliteStore } from "../store/sqliteStore.js";
import type { Op } from "../store/store.js";
import { ClusterCache } from "./clusterCache.js";
import { type ClusterState, readClusterState } from "./clusterState.js";
import {
  type ReplicaRecord,
  replicaKey,
  revisionKey,
  type WorkloadRecord,
  workloadKey,
} from "./records.js";

let dir: string;
let store: SqliteStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cloudless-cache-"));
  store = await openSqliteStore({ path: join(dir, "store.db"), clock: new ManualClock() });
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

/** A comparable form: maps sorted by key, replica lists sorted by id. */
function normalize(state: ClusterState) {
  const sorted = <T>(map: Map<string, T>) =>
    [...map.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return {
    revision: state.revision,
    nodes: sorted(state.nodes),
    workloads: sorted(state.workloads),
    revisions: sorted(state.revisions),
    replicas: sorted(state.replicasByWorkload).map(
      ([key, list]) => [key, [...list].sort((a, b) => (a.value.id < b.value.id ? -1 : 1))] as const,
    ),
  };
}

/** Well-formed records (the codecs refuse anything else), varied by `n`. */
function workloadRecord(name: string, n: number): WorkloadRecord {
  return {
    uid: `uid-${name}`,
    namespace: "default",
    name,
    revision: n,
    templateHash: "t",
    spec: {},
    replicas: 1,
    minAvailable: 0,
    createdAtMs: 0,
    updatedAtMs: n,
  };
}

function replicaRecord(workload: string, id: string, node: string, n: number): ReplicaRecord {
  return {
    id,
    namespace: "default",
    workload,
    revision: n,
    node,
    desired: "Running",
    resources: { cpuMillicores: 10, memoryMiB: 8, storageGiB: 0, bandwidthMbps: 0 },
    createdAtMs: 0,
  };
}

const names = ["a", "b", "c"];
const ids = ["r1", "r2", "r3", "r4"];

/** One store write: a put or delete of a node, workload, revision, replica or unrelated key. */
const writeArb: fc.Arbitrary<Op[]> = fc
  .array(
    fc
      .oneof(
        fc.record({ kind: fc.constant("node"), name: fc.constantFrom(...names), n: fc.nat(9) }),
        fc.record({ kind: fc.constant("workload"), name: fc.constantFrom(...names), n: fc.nat(9) }),
        fc.record({ kind: fc.constant("revision"), name: fc.constantFrom(...names), n: fc.nat(3) }),
        fc.record({
          kind: fc.constant("replica"),
          name: fc.constantFrom(...names),
          id: fc.constantFrom(...ids),
          node: fc.constantFrom("", ...names),
          n: fc.nat(9),
        }),
        fc.record({ kind: fc.constant("other"), name: fc.constantFrom(...names), n: fc.nat(9) }),
      )
      .chain((w) => fc.record({ w: fc.constant(w), del: fc.boolean() })),
    { minLength: 1, maxLength: 4 },
  )
  .map((writes) => {
    const ops = new Map<string, Op>();
    for (const { w, del } of writes) {
      let key: string;
      let value: string;
      switch (w.kind) {
        case "node":
          key = nodeKey(w.name);
          value = JSON.stringify({ ...testNodeRecord(w.name), status: "Ready", enrollments: w.n });
          break;
        case "workload":
          key = workloadKey("default", w.name);
          value = JSON.stringify(workloadRecord(w.name, w.n));
          break;
        case "revision":
          key = revisionKey("default", w.name, w.n);
          value = JSON.stringify({
            revision: w.n,
            templateHash: "t",
            spec: { n: w.n },
            createdAtMs: 0,
          });
          break;
        case "replica": {
          const r = w as { name: string; id: string; node: string; n: number };
          key = replicaKey("default", r.name, r.id);
          value = JSON.stringify(replicaRecord(r.name, r.id, r.node, r.n));
          break;
        }
        default:
          key = `/events/${w.name}`;
          value = String(w.n);
      }
      // One op per key per transaction, as the store requires.
      ops.set(key, del ? { type: "delete", key } : { type: "put", key, value });
    }
    return [...ops.values()];
  });

describe("ClusterCache", () => {
  it("equals a fresh full read after any sequence of store writes", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(writeArb, { maxLength: 12 }),
        fc.array(writeArb, { maxLength: 12 }),
        async (before, after) => {
          await store.txn({ compare: [], success: [{ type: "deletePrefix", prefix: "/" }] });
          for (const ops of before) await store.txn({ compare: [], success: ops });
          const cache = new ClusterCache(store);
          await cache.start();
          expect(normalize(cache.snapshot())).toEqual(normalize(await readClusterState(store)));
          for (const ops of after) {
            const result = await store.txn({ compare: [], success: ops });
            expect(await cache.waitFor(result.revision)).toBe(true);
            expect(normalize(cache.snapshot())).toEqual(normalize(await readClusterState(store)));
            // The per-node index holds exactly the placed replicas of each node.
            for (const name of names) {
              const onNode = [...cache.replicasOnNode(name).values()].map((r) => r.value.id);
              const expected = [...(await readClusterState(store)).replicasByWorkload.values()]
                .flat()
                .filter((r) => r.value.node === name)
                .map((r) => r.value.id);
              expect(onNode.sort()).toEqual(expected.sort());
            }
          }
          cache.stop();
        },
      ),
      { numRuns: 40 },
    );
  });

  it("keeps a snapshot unchanged while the store moves on", async () => {
    const cache = new ClusterCache(store);
    await store.put(
      replicaKey("default", "a", "r1"),
      JSON.stringify(replicaRecord("a", "r1", "", 1)),
    );
    await cache.start();
    const snapshot = cache.snapshot();
    const revision = await store.put(
      replicaKey("default", "a", "r1"),
      JSON.stringify(replicaRecord("a", "r1", "n1", 1)),
    );
    await cache.waitFor(revision);
    expect(snapshot.replicasByWorkload.get("default/a")?.[0]?.value.node).toBe("");
    expect(cache.snapshot().replicasByWorkload.get("default/a")?.[0]?.value.node).toBe("n1");
    cache.stop();
  });

  it("can be started again after stop and reports changes to listeners", async () => {
    const cache = new ClusterCache(store);
    const seen: string[] = [];
    cache.onChange((change) => {
      if (change.reset) seen.push("reset");
      for (const node of change.replicaNodes) seen.push(`replicas@${node}`);
      for (const node of change.nodes) seen.push(`node:${node}`);
    });
    await cache.start();
    cache.stop();
    expect(cache.snapshot().nodes.size).toBe(0);
    await store.put(nodeKey("n1"), JSON.stringify(testNodeRecord("n1")));
    await cache.start();
    expect(cache.snapshot().nodes.has("n1")).toBe(true);
    const revision = await store.put(
      replicaKey("default", "a", "r1"),
      JSON.stringify(replicaRecord("a", "r1", "n1", 1)),
    );
    await cache.waitFor(revision);
    expect(seen).toEqual(["reset", "reset", "replicas@n1"]);
    // A status report changes no desired set: the node is not marked.
    const reported = await store.put(
      replicaKey("default", "a", "r1"),
      JSON.stringify({
        ...replicaRecord("a", "r1", "n1", 1),
        status: {
          phase: "Running",
          ready: true,
          restarts: 0,
          reason: "",
          message: "",
          hostPorts: {},
          driver: "process",
          reportedAtMs: 1,
        },
      }),
    );
    await cache.waitFor(reported);
    expect(seen).toEqual(["reset", "reset", "replicas@n1"]);
    cache.stop();
  });

  it("rebuilds itself when its watch ends", async () => {
    const small = await openSqliteStore({
      path: join(dir, "small.db"),
      clock: new ManualClock(),
      maxPendingRevisions: 2,
    });
    try {
      const cache = new ClusterCache(small, { resyncDelayMs: 1 });
      await cache.start();
      // Many revisions at once overflow the watcher's pending queue, which ends the watch.
      await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          small.put(nodeKey(`n${i}`), JSON.stringify(testNodeRecord(`n${i}`))),
        ),
      );
      const last = await small.currentRevision();
      expect(await cache.waitFor(last)).toBe(true);
      expect(cache.snapshot().nodes.size).toBe(20);
      cache.stop();
    } finally {
      await small.close();
    }
  });

  it("contract: REQ-012 a malformed record is refused where it leaves the store: the full read names its key, the cache logs it, keeps the previous value and goes on", async () => {
    const key = replicaKey("default", "a", "r1");
    await store.put(key, JSON.stringify(replicaRecord("a", "r1", "", 1)));
    const logged: Array<Record<string, unknown>> = [];
    const logger = createLogger({ component: "test", level: "silent" });
    logger.error = ((fields: Record<string, unknown>) => {
      logged.push(fields);
    }) as typeof logger.error;
    const cache = new ClusterCache(store, { logger });
    await cache.start();
    const bad = await store.put(
      key,
      JSON.stringify({ ...replicaRecord("a", "r1", "", 1), node: 7 }),
    );
    const good = await store.put(nodeKey("n1"), JSON.stringify(testNodeRecord("n1")));
    expect(await cache.waitFor(Math.max(bad, good))).toBe(true);

    expect(cache.replica(key)?.value.node).toBe("");
    expect(cache.snapshot().nodes.has("n1")).toBe(true);
    expect(logged).toEqual([
      { key, detail: "node: Invalid input: expected string, received number" },
    ]);
    await expect(readClusterState(store)).rejects.toThrow(
      `store record ${key} is malformed: node: Invalid input: expected string, received number`,
    );
    await store.put(nodeKey("n2"), "{not json");
    await expect(readClusterState(store)).rejects.toThrow(
      /store record \/nodes\/n2 is malformed: not JSON/,
    );
    cache.stop();
  });
});

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type Clock, ManualClock } from "../../lib/clock.js";
import { seededRng } from "../../lib/rng.js";
import { openSqliteStore, type SqliteStore } from "../store/sqliteStore.js";
import type { TxnRequest } from "../store/store.js";
import { type ReplicaRecord, replicaPrefix } from "./records.js";
import { ReplicaStatusWriter, type ReportedReplica } from "./replicaStatusWriter.js";

let dir: string;
let store: SqliteStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cloudless-status-"));
  store = await openSqliteStore({ path: join(dir, "store.db"), clock: new ManualClock() });
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

const key = `${replicaPrefix}default/web/r1`;
const record: ReplicaRecord = {
  id: "r1",
  namespace: "default",
  workload: "web",
  revision: 1,
  node: "n1",
  desired: "Running",
  resources: { cpuMillicores: 100, memoryMiB: 32, storageGiB: 0, bandwidthMbps: 0 },
  createdAtMs: 1,
};
const report = (restarts: number): ReportedReplica => ({
  replicaId: "r1",
  phase: "Running",
  ready: true,
  restarts,
  reason: "",
  message: "",
  hostPorts: {},
  driver: "process",
});

/** Runs timers at once, remembering the waits asked for. */
function recordingClock(): Clock & { delays: number[] } {
  const delays: number[] = [];
  return {
    delays,
    nowMs: () => 1_000,
    setTimeout(fn, delayMs) {
      delays.push(delayMs);
      queueMicrotask(fn);
      return () => undefined;
    },
  };
}

/** Another writer touches the replica between our read and commit on the first `times` commits. */
function racing(times: number) {
  const commits: TxnRequest[] = [];
  let raced = 0;
  const proxy = new Proxy(store, {
    get(target, property, receiver) {
      if (property === "txn") {
        return async (request: TxnRequest) => {
          commits.push(request);
          if (raced < times) {
            raced++;
            await target.put(key, JSON.stringify({ ...record, scheduledAtMs: raced }));
          }
          return target.txn(request);
        };
      }
      return Reflect.get(target, property, receiver);
    },
  });
  return { proxy, commits };
}

describe("ReplicaStatusWriter without the cache: its compare-and-swap loop (issue 13)", () => {
  it("writes the report over what a concurrent writer wrote, after a jittered wait", async () => {
    await store.put(key, JSON.stringify(record));
    const { proxy, commits } = racing(2);
    const clock = recordingClock();
    const writer = new ReplicaStatusWriter(proxy, clock, { rng: seededRng(9) });
    await writer.apply("n1", [report(1)], true);
    expect(commits).toHaveLength(3);
    expect(clock.delays).toHaveLength(2);
    const written = JSON.parse((await store.get(key))?.value ?? "{}") as ReplicaRecord;
    expect(written.scheduledAtMs).toBe(2);
    expect(written.status).toMatchObject({ phase: "Running", restarts: 1, reportedAtMs: 1_000 });
  });

  it("gives the report up quietly after maxAttempts lost races, and takes the next one", async () => {
    await store.put(key, JSON.stringify(record));
    const { proxy, commits } = racing(Number.POSITIVE_INFINITY);
    const writer = new ReplicaStatusWriter(proxy, recordingClock(), {
      rng: seededRng(9),
      maxAttempts: 3,
    });
    await expect(writer.apply("n1", [report(1)], true)).resolves.toBeUndefined();
    expect(commits).toHaveLength(3);
    expect(JSON.parse((await store.get(key))?.value ?? "{}").status).toBeUndefined();
    // Not remembered as applied: the same report is tried again when it comes back.
    const calm = new ReplicaStatusWriter(store, recordingClock(), { rng: seededRng(9) });
    await calm.apply("n1", [report(1)], true);
    expect(JSON.parse((await store.get(key))?.value ?? "{}").status.restarts).toBe(1);
  });
});

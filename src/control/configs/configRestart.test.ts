import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseWorkloadValue } from "../../api/workload/parse.js";
import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import { ManualClock, systemClock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import { seededRng } from "../../lib/rng.js";
import { silentLogger } from "../../observe/logger.js";
import type { ClusterCache } from "../controllers/clusterCache.js";
import {
  revisionKey,
  workloadKey,
  workloadRecordSchema,
  workloadRevisionRecordSchema,
} from "../controllers/records.js";
import { EventLog } from "../events/eventLog.js";
import { openSqliteStore } from "../store/sqliteStore.js";
import type { Store } from "../store/store.js";
import { WorkloadRegistry } from "../workloads/workloadRegistry.js";
import { ConfigRegistry } from "./configRegistry.js";
import { ConfigRestarter } from "./configRestarter.js";
import { decideConfigRestart } from "./configStamps.js";

const data = (text: string) => new Map([["app.conf", Buffer.from(text, "utf8")]]);

function doc(configs: unknown[]): WorkloadSpecDocument {
  const parsed = parseWorkloadValue({
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: "web", namespace: "default" },
    spec: {
      command: ["/bin/true"],
      replicas: 3,
      minAvailable: 2,
      resources: { cpuMillicores: 50, memoryMiB: 16 },
      configs,
    },
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  return parsed.doc;
}

describe("onChange: restart, the decision (ADR 0056)", () => {
  const spec = { spec: { configs: [{ name: "app", onChange: "restart" }, { name: "log" }] } };
  const stamp = (version: number, modRevision: number) => ({ version, modRevision });

  it("rolls when a restart config's record changed, not for reload configs, missing configs or unchanged ones", () => {
    const stamped = { app: stamp(1, 10) };
    expect(decideConfigRestart({ spec, configVersions: stamped }, { app: stamp(1, 10) })).toBe(
      undefined,
    );
    expect(decideConfigRestart({ spec, configVersions: stamped }, { app: stamp(2, 12) })).toEqual({
      stamps: { app: stamp(2, 12) },
      changed: ["app v2"],
    });
    // Deleted: the replicas keep their files; nothing rolls.
    expect(decideConfigRestart({ spec, configVersions: stamped }, { app: stamp(0, 0) })).toBe(
      undefined,
    );
    // Deleted and created again at version 1: another record, so it rolls.
    expect(
      decideConfigRestart({ spec, configVersions: stamped }, { app: stamp(1, 30) })?.changed,
    ).toEqual(["app v1"]);
    // Missing at apply, created later: it rolls once.
    expect(
      decideConfigRestart({ spec, configVersions: { app: stamp(0, 0) } }, { app: stamp(1, 5) })
        ?.changed,
    ).toEqual(["app v1"]);
    // A reload config's change is the agent's (a file swap), never a roll.
    const reloadOnly = { spec: { configs: [{ name: "log", onChange: "reload" }] } };
    expect(decideConfigRestart({ spec: reloadOnly }, { log: stamp(9, 99) })).toBe(undefined);
  });
});

describe("onChange: restart, the new revision (ADR 0056)", () => {
  let dir: string;
  let store: Store;
  let clock: ManualClock;
  let configs: ConfigRegistry;
  let workloads: WorkloadRegistry;
  let triggers: number;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-config-restart-"));
    clock = new ManualClock();
    store = await openSqliteStore({ path: path.join(dir, "store.db"), clock });
    configs = new ConfigRegistry(store, clock);
    triggers = 0;
    workloads = new WorkloadRegistry({
      store,
      clock,
      rng: seededRng(1),
      events: new EventLog(store, clock),
      // No leader cache here: reads go to the store.
      controller: {
        cache: { isRunning: false } as unknown as ClusterCache,
        trigger: () => {
          triggers += 1;
        },
      },
    });
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const workload = async () => {
    const kv = await store.get(workloadKey("default", "web"));
    if (!kv) throw new Error("no workload");
    return decodeRecord(workloadRecordSchema, kv.key, kv.value);
  };

  it("a config update makes one new revision with the same template, carrying the config's version; a repeat makes none", async () => {
    await configs.create("default", "app", data("v1"), "admin/admin");
    const applied = await workloads.apply(doc([{ name: "app", onChange: "restart" }]), {
      dryRun: false,
      actor: "admin/admin",
    });
    expect(applied.record.revision).toBe(1);
    expect(applied.record.configVersions?.app?.version).toBe(1);
    // Nothing changed since the apply: no roll.
    expect(await workloads.restartForConfigs("default", "web", "coordinator")).toBe(undefined);

    await configs.update("default", "app", data("v2"), "admin/admin");
    const before = triggers;
    const restart = await workloads.restartForConfigs("default", "web", "coordinator");
    expect(restart).toMatchObject({ revision: 2, changed: ["app v2"] });
    expect(triggers).toBe(before + 1);
    const record = await workload();
    expect(record).toMatchObject({ revision: 2, templateHash: applied.record.templateHash });
    expect(record.configVersions?.app?.version).toBe(2);
    const revisionKv = await store.get(revisionKey("default", "web", 2));
    const revision = decodeRecord(
      workloadRevisionRecordSchema,
      revisionKey("default", "web", 2),
      revisionKv?.value ?? "",
    );
    expect(revision).toMatchObject({
      revision: 2,
      templateHash: applied.record.templateHash,
      cause: "config changed: app v2",
    });
    // Asked again (a second pass, a new leader after failover): once per change.
    expect(await workloads.restartForConfigs("default", "web", "coordinator")).toBe(undefined);
    expect((await workload()).revision).toBe(2);
    // Undo skips revisions of the same template: it goes back to another spec, not to an
    // older config (whose data is gone).
    await expect(workloads.undo("default", "web", "admin/admin")).rejects.toThrow(
      "has no previous revision",
    );
  });

  it("a scale or a settings apply keeps the stamps; a workload mounting the config with reload never rolls", async () => {
    await configs.create("default", "app", data("v1"), "admin/admin");
    await workloads.apply(doc([{ name: "app", onChange: "reload" }]), {
      dryRun: false,
      actor: "admin/admin",
    });
    await configs.update("default", "app", data("v2"), "admin/admin");
    expect(await workloads.restartForConfigs("default", "web", "coordinator")).toBe(undefined);
    await workloads.apply(doc([{ name: "app", onChange: "restart" }]), {
      dryRun: false,
      actor: "admin/admin",
    });
    expect((await workload()).configVersions?.app?.version).toBe(2);
    await workloads.scale("default", "web", 4, "admin/admin");
    expect((await workload()).configVersions?.app?.version).toBe(2);
    expect(await workloads.restartForConfigs("default", "web", "coordinator")).toBe(undefined);
  });

  it("a workload mounting a config that does not exist is applied, with an event naming the config", async () => {
    const applied = await workloads.apply(
      doc([{ name: "absent", onChange: "restart" }, { name: "later" }]),
      { dryRun: false, actor: "admin/admin" },
    );
    expect(applied.action).toBe("created");
    const events = (await store.range("/events/")).kvs.map((kv) => JSON.parse(kv.value));
    const missing = events.filter((event) => event.type === "ConfigMissing");
    expect(missing.map((event) => event.message)).toEqual([
      "mounts configs absent, later, which do not exist in namespace default; create them with `cloudless config create`",
    ]);
    // Created later: the restart config rolls the workload once, so replicas pick it up.
    await configs.create("default", "absent", data("x"), "admin/admin");
    expect((await workloads.restartForConfigs("default", "web", "c"))?.changed).toEqual([
      "absent v1",
    ]);
  });

  it("two coordinators passing at once (a leader and its successor after failover) make one revision per change", async () => {
    await configs.create("default", "app", data("v1"), "admin/admin");
    await workloads.apply(doc([{ name: "app", onChange: "restart" }]), {
      dryRun: false,
      actor: "admin/admin",
    });
    // The loser of a compare-and-swap backs off on its clock before it reads again: a real
    // clock here, so the retries happen (the manual one would hold them forever).
    const racer = (seed: number) =>
      new WorkloadRegistry({
        store,
        clock: systemClock,
        rng: seededRng(seed),
        events: new EventLog(store, clock),
        controller: { cache: { isRunning: false } as unknown as ClusterCache, trigger: () => {} },
      });
    const [first, other] = [racer(2), racer(3)];
    for (const version of [2, 3]) {
      await configs.update("default", "app", data(`v${version}`), "admin/admin");
      const outcomes = await Promise.all([
        first.restartForConfigs("default", "web", "coordinator/a"),
        other.restartForConfigs("default", "web", "coordinator/b"),
        first.restartForConfigs("default", "web", "coordinator/a"),
      ]);
      expect(outcomes.filter((outcome) => outcome !== undefined)).toHaveLength(1);
      expect((await workload()).revision).toBe(version);
      expect((await workload()).configVersions?.app?.version).toBe(version);
    }
    const restarted = (await store.range("/events/")).kvs
      .map((kv) => JSON.parse(kv.value))
      .filter((event) => event.type === "WorkloadRestarted");
    expect(restarted).toHaveLength(2);
  });

  it("the restarter rolls on a watched config change, once, and stops cleanly", async () => {
    await configs.create("default", "app", data("v1"), "admin/admin");
    await workloads.apply(doc([{ name: "app", onChange: "restart" }]), {
      dryRun: false,
      actor: "admin/admin",
    });
    const restarter = new ConfigRestarter({
      store,
      restart: (namespace, name, actor) => workloads.restartForConfigs(namespace, name, actor),
      logger: silentLogger,
    });
    await restarter.start();
    expect((await workload()).revision).toBe(1);
    await configs.update("default", "app", data("v2"), "admin/admin");
    const deadline = Date.now() + 5_000;
    while ((await workload()).revision < 2 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect((await workload()).revision).toBe(2);
    // Passes asked for again (maintenance, a new leader) make no second revision.
    await restarter.request("");
    await restarter.request("default");
    expect((await workload()).revision).toBe(2);
    await restarter.stop();
    await configs.update("default", "app", data("v3"), "admin/admin");
    await restarter.request("");
    expect((await workload()).revision).toBe(2);
  });
});

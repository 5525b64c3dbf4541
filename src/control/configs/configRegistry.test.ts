import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { validateConfigData } from "../../api/configs.js";
import { limits } from "../../api/limits.js";
import { validateSecretData } from "../../api/secrets.js";
import { ManualClock } from "../../lib/clock.js";
import { openSqliteStore } from "../store/sqliteStore.js";
import type { Store } from "../store/store.js";
import { ConfigRegistry, configValues } from "./configRegistry.js";

const data = (entries: Record<string, string>) =>
  new Map(Object.entries(entries).map(([key, value]) => [key, Buffer.from(value, "utf8")]));

describe("config registry (issue 15, ADR 0056)", () => {
  let dir: string;
  let store: Store;
  let clock: ManualClock;
  let configs: ConfigRegistry;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-configs-"));
    clock = new ManualClock();
    store = await openSqliteStore({ path: path.join(dir, "store.db"), clock });
    configs = new ConfigRegistry(store, clock);
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("creates, updates (replacing every key, version+1), gets values, lists metadata and deletes", async () => {
    const created = await configs.create(
      "default",
      "app",
      data({ "app.yaml": "a: 1", mode: "x" }),
      "admin/admin",
    );
    expect(created.version).toBe(1);
    expect(created.keys).toEqual([
      { name: "app.yaml", sizeBytes: 4 },
      { name: "mode", sizeBytes: 1 },
    ]);
    clock.advance(1_000);
    const updated = await configs.update(
      "default",
      "app",
      data({ "app.yaml": "a: 2" }),
      "user/otto",
    );
    expect(updated).toMatchObject({
      version: 2,
      createdBy: "admin/admin",
      updatedBy: "user/otto",
      createdAtMs: created.createdAtMs,
      updatedAtMs: created.createdAtMs + 1_000,
    });
    const read = await configs.get("default", "app");
    expect(Object.fromEntries([...configValues(read)].map(([k, v]) => [k, v.toString()]))).toEqual({
      "app.yaml": "a: 2",
    });
    await configs.create("other", "app", data({ k: "v" }), "admin/admin");
    expect((await configs.list()).map((c) => `${c.namespace}/${c.name}`)).toEqual([
      "default/app",
      "other/app",
    ]);
    expect((await configs.list("other")).map((c) => c.name)).toEqual(["app"]);
    await configs.delete("default", "app");
    await expect(configs.get("default", "app")).rejects.toThrow(
      "config default/app not found; run `cloudless config list` to see configs",
    );
  });

  it("NFR-C1 refuses a second create, an update or delete of a missing config, each in one line", async () => {
    await configs.create("default", "app", data({ k: "v" }), "admin/admin");
    await expect(configs.create("default", "app", data({ k: "v" }), "admin/admin")).rejects.toThrow(
      "config default/app already exists; change it with `cloudless config update`",
    );
    await expect(configs.update("default", "nope", data({ k: "v" }), "a")).rejects.toThrow(
      "config default/nope not found",
    );
    await expect(configs.delete("default", "nope")).rejects.toThrow(
      "config default/nope not found",
    );
  });

  it("NFR-C1 refuses bad names, keys and sizes before any write, naming the limit", async () => {
    const refusals: [() => Promise<unknown>, string][] = [
      [
        () => configs.create("default", "Bad_Name", data({ k: "v" }), "a"),
        'name "Bad_Name" must be a DNS label',
      ],
      [() => configs.create("default", "app", new Map(), "a"), "a config needs at least one key"],
      [
        () => configs.create("default", "app", data({ "../etc": "v" }), "a"),
        'config key "../etc" must be',
      ],
      [() => configs.create("default", "app", data({ "..": "v" }), "a"), 'config key ".." must be'],
      [
        () =>
          configs.create(
            "default",
            "app",
            new Map([["big", Buffer.alloc(limits.configTotalBytes + 1)]]),
            "a",
          ),
        "(limit configTotalBytes)",
      ],
      [
        () =>
          configs.create(
            "default",
            "app",
            new Map(
              Array.from({ length: limits.configKeysPerConfig + 1 }, (_, i) => [
                `k${i}`,
                Buffer.from("v"),
              ]),
            ),
            "a",
          ),
        "(limit configKeysPerConfig)",
      ],
    ];
    for (const [attempt, message] of refusals) {
      await expect(attempt()).rejects.toThrow(message);
    }
    expect((await store.range("/configs/")).kvs).toEqual([]);
  });

  it("NFR-C1 configs and secrets share one checker with their own limits", () => {
    // A value a config takes whole is over a secret's per-value bound.
    const value = new Map([["v", Buffer.alloc(limits.secretValueBytes + 1)]]);
    expect(() => validateConfigData(value)).not.toThrow();
    expect(() => validateSecretData(value)).toThrow("(limit secretValueBytes)");
    expect(() => validateSecretData(new Map())).toThrow("a secret needs at least one key");
  });

  it("NFR-C1 refuses a create beyond configsPerNamespace", async () => {
    // Filled straight in the store: a thousand creates through the registry add nothing.
    const ops = Array.from({ length: limits.configsPerNamespace }, (_, i) => ({
      type: "put" as const,
      key: `/configs/full/c${i}`,
      value: "{}",
    }));
    for (let i = 0; i < ops.length; i += 100) {
      await store.txn({ compare: [], success: ops.slice(i, i + 100) });
    }
    await expect(configs.create("full", "one-more", data({ k: "v" }), "a")).rejects.toThrow(
      `namespace full already holds ${limits.configsPerNamespace} configs (limit configsPerNamespace)`,
    );
  });
});

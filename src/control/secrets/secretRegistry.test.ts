import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { silentLogger } from "../../observe/logger.js";
import { openSqliteStore } from "../store/sqliteStore.js";
import type { Store } from "../store/store.js";
import { KeyRing, parseKeys } from "./keyRing.js";
import { SecretRegistry } from "./secretRegistry.js";

const value = "s3cr3t-value-for-registry-test";
const data = (text: string) => new Map([["password", Buffer.from(text, "utf8")]]);

describe("REQ-063 secret registry and key ring", () => {
  let dir: string;
  let store: Store;
  let clock: ManualClock;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-secrets-"));
    clock = new ManualClock();
    store = await openSqliteStore({ path: path.join(dir, "store.db"), clock });
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  function registry(ring: KeyRing): SecretRegistry {
    return new SecretRegistry(store, ring, clock, randomBytes, silentLogger);
  }

  it("REQ-063 NFR-S1 creates a 0600 KEK in the data dir on first use and stores no value in the clear", async () => {
    const keyDir = path.join(dir, "secrets-kek");
    const secrets = registry(new KeyRing({ kind: "dataDir", dir: keyDir }, randomBytes));
    const record = await secrets.create("default", "db", data(value), "admin/admin");
    expect(record.version).toBe(1);
    expect(record.keys).toEqual([{ name: "password", sizeBytes: value.length }]);
    const files = (await readdir(keyDir)).sort();
    expect(files).toEqual(["active", `${record.envelope.kekId}.key`]);
    for (const file of files) {
      expect((await stat(path.join(keyDir, file))).mode & 0o777).toBe(0o600);
    }
    const stored = await store.range("");
    const everything = stored.kvs.map((kv) => kv.key + kv.value).join("\n");
    expect(everything).not.toContain(value);
    expect(everything).not.toContain(Buffer.from(value).toString("base64"));
    expect((await secrets.readValues("default", "db")).values.get("password")?.toString()).toBe(
      value,
    );
  });

  it("REQ-063 update makes a new version; create of an existing name and get of a missing one are refused", async () => {
    const secrets = registry(
      new KeyRing({ kind: "dataDir", dir: path.join(dir, "k") }, randomBytes),
    );
    await secrets.create("default", "db", data(value), "admin/admin");
    await expect(secrets.create("default", "db", data(value), "admin/admin")).rejects.toThrow(
      /already exists/,
    );
    const updated = await secrets.update("default", "db", data("new-value"), "admin/admin");
    expect(updated.version).toBe(2);
    expect((await secrets.readValues("default", "db")).values.get("password")?.toString()).toBe(
      "new-value",
    );
    await secrets.delete("default", "db");
    await expect(secrets.get("default", "db")).rejects.toThrow(/not found/);
  });

  it("REQ-063 refuses bad names, key names and sizes before any work, naming the limit and never the value", async () => {
    const secrets = registry(
      new KeyRing({ kind: "dataDir", dir: path.join(dir, "k") }, randomBytes),
    );
    await expect(secrets.create("default", "Bad_Name", data(value), "a")).rejects.toThrow(
      /DNS label/,
    );
    await expect(
      secrets.create("default", "x", new Map([["../etc", Buffer.from(value)]]), "a"),
    ).rejects.toThrow(/secretKeyNameChars/);
    const big = Buffer.alloc(128 * 1024 + 1, 0x61);
    await expect(secrets.create("default", "x", new Map([["k", big]]), "a")).rejects.toThrow(
      /secretValueBytes/,
    );
    const many = new Map(Array.from({ length: 65 }, (_, i) => [`k${i}`, Buffer.from("v")]));
    await expect(secrets.create("default", "x", many, "a")).rejects.toThrow(/secretKeysPerSecret/);
    const total = new Map(Array.from({ length: 3 }, (_, i) => [`k${i}`, Buffer.alloc(100 * 1024)]));
    await expect(secrets.create("default", "x", total, "a")).rejects.toThrow(/secretTotalBytes/);
    await expect(secrets.create("default", "x", new Map(), "a")).rejects.toThrow(
      /at least one key/,
    );
    expect((await store.range("/secrets/")).kvs).toHaveLength(0);
  });

  it("REQ-063 rotate-key with --remove-old re-wraps every secret; after the old key is gone every secret still decrypts", async () => {
    const keyDir = path.join(dir, "secrets-kek");
    const secrets = registry(new KeyRing({ kind: "dataDir", dir: keyDir }, randomBytes));
    for (const name of ["a", "b", "c"]) {
      await secrets.create("default", name, data(`${value}-${name}`), "admin/admin");
    }
    const oldKek = (await secrets.get("default", "a")).envelope.kekId;
    const result = await secrets.rotateKey({ removeOld: true });
    expect(result).toMatchObject({ total: 3, rewrapped: 3, alreadyCurrent: 0, createdKek: true });
    expect(result.activeKekId).not.toBe(oldKek);
    expect(result.removedKekIds).toEqual([oldKek]);
    expect(await readdir(keyDir)).not.toContain(`${oldKek}.key`);
    // A fresh ring (as after a restart) reads only the new key, and every secret opens.
    const reopened = registry(new KeyRing({ kind: "dataDir", dir: keyDir }, randomBytes));
    expect(await reopened.verify()).toEqual({ checked: 3, failures: [] });
    for (const name of ["a", "b", "c"]) {
      expect((await reopened.get("default", name)).envelope.kekId).toBe(result.activeKekId);
      expect((await reopened.readValues("default", name)).values.get("password")?.toString()).toBe(
        `${value}-${name}`,
      );
    }
    // A second rotation without removal keeps the old key until asked.
    const second = await reopened.rotateKey({ removeOld: false });
    expect(second).toMatchObject({ rewrapped: 3, removedKekIds: [] });
    expect((await readdir(keyDir)).filter((f) => f.endsWith(".key"))).toHaveLength(2);
  });

  it("REQ-063 with a key file (HA): the first line is active, old lines decrypt until rotated, a missing key is named", async () => {
    const keyFile = path.join(dir, "kek.txt");
    const oldKey = randomBytes(32).toString("base64");
    const newKey = randomBytes(32).toString("base64");
    await writeFile(keyFile, `${oldKey}\n`, { mode: 0o600 });
    const secrets = registry(new KeyRing({ kind: "file", file: keyFile }, randomBytes));
    await secrets.create("default", "db", data(value), "admin/admin");
    // The operator adds a new first line on every coordinator: no restart needed.
    await writeFile(keyFile, `${newKey}\n${oldKey}\n`);
    await expect(secrets.rotateKey({ removeOld: true })).rejects.toThrow(/cannot remove them/);
    const result = await secrets.rotateKey({ removeOld: false });
    expect(result).toMatchObject({ total: 1, rewrapped: 1, createdKek: false });
    await writeFile(keyFile, `${newKey}\n`);
    expect(await secrets.verify()).toEqual({ checked: 1, failures: [] });
    // A coordinator given another key says which KEK it lacks, without the value.
    await writeFile(keyFile, `${oldKey}\n`);
    const verify = await secrets.verify();
    expect(verify.failures[0]?.reason).toMatch(/wrapped by KEK kek-[0-9a-f]{16}/);
    expect(JSON.stringify(verify)).not.toContain(value);
  });

  it("REQ-063 with a shared (etcd) store the data dir is refused as the key source, so no coordinator seals with a key the others lack", async () => {
    const keyDir = path.join(dir, "secrets-kek");
    const secrets = registry(new KeyRing({ kind: "dataDir", dir: keyDir }, randomBytes, true));
    await expect(secrets.create("default", "db", data(value), "admin/admin")).rejects.toThrow(
      /--secrets-key-file/,
    );
    await expect(secrets.rotateKey({ removeOld: true })).rejects.toThrow(/--secrets-key-file/);
    await expect(readdir(keyDir)).rejects.toThrow(/ENOENT/);
    expect((await store.range("/secrets/")).kvs).toHaveLength(0);
  });

  it("REQ-063 a key file or variable with a malformed key is refused naming the entry, not its text", () => {
    expect(() => parseKeys(["not-a-key"], "CLOUDLESS_SECRETS_KEY")).toThrow(
      /entry 1 is not a base64 32-byte key/,
    );
    expect(() => parseKeys(["", Buffer.alloc(16).toString("base64")], "f")).toThrow(/entry 2/);
    const keys = parseKeys([randomBytes(32).toString("base64"), "# comment"], "f");
    expect(keys).toHaveLength(1);
    expect(keys[0]?.id).toMatch(/^kek-[0-9a-f]{16}$/);
  });

  it("REQ-063 an active pointer naming a missing key is refused rather than a new key silently made", async () => {
    const keyDir = path.join(dir, "secrets-kek");
    const ring = new KeyRing({ kind: "dataDir", dir: keyDir }, randomBytes);
    const kek = await ring.active();
    await rm(path.join(keyDir, `${kek.id}.key`));
    await writeFile(
      path.join(keyDir, `${"kek-0000000000000000"}.key`),
      randomBytes(32).toString("base64"),
    );
    await expect(ring.active()).rejects.toThrow(/does not hold the key its name says/);
    expect(await readFile(path.join(keyDir, "active"), "utf8")).toContain(kek.id);
  });
});

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import { generateToken } from "../security/tokens.js";
import { openSqliteStore } from "../store/sqliteStore.js";
import type { Store } from "../store/store.js";
import { TokenRegistry } from "./tokenRegistry.js";

const caFingerprint = "a".repeat(64);

describe("token registry", () => {
  let dir: string;
  let store: Store;
  let clock: ManualClock;
  let tokens: TokenRegistry;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-tokens-"));
    clock = new ManualClock();
    store = await openSqliteStore({ path: path.join(dir, "store.db"), clock });
    tokens = new TokenRegistry(store, clock, caFingerprint);
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("REQ-001 stores only a hash of the secret", async () => {
    const { token, record } = await tokens.create({
      ttlMs: 3_600_000,
      description: "",
      createdBy: "admin/admin",
    });
    const secret = token.split(".").at(-1) as string;
    const stored = await store.range("/tokens/");
    expect(stored.kvs).toHaveLength(1);
    expect(stored.kvs[0]?.value).not.toContain(secret);
    expect(record.secretHash).not.toBe(secret);
  });

  it("REQ-001 a token checks once, is consumed in a transaction, then is refused as used", async () => {
    const { token } = await tokens.create({
      ttlMs: 3_600_000,
      description: "",
      createdBy: "admin/admin",
    });
    const check = await tokens.check(token);
    expect(check.ok).toBe(true);
    if (!check.ok) return;
    const consume = tokens.consumeOps(check, "node/a");
    const first = await store.txn({ compare: [consume.compare], success: [consume.op] });
    expect(first.succeeded).toBe(true);
    // A second consumer that checked before the first one committed loses the race.
    const second = await store.txn({ compare: [consume.compare], success: [consume.op] });
    expect(second.succeeded).toBe(false);
    expect(await tokens.check(token)).toMatchObject({ ok: false, refusal: "used" });
  });

  it("REQ-001 expired, forged, foreign and malformed tokens are refused with reasons", async () => {
    const { token } = await tokens.create({
      ttlMs: 60_000,
      description: "",
      createdBy: "admin/admin",
    });
    const forged = token.replace(/\.[^.]+$/, ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    expect(await tokens.check(forged)).toMatchObject({ ok: false, refusal: "unknown" });
    const foreign = generateToken("b".repeat(64)).token;
    expect(await tokens.check(foreign)).toMatchObject({ ok: false, refusal: "otherCluster" });
    expect(await tokens.check("hello")).toMatchObject({ ok: false, refusal: "malformed" });
    clock.advance(60_000);
    const expired = await tokens.check(token);
    expect(expired).toMatchObject({ ok: false, refusal: "expired" });
    if (!expired.ok) expect(expired.message).toMatch(/token create/);
  });

  it("refuses TTLs out of range and prunes spent tokens after a day", async () => {
    await expect(tokens.create({ ttlMs: 10, description: "", createdBy: "x" })).rejects.toThrow(
      "ttl_seconds must be at least 1",
    );
    await expect(
      tokens.create({ ttlMs: 365 * 86_400_000, description: "", createdBy: "x" }),
    ).rejects.toThrow(
      "ttl_seconds must be at most 2592000 (720h, 30 days) (limit tokenTtlSeconds); use a shorter TTL",
    );
    await tokens.create({ ttlMs: 60_000, description: "", createdBy: "x" });
    clock.advance(60_000 + 24 * 3_600_000 + 1);
    expect(await tokens.prune()).toBe(1);
    expect(await tokens.list()).toEqual([]);
  });
});

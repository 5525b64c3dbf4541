import { generateKeyPairSync } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { SignJWT } from "jose";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { limits } from "../../api/limits.js";
import { ManualClock } from "../../lib/clock.js";
import { openSqliteStore } from "../store/sqliteStore.js";
import type { Store } from "../store/store.js";
import {
  ReplicaTokenKeys,
  replicaTokenAudience,
  replicaTokenKeyPrefix,
  verifyReplicaToken,
} from "./replicaTokens.js";

const web = { namespace: "default", workload: "web", replicaId: "web-abc123" };
const other = { namespace: "default", workload: "web", replicaId: "web-def456" };

describe("replica tokens (REQ-063, ADR 0058)", () => {
  let dir: string;
  let store: Store;
  let clock: ManualClock;
  let keys: ReplicaTokenKeys;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-replica-tokens-"));
    clock = new ManualClock();
    store = await openSqliteStore({ path: path.join(dir, "store.db"), clock });
    keys = new ReplicaTokenKeys(store, clock);
  });

  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("REQ-063: a token issued for a replica to its node verifies, and expires 5 minutes later", async () => {
    const { token, expiresAtMs } = await keys.issue("node-a", web);
    expect(expiresAtMs - clock.nowMs()).toBeLessThanOrEqual(limits.replicaTokenTtlMs);
    expect(expiresAtMs - clock.nowMs()).toBeGreaterThan(limits.replicaTokenTtlMs - 1000);
    expect(await keys.verify(token, "node-a", web)).toEqual({ ok: true });
    clock.stall(limits.replicaTokenTtlMs + limits.replicaTokenClockSkewMs + 1000);
    expect(await keys.verify(token, "node-a", web)).toEqual({
      ok: false,
      reason: "the replica token has expired",
    });
  });

  it("REQ-063: a missing or malformed token is refused", async () => {
    expect((await keys.verify("", "node-a", web)).ok).toBe(false);
    expect(await keys.verify("not.a.jwt", "node-a", web)).toEqual({
      ok: false,
      reason: "the replica token is malformed",
    });
    expect((await keys.verify("x".repeat(limits.replicaTokenChars + 1), "node-a", web)).ok).toBe(
      false,
    );
  });

  it("REQ-063: a token for another replica or issued to another node is refused", async () => {
    const { token } = await keys.issue("node-a", web);
    const forOther = await keys.verify(token, "node-a", other);
    expect(forOther).toEqual({
      ok: false,
      reason: `the replica token is for replica default/web/web-abc123, not default/web/web-def456`,
    });
    const replayed = await keys.verify(token, "node-b", web);
    expect(replayed).toEqual({
      ok: false,
      reason: "the replica token was issued to node node-a, not node-b",
    });
  });

  it("REQ-063: a token with the right key id but another key's signature, or another audience, is refused", async () => {
    const { token } = await keys.issue("node-a", web);
    const [header] = token.split(".");
    const kid = JSON.parse(Buffer.from(header ?? "", "base64url").toString()).kid as string;
    const forged = generateKeyPairSync("ed25519");
    const sign = (audience: string, key = forged.privateKey) =>
      new SignJWT({ node: "node-a" })
        .setProtectedHeader({ alg: "EdDSA", kid })
        .setSubject("default/web/web-abc123")
        .setAudience(audience)
        .setIssuedAt(Math.floor(clock.nowMs() / 1000))
        .setExpirationTime(Math.floor(clock.nowMs() / 1000) + 60)
        .setJti("j")
        .sign(key);
    expect(await keys.verify(await sign(replicaTokenAudience), "node-a", web)).toEqual({
      ok: false,
      reason: "the replica token's signature does not verify",
    });
    // The right key (the verifier is given the forged key's public half) and the wrong audience.
    const verdict = await verifyReplicaToken({
      token: await sign("cloudless:something-else"),
      node: "node-a",
      replica: web,
      nowMs: clock.nowMs(),
      publicKey: async () => forged.publicKey,
    });
    expect(verdict).toEqual({
      ok: false,
      reason: `the token is not for audience ${replicaTokenAudience}`,
    });
  });

  it("REQ-063: another coordinator verifies a token through the key in the store; a key gone from the store is unknown", async () => {
    const { token } = await keys.issue("node-a", web);
    const otherCoordinator = new ReplicaTokenKeys(store, clock);
    expect(await otherCoordinator.verify(token, "node-a", web)).toEqual({ ok: true });
    const { kvs } = await store.range(replicaTokenKeyPrefix);
    expect(kvs).toHaveLength(1);
    expect(kvs[0]?.value).not.toContain('"d"');
    await store.delete(kvs[0]?.key ?? "");
    const third = new ReplicaTokenKeys(store, clock);
    const verdict = await third.verify(token, "node-a", web);
    expect(verdict.ok).toBe(false);
    expect(verdict.ok ? "" : verdict.reason).toMatch(/signed by unknown key/);
  });

  it("REQ-063: the signing key rotates after its life and old key records are pruned once no token can use them", async () => {
    await keys.issue("node-a", web);
    clock.stall(limits.replicaTokenKeyLifeMs);
    const { token } = await keys.issue("node-a", web);
    expect((await store.range(replicaTokenKeyPrefix)).kvs).toHaveLength(2);
    expect(await keys.prune()).toBe(0);
    clock.stall(limits.replicaTokenTtlMs + limits.replicaTokenClockSkewMs + 1);
    expect(await keys.prune()).toBe(1);
    expect((await store.range(replicaTokenKeyPrefix)).kvs).toHaveLength(1);
    // The newest key still verifies a fresh token.
    const fresh = await keys.issue("node-a", web);
    expect(fresh.token).not.toBe(token);
    expect(await keys.verify(fresh.token, "node-a", web)).toEqual({ ok: true });
  });
});

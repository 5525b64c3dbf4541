/**
 * Replica tokens (REQ-063, ADR 0058): a short-lived Ed25519 JWT that binds one replica to
 * the node it is assigned to. An agent gets one per replica (IssueReplicaToken) and sends
 * it with every ReadReplicaSecret and ReadReplicaConfig; the coordinator refuses a read
 * whose token is missing, expired, signed by a key it does not know, for another replica,
 * issued to another node or for another audience, and then still checks the store.
 *
 * Each coordinator signs with a key pair of its own made in memory (the private key never
 * leaves the process) and publishes the PUBLIC key in the store under
 * `/replica-token-keys/<kid>`, so every coordinator in HA verifies tokens any of them
 * issued. A key signs for `replicaTokenKeyLifeMs`, then a new one is made; its record says
 * until when tokens it signed can be valid and is deleted after that.
 */
// biome-ignore lint/style/noRestrictedImports: key ids and token ids are credentials' names: cryptographic randomness only
import { generateKeyPairSync, type KeyObject, randomBytes, type webcrypto } from "node:crypto";
import { decodeProtectedHeader, errors, importJWK, jwtVerify, SignJWT } from "jose";
import { z } from "zod";
import { limits } from "../../api/limits.js";
import type { Clock } from "../../lib/clock.js";
import type { Store } from "../store/store.js";

/** The audience of every replica token: only the replica-file reads accept it. */
export const replicaTokenAudience = "cloudless:replica-files";
/** jose's name for Ed25519 signatures in JWS. */
const algorithm = "EdDSA";
export const replicaTokenKeyPrefix = "/replica-token-keys/";
/** Key ids are 16 random bytes, base64url; anything else is no key of ours. */
const kidPattern = /^[A-Za-z0-9_-]{22}$/;
/** Public keys kept imported in memory: a handful live at once (one per coordinator). */
const publicKeyCacheMax = 64;

/** The replica a token is bound to. */
export interface ReplicaRef {
  namespace: string;
  workload: string;
  replicaId: string;
}

/** The token's `sub`: the replica's full name. */
export function replicaSubject(replica: ReplicaRef): string {
  return `${replica.namespace}/${replica.workload}/${replica.replicaId}`;
}

const keyRecordSchema = z.object({
  kid: z.string().regex(kidPattern),
  /** The public key as a JWK (OKP, Ed25519): never the private part. */
  publicJwk: z.object({ kty: z.literal("OKP"), crv: z.literal("Ed25519"), x: z.string() }),
  createdAtMs: z.number(),
  /** After this no token the key signed can be valid: the record may go. */
  expiresAtMs: z.number(),
});
type KeyRecord = z.infer<typeof keyRecordSchema>;

/** A public key jose verifies with: a Node key object, or what importJWK gives. */
type VerifyKey = KeyObject | webcrypto.CryptoKey;

export type TokenVerdict = { ok: true } | { ok: false; reason: string };

/**
 * Checks a token for one read (pure: time and the key lookup are given). Every refusal
 * reason is one line that names what was wrong, never the token.
 */
export async function verifyReplicaToken(input: {
  token: string;
  /** The calling node (its mTLS identity). */
  node: string;
  replica: ReplicaRef;
  nowMs: number;
  publicKey: (kid: string) => Promise<VerifyKey | undefined>;
}): Promise<TokenVerdict> {
  const { token } = input;
  if (token === "") return { ok: false, reason: "no replica token (the agent must send one)" };
  if (token.length > limits.replicaTokenChars) {
    return {
      ok: false,
      reason: `the replica token is over ${limits.replicaTokenChars} characters`,
    };
  }
  let kid: string | undefined;
  try {
    const header = decodeProtectedHeader(token);
    if (header.alg !== algorithm) return { ok: false, reason: "the replica token is not EdDSA" };
    kid = header.kid;
  } catch {
    return { ok: false, reason: "the replica token is malformed" };
  }
  if (kid === undefined || !kidPattern.test(kid)) {
    return { ok: false, reason: "the replica token names no valid key id" };
  }
  const key = await input.publicKey(kid);
  if (!key) return { ok: false, reason: `the replica token is signed by unknown key ${kid}` };
  let payload: Record<string, unknown>;
  try {
    ({ payload } = await jwtVerify(token, key, {
      algorithms: [algorithm],
      audience: replicaTokenAudience,
      currentDate: new Date(input.nowMs),
      clockTolerance: Math.round(limits.replicaTokenClockSkewMs / 1000),
      requiredClaims: ["sub", "exp", "iat", "jti"],
    }));
  } catch (error) {
    return { ok: false, reason: joseReason(error) };
  }
  const subject = replicaSubject(input.replica);
  if (payload.sub !== subject) {
    return {
      ok: false,
      reason: `the replica token is for replica ${String(payload.sub)}, not ${subject}`,
    };
  }
  if (payload.node !== input.node) {
    return {
      ok: false,
      reason: `the replica token was issued to node ${String(payload.node)}, not ${input.node}`,
    };
  }
  return { ok: true };
}

function joseReason(error: unknown): string {
  if (error instanceof errors.JWTExpired) return "the replica token has expired";
  if (error instanceof errors.JWTClaimValidationFailed) {
    return error.claim === "aud"
      ? `the token is not for audience ${replicaTokenAudience}`
      : `the replica token's ${error.claim} claim is not valid (${error.reason})`;
  }
  if (error instanceof errors.JWSSignatureVerificationFailed) {
    return "the replica token's signature does not verify";
  }
  return "the replica token is malformed";
}

interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  createdAtMs: number;
  /** Set once the public key is in the store. */
  published: Promise<void>;
}

/**
 * One coordinator's signing key and every coordinator's public keys (read from the store,
 * cached). Issue and verify go through here; the decision itself is verifyReplicaToken.
 */
export class ReplicaTokenKeys {
  private signing: SigningKey | undefined;
  private readonly publicKeys = new Map<string, { key: VerifyKey; expiresAtMs: number }>();

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  /** A token for a replica assigned to `node`; its expiry (ms since the epoch). */
  async issue(node: string, replica: ReplicaRef): Promise<{ token: string; expiresAtMs: number }> {
    const key = await this.currentKey();
    const nowMs = this.clock.nowMs();
    const iat = Math.floor(nowMs / 1000);
    const exp = Math.floor((nowMs + limits.replicaTokenTtlMs) / 1000);
    const token = await new SignJWT({ node })
      .setProtectedHeader({ alg: algorithm, kid: key.kid, typ: "JWT" })
      .setSubject(replicaSubject(replica))
      .setAudience(replicaTokenAudience)
      .setIssuedAt(iat)
      .setExpirationTime(exp)
      .setJti(randomBytes(16).toString("base64url"))
      .sign(key.privateKey);
    return { token, expiresAtMs: exp * 1000 };
  }

  /** Verifies a token for a read by `node` for `replica`, with keys from the store. */
  verify(token: string, node: string, replica: ReplicaRef): Promise<TokenVerdict> {
    return verifyReplicaToken({
      token,
      node,
      replica,
      nowMs: this.clock.nowMs(),
      publicKey: (kid) => this.publicKey(kid),
    });
  }

  /** Deletes the records of keys no valid token can carry any more (the leader's upkeep). */
  async prune(): Promise<number> {
    const nowMs = this.clock.nowMs();
    const { kvs } = await this.store.range(replicaTokenKeyPrefix);
    let deleted = 0;
    for (const kv of kvs) {
      const parsed = parseKeyRecord(kv.value);
      if (parsed && parsed.expiresAtMs > nowMs) continue;
      await this.store.delete(kv.key);
      deleted += 1;
    }
    return deleted;
  }

  private async currentKey(): Promise<SigningKey> {
    const nowMs = this.clock.nowMs();
    if (!this.signing || nowMs - this.signing.createdAtMs >= limits.replicaTokenKeyLifeMs) {
      const pair = generateKeyPairSync("ed25519");
      const kid = randomBytes(16).toString("base64url");
      const jwk = pair.publicKey.export({ format: "jwk" });
      const record: KeyRecord = {
        kid,
        publicJwk: { kty: "OKP", crv: "Ed25519", x: String(jwk.x) },
        createdAtMs: nowMs,
        expiresAtMs:
          nowMs +
          limits.replicaTokenKeyLifeMs +
          limits.replicaTokenTtlMs +
          limits.replicaTokenClockSkewMs,
      };
      const published = this.store
        .put(`${replicaTokenKeyPrefix}${kid}`, JSON.stringify(record))
        .then(() => undefined);
      const signing: SigningKey = {
        kid,
        privateKey: pair.privateKey,
        createdAtMs: nowMs,
        published,
      };
      this.signing = signing;
      // A failed publish is retried with a fresh key on the next issue.
      published.catch(() => {
        if (this.signing === signing) this.signing = undefined;
      });
    }
    // Never hand out a token before every coordinator can find its key.
    await this.signing.published;
    return this.signing;
  }

  private async publicKey(kid: string): Promise<VerifyKey | undefined> {
    const nowMs = this.clock.nowMs();
    const cached = this.publicKeys.get(kid);
    if (cached) {
      if (cached.expiresAtMs > nowMs) return cached.key;
      this.publicKeys.delete(kid);
    }
    const kv = await this.store.get(`${replicaTokenKeyPrefix}${kid}`);
    const record = kv ? parseKeyRecord(kv.value) : undefined;
    if (!record || record.kid !== kid || record.expiresAtMs <= nowMs) return undefined;
    const key = await importJWK({ ...record.publicJwk }, algorithm);
    if (key instanceof Uint8Array) return undefined;
    if (this.publicKeys.size >= publicKeyCacheMax) {
      const oldest = this.publicKeys.keys().next().value;
      if (oldest !== undefined) this.publicKeys.delete(oldest);
    }
    this.publicKeys.set(kid, { key, expiresAtMs: record.expiresAtMs });
    return key;
  }
}

function parseKeyRecord(value: string): KeyRecord | undefined {
  try {
    const parsed = keyRecordSchema.safeParse(JSON.parse(value));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Making bootstrap tokens and keeping them: the coordinator's side. The token format
 * (`CL1::<ca-sha256-hex>::<id>.<secret>`, parsing, redaction) is the contract's,
 * api/token.ts; here are the random parts and the stored hash of the secret.
 */
// biome-ignore lint/style/noRestrictedImports: token ids and secrets are credentials: cryptographic randomness only
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { formatToken, TOKEN_ID_BYTES, TOKEN_SECRET_BYTES } from "../../api/token.js";

const HASH_PATTERN = /^[0-9a-f]{64}$/;

export type GeneratedToken = {
  /** The full token, shown to the operator once and never stored. */
  token: string;
  id: string;
  /** What the store keeps: `hashTokenSecret(id, secret)`. */
  secretHash: string;
};

/** Creates a token pinned to the CA with this SHA-256 fingerprint (64 hex characters). */
export function generateToken(caFingerprint: string): GeneratedToken {
  const id = randomBytes(TOKEN_ID_BYTES).toString("hex");
  const secret = randomBytes(TOKEN_SECRET_BYTES).toString("base64url");
  const token = formatToken(caFingerprint, id, secret);
  return { token, id, secretHash: hashTokenSecret(id, secret) };
}

/**
 * The stored form of a secret: SHA-256 hex over `<id>.<secret>`. A plain hash suffices
 * (no slow KDF) because the secret is 256 random bits, not a password; binding the id in
 * means a hash cannot be replayed under another token's id.
 */
export function hashTokenSecret(id: string, secret: string): string {
  return createHash("sha256").update(`${id}.${secret}`, "utf8").digest("hex");
}

/** Compares a presented secret with a stored hash in constant time. */
export function secretMatches(hash: string, id: string, secret: string): boolean {
  if (!HASH_PATTERN.test(hash)) return false;
  const expected = Buffer.from(hash, "hex");
  const actual = Buffer.from(hashTokenSecret(id, secret), "hex");
  return timingSafeEqual(expected, actual);
}

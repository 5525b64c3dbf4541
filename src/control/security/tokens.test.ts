import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseToken } from "../../api/token.js";
import { generateToken, hashTokenSecret, secretMatches } from "./tokens.js";

const FINGERPRINT = "ab".repeat(32);

describe("bootstrap tokens", () => {
  it("REQ-001: a generated token parses back to its CA fingerprint, id and secret", () => {
    const { token, id, secretHash } = generateToken(FINGERPRINT);
    expect(token).toMatch(/^CL1::[0-9a-f]{64}::[0-9a-f]{10}\.[A-Za-z0-9_-]{43}$/);
    const parsed = parseToken(token);
    expect(parsed.ok).toBe(true);
    if (!parsed.ok) return;
    expect(parsed.caFingerprint).toBe(FINGERPRINT);
    expect(parsed.id).toBe(id);
    expect(hashTokenSecret(parsed.id, parsed.secret)).toBe(secretHash);
    expect(secretMatches(secretHash, parsed.id, parsed.secret)).toBe(true);
  });

  it("REQ-001: tokens are unique and the stored hash never equals or reveals the secret", () => {
    fc.assert(
      fc.property(fc.integer(), () => {
        const generated = generateToken(FINGERPRINT);
        const parsed = parseToken(generated.token);
        if (!parsed.ok) return false;
        return (
          generated.secretHash !== parsed.secret &&
          !generated.token.includes(generated.secretHash) &&
          /^[0-9a-f]{64}$/.test(generated.secretHash)
        );
      }),
      { numRuns: 200 },
    );
    const ids = new Set(Array.from({ length: 200 }, () => generateToken(FINGERPRINT).id));
    expect(ids.size).toBe(200);
  });

  it("REQ-001: secretMatches refuses a wrong secret, a wrong id and a malformed hash", () => {
    const { token, id, secretHash } = generateToken(FINGERPRINT);
    const parsed = parseToken(token);
    if (!parsed.ok) throw new Error(parsed.reason);
    const other = parseToken(generateToken(FINGERPRINT).token);
    if (!other.ok) throw new Error(other.reason);
    expect(secretMatches(secretHash, id, other.secret)).toBe(false);
    expect(secretMatches(secretHash, other.id, parsed.secret)).toBe(false);
    expect(secretMatches("not-a-hash", id, parsed.secret)).toBe(false);
    expect(secretMatches(secretHash.slice(2), id, parsed.secret)).toBe(false);
    // The hash itself is not a credential.
    expect(secretMatches(secretHash, id, secretHash)).toBe(false);
  });

  it("refuses to generate a token for a malformed CA fingerprint", () => {
    expect(() => generateToken("abc")).toThrow(/64 hex/);
  });
});

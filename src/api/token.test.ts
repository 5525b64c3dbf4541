import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  formatToken,
  parseToken,
  redactToken,
  TOKEN_ID_BYTES,
  TOKEN_SECRET_BYTES,
} from "./token.js";

const FINGERPRINT = "ab".repeat(32);
const FORM = "CL1::<ca-hash>::<id>.<secret>";

/** A well-formed token with fresh random parts, as the coordinator makes them. */
function sampleToken(caFingerprint: string): { token: string; id: string } {
  const id = randomBytes(TOKEN_ID_BYTES).toString("hex");
  const secret = randomBytes(TOKEN_SECRET_BYTES).toString("base64url");
  return { token: formatToken(caFingerprint, id, secret), id };
}

describe("bootstrap tokens", () => {
  it("accepts a token pasted with surrounding whitespace and an upper-case CA hash", () => {
    const { token, id } = sampleToken(FINGERPRINT);
    const [prefix, fingerprint, rest] = token.split("::");
    const pasted = `  ${prefix}::${fingerprint?.toUpperCase()}::${rest}\n`;
    const parsed = parseToken(pasted);
    expect(parsed).toMatchObject({ ok: true, caFingerprint: FINGERPRINT, id });
  });

  it("REQ-001: malformed tokens are refused with a reason that names the problem", () => {
    const { token } = sampleToken(FINGERPRINT);
    const [, , credential = ""] = token.split("::");
    const [id = "", secret = ""] = credential.split(".");
    const cases: [string, string, RegExp][] = [
      ["empty", "", /empty/],
      ["whitespace only", " \n ", /empty/],
      ["wrong version", token.replace("CL1", "CL2"), /not in the/],
      ["no prefix", `${FINGERPRINT}::${credential}`, /not in the/],
      ["extra part", `${token}::x`, /not in the/],
      ["short CA hash", `CL1::${FINGERPRINT.slice(2)}::${credential}`, /CA hash/],
      ["non-hex CA hash", `CL1::${"zz".repeat(32)}::${credential}`, /CA hash/],
      ["no dot", `CL1::${FINGERPRINT}::${id}${secret}`, /<id>\.<secret>/],
      ["short id", `CL1::${FINGERPRINT}::${id.slice(1)}.${secret}`, /token id/],
      ["upper-case id", `CL1::${FINGERPRINT}::${"ABCDEF0123"}.${secret}`, /token id/],
      ["short secret", `CL1::${FINGERPRINT}::${id}.${secret.slice(1)}`, /token secret/],
      ["padded secret", `CL1::${FINGERPRINT}::${id}.${secret}=`, /token secret/],
      ["base64 (not url) secret", `CL1::${FINGERPRINT}::${id}.+${secret.slice(1)}`, /token secret/],
      ["too long", `CL1::${FINGERPRINT}::${id}.${"a".repeat(600)}`, /too long/],
    ];
    for (const [label, text, specific] of cases) {
      const parsed = parseToken(text);
      expect(parsed.ok, label).toBe(false);
      if (parsed.ok) continue;
      expect(parsed.reason, label).toMatch(specific);
      expect(parsed.reason, label).toContain(FORM);
      expect(parsed.reason, label).toContain("cloudless token create");
      expect(parsed.reason, label).not.toContain(secret);
    }
  });

  it("never throws on arbitrary input", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 600 }), (text) => {
        const parsed = parseToken(text);
        return parsed.ok || parsed.reason.length > 0;
      }),
    );
  });

  it("REQ-001 contract: formatToken refuses a malformed CA fingerprint", () => {
    expect(() => formatToken("abc", "0123456789", "s".repeat(43))).toThrow(/64 hex/);
  });
});

describe("redactToken", () => {
  it("REQ-001: removes the secret from a log line and keeps the id", () => {
    const { token, id } = sampleToken(FINGERPRINT);
    const parsed = parseToken(token);
    if (!parsed.ok) throw new Error(parsed.reason);
    const line = `joining with token ${token} failed; retry with "${token}"`;
    const redacted = redactToken(line);
    expect(redacted).not.toContain(parsed.secret);
    expect(redacted).not.toContain(FINGERPRINT);
    expect(redacted).toBe(
      `joining with token CL1::…::${id}.[REDACTED] failed; retry with "CL1::…::${id}.[REDACTED]"`,
    );
  });

  it("REQ-001: redacts truncated or mangled tokens too", () => {
    expect(redactToken("t=CL1::abc::0123456789.s3cr3t-part")).toBe(
      "t=CL1::…::0123456789.[REDACTED]",
    );
    expect(redactToken("t=CL1::abc::s3cr3tWithoutDot")).toBe("t=CL1::…::[REDACTED]");
    expect(redactToken("no token here")).toBe("no token here");
    const { token, id } = sampleToken(FINGERPRINT);
    expect(redactToken(`CL1::x::${token}`)).toBe(`CL1::…::${id}.[REDACTED]`);
    expect(redactToken(`{"token":"${token}","note":"a::b"}`)).toBe(
      `{"token":"CL1::…::${id}.[REDACTED]","note":"a::b"}`,
    );
  });

  it("REQ-001: no secret survives redaction wherever the token sits in the text", () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), (before, after) => {
        const { token } = sampleToken(FINGERPRINT);
        const parsed = parseToken(token);
        if (!parsed.ok) return false;
        return !redactToken(`${before}${token}${after}`).includes(parsed.secret);
      }),
      { numRuns: 300 },
    );
  });
});

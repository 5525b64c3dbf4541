/**
 * Bootstrap (join) tokens: `CL1::<ca-sha256-hex>::<id>.<secret>` — the format, as the
 * contract (ADR 0038): written by the coordinator, parsed by the agent, redacted by the
 * logger. Generating tokens and storing their hashes is the coordinator's
 * (control/security/tokens.ts).
 *
 * The CA fingerprint lets a joining agent pin the coordinator's CA before it sends the
 * secret (as k3s does), so a man in the middle learns nothing. The id is the lookup key
 * and safe to log; only a hash of the secret is stored, and tokens are one-time.
 */

export const TOKEN_PREFIX = "CL1";
const SEPARATOR = "::";
const FINGERPRINT_PATTERN = /^[0-9a-f]{64}$/;
/** Random bytes in a token id (10 lowercase hex characters). */
export const TOKEN_ID_BYTES = 5;
/** Random bytes in a token secret (43 base64url characters): 256 bits, not a password. */
export const TOKEN_SECRET_BYTES = 32;
const ID_PATTERN = /^[0-9a-f]{10}$/;
// 32 random bytes (the secret) in unpadded base64url are exactly 43 characters.
const SECRET_PATTERN = /^[A-Za-z0-9_-]{43}$/;
// Anything longer than a token plus surrounding whitespace is not a token; don't scan it.
const MAX_TOKEN_CHARS = 512;
const FORM_HINT =
  "token is not in the CL1::<ca-hash>::<id>.<secret> form; copy it exactly as `cloudless token create` printed it";

export type ParsedToken =
  | { ok: true; caFingerprint: string; id: string; secret: string }
  | { ok: false; reason: string };

/** The token text for these parts; throws on a fingerprint that is not 64 hex characters. */
export function formatToken(caFingerprint: string, id: string, secret: string): string {
  const fingerprint = caFingerprint.toLowerCase();
  if (!FINGERPRINT_PATTERN.test(fingerprint)) {
    throw new Error("caFingerprint must be the CA certificate's SHA-256 as 64 hex characters");
  }
  return [TOKEN_PREFIX, fingerprint, `${id}.${secret}`].join(SEPARATOR);
}

/** Parses a token as typed or pasted by an operator; the reason says what is wrong. */
export function parseToken(text: string): ParsedToken {
  // Terminals and files add newlines and spaces around pasted tokens.
  const trimmed = text.trim();
  if (trimmed.length === 0) return { ok: false, reason: `the token is empty; ${FORM_HINT}` };
  if (trimmed.length > MAX_TOKEN_CHARS) {
    return { ok: false, reason: `the token is too long; ${FORM_HINT}` };
  }
  const parts = trimmed.split(SEPARATOR);
  if (parts.length !== 3 || parts[0] !== TOKEN_PREFIX) return { ok: false, reason: FORM_HINT };
  const [, fingerprintPart = "", credential = ""] = parts;
  const caFingerprint = fingerprintPart.toLowerCase();
  if (!FINGERPRINT_PATTERN.test(caFingerprint)) {
    return {
      ok: false,
      reason: `the CA hash in the token is not 64 hex characters; ${FORM_HINT}`,
    };
  }
  const dot = credential.indexOf(".");
  if (dot < 0) return { ok: false, reason: `the token has no "<id>.<secret>" part; ${FORM_HINT}` };
  const id = credential.slice(0, dot);
  const secret = credential.slice(dot + 1);
  if (!ID_PATTERN.test(id)) {
    return { ok: false, reason: `the token id is not 10 lowercase hex characters; ${FORM_HINT}` };
  }
  if (!SECRET_PATTERN.test(secret)) {
    return {
      ok: false,
      reason: `the token secret is not 43 base64url characters; ${FORM_HINT}`,
    };
  }
  return { ok: true, caFingerprint, id, secret };
}

// Deliberately looser than parseToken: a mistyped or truncated token in a log line still
// carries a secret worth hiding. The middle is greedy up to the last "::" before a
// delimiter, so text such as "CL1::x::CL1::<hash>::<id>.<secret>" is covered by one match.
const TOKEN_IN_TEXT = /CL1::[^\s"'`<>,;]*::([A-Za-z0-9_.-]*)/g;
const LOGGABLE_ID = /^[A-Za-z0-9]{1,16}$/;

/** Replaces every token-looking secret in `text` with `CL1::…::<id>.[REDACTED]`, for logs. */
export function redactToken(text: string): string {
  return text.replace(TOKEN_IN_TEXT, (_match, credential: string) => {
    const dot = credential.indexOf(".");
    const id = dot < 0 ? "" : credential.slice(0, dot);
    // Keep the id (it is what operators look tokens up by) only when it clearly is one.
    return LOGGABLE_ID.test(id) ? `CL1::…::${id}.[REDACTED]` : "CL1::…::[REDACTED]";
  });
}

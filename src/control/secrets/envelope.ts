/**
 * Envelope encryption of secrets (REQ-063, ADR 0052): each version of a secret gets its own
 * random 32-byte data key; the value is sealed with AES-256-GCM under that data key, and the
 * data key is sealed (wrapped) under a key-encryption key (KEK) that never enters the store.
 * Both seals carry additional authenticated data (AAD) naming the secret and its version, so
 * a sealed value copied onto another secret or version, or a wrapped key presented with
 * another KEK id, fails to open instead of decrypting to the wrong secret.
 *
 * Pure functions: the data key and IVs come from the caller's `secureRandom` (cryptographic
 * randomness in production; tests pass their own).
 */
import { createCipheriv, createDecipheriv } from "node:crypto";
import { z } from "zod";

/** AES-256-GCM: a 32-byte key, a 12-byte IV (the size GCM is specified for), a 16-byte tag. */
export const keyBytes = 32;
const ivBytes = 12;
const tagBytes = 16;

/** One AES-256-GCM seal, stored as base64 text (the store holds strings). */
export interface Sealed {
  ivB64: string;
  tagB64: string;
  dataB64: string;
}

export const sealedSchema: z.ZodType<Sealed> = z.object({
  ivB64: z.string(),
  tagB64: z.string(),
  dataB64: z.string(),
});

/** The encrypted part of a secret's record: its value sealed, its data key wrapped. */
export interface Envelope {
  /** The KEK that wrapped the data key. */
  kekId: string;
  wrappedKey: Sealed;
  payload: Sealed;
}

export const envelopeSchema: z.ZodType<Envelope> = z.object({
  kekId: z.string().min(1),
  wrappedKey: sealedSchema,
  payload: sealedSchema,
});

/** A key-encryption key: 32 bytes and the id the records name it by. */
export interface Kek {
  id: string;
  key: Buffer;
}

/** Which secret version a seal belongs to: bound into both seals as AAD. */
export interface SecretRef {
  namespace: string;
  name: string;
  version: number;
}

/** Opening failed: tampered data, another secret's or version's AAD, or the wrong key. */
export class EnvelopeOpenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EnvelopeOpenError";
  }
}

export function payloadAad(ref: SecretRef): Buffer {
  return Buffer.from(`cloudless/secret/v1/${ref.namespace}/${ref.name}@${ref.version}`, "utf8");
}

export function wrapAad(ref: SecretRef, kekId: string): Buffer {
  return Buffer.concat([payloadAad(ref), Buffer.from(`#kek=${kekId}`, "utf8")]);
}

function seal(key: Buffer, iv: Buffer, plaintext: Buffer, aad: Buffer): Sealed {
  if (key.length !== keyBytes) throw new Error(`an AES-256 key has ${keyBytes} bytes`);
  const cipher = createCipheriv("aes-256-gcm", key, iv, { authTagLength: tagBytes });
  cipher.setAAD(aad);
  const data = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return {
    ivB64: iv.toString("base64"),
    tagB64: cipher.getAuthTag().toString("base64"),
    dataB64: data.toString("base64"),
  };
}

function open(key: Buffer, sealed: Sealed, aad: Buffer, what: string): Buffer {
  const iv = Buffer.from(sealed.ivB64, "base64");
  const tag = Buffer.from(sealed.tagB64, "base64");
  if (key.length !== keyBytes || iv.length !== ivBytes || tag.length !== tagBytes) {
    throw new EnvelopeOpenError(`${what} is malformed (key, IV or tag of the wrong size)`);
  }
  const decipher = createDecipheriv("aes-256-gcm", key, iv, { authTagLength: tagBytes });
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  try {
    return Buffer.concat([
      decipher.update(Buffer.from(sealed.dataB64, "base64")),
      decipher.final(),
    ]);
  } catch {
    // GCM says only "unable to authenticate": tampered, another secret's AAD or the wrong key.
    throw new EnvelopeOpenError(
      `${what} does not authenticate (tampered, moved from another secret or version, or the wrong key)`,
    );
  }
}

/** Seals `plaintext` for `ref` under a fresh data key wrapped by `kek`. */
export function sealEnvelope(
  ref: SecretRef,
  plaintext: Buffer,
  kek: Kek,
  secureRandom: (size: number) => Buffer,
): Envelope {
  const dataKey = secureRandom(keyBytes);
  try {
    return {
      kekId: kek.id,
      wrappedKey: seal(kek.key, secureRandom(ivBytes), dataKey, wrapAad(ref, kek.id)),
      payload: seal(dataKey, secureRandom(ivBytes), plaintext, payloadAad(ref)),
    };
  } finally {
    dataKey.fill(0);
  }
}

/** The data key of an envelope, unwrapped with the KEK it names. */
function unwrapDataKey(ref: SecretRef, envelope: Envelope, kek: Kek): Buffer {
  if (kek.id !== envelope.kekId) {
    throw new EnvelopeOpenError(`the data key was wrapped by KEK ${envelope.kekId}, not ${kek.id}`);
  }
  const dataKey = open(kek.key, envelope.wrappedKey, wrapAad(ref, kek.id), "the wrapped data key");
  if (dataKey.length !== keyBytes) throw new EnvelopeOpenError("the data key has the wrong size");
  return dataKey;
}

/** The plaintext of an envelope; throws EnvelopeOpenError if anything does not authenticate. */
export function openEnvelope(ref: SecretRef, envelope: Envelope, kek: Kek): Buffer {
  const dataKey = unwrapDataKey(ref, envelope, kek);
  try {
    return open(dataKey, envelope.payload, payloadAad(ref), "the sealed value");
  } finally {
    dataKey.fill(0);
  }
}

/**
 * The same envelope with its data key re-wrapped under `to` (key rotation): the sealed value
 * is untouched, so rotation never handles plaintext values. The value's seal is checked
 * first, so a record that would not decrypt is reported rather than silently re-wrapped.
 */
export function rewrapEnvelope(
  ref: SecretRef,
  envelope: Envelope,
  from: Kek,
  to: Kek,
  secureRandom: (size: number) => Buffer,
): Envelope {
  const dataKey = unwrapDataKey(ref, envelope, from);
  try {
    open(dataKey, envelope.payload, payloadAad(ref), "the sealed value").fill(0);
    return {
      kekId: to.id,
      wrappedKey: seal(to.key, secureRandom(ivBytes), dataKey, wrapAad(ref, to.id)),
      payload: envelope.payload,
    };
  } finally {
    dataKey.fill(0);
  }
}

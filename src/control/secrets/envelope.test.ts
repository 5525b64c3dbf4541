import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  type Envelope,
  EnvelopeOpenError,
  type Kek,
  openEnvelope,
  rewrapEnvelope,
  sealEnvelope,
} from "./envelope.js";

const ref = { namespace: "default", name: "db", version: 1 };
const kek = (id: string): Kek => ({ id, key: randomBytes(32) });
const plaintext = Buffer.from("hunter2-very-secret", "utf8");

/** Flips one bit of a base64 field. */
function flipped(b64: string): string {
  const bytes = Buffer.from(b64, "base64");
  bytes[0] = (bytes[0] ?? 0) ^ 1;
  return bytes.toString("base64");
}

describe("REQ-063 envelope encryption (AES-256-GCM, a data key per version wrapped by a KEK)", () => {
  it("REQ-063 round-trips, and the envelope holds neither the value nor the data key in the clear", () => {
    const k = kek("kek-a");
    const envelope = sealEnvelope(ref, plaintext, k, randomBytes);
    expect(JSON.stringify(envelope)).not.toContain("hunter2");
    expect(JSON.stringify(envelope)).not.toContain(plaintext.toString("base64"));
    expect(envelope.kekId).toBe("kek-a");
    expect(openEnvelope(ref, envelope, k).toString("utf8")).toBe("hunter2-very-secret");
    // A fresh data key and IV each time: two seals of one value differ.
    const again = sealEnvelope(ref, plaintext, k, randomBytes);
    expect(again.payload.dataB64).not.toBe(envelope.payload.dataB64);
  });

  it("REQ-063 a tampered value, tag, IV or wrapped key fails to open", () => {
    const k = kek("kek-a");
    const envelope = sealEnvelope(ref, plaintext, k, randomBytes);
    const tampered: Envelope[] = [
      { ...envelope, payload: { ...envelope.payload, dataB64: flipped(envelope.payload.dataB64) } },
      { ...envelope, payload: { ...envelope.payload, tagB64: flipped(envelope.payload.tagB64) } },
      { ...envelope, payload: { ...envelope.payload, ivB64: flipped(envelope.payload.ivB64) } },
      {
        ...envelope,
        wrappedKey: { ...envelope.wrappedKey, dataB64: flipped(envelope.wrappedKey.dataB64) },
      },
      { ...envelope, payload: { ...envelope.payload, tagB64: "" } },
    ];
    for (const bad of tampered) {
      expect(() => openEnvelope(ref, bad, k)).toThrow(EnvelopeOpenError);
    }
  });

  it("REQ-063 another secret's name, namespace or version as AAD fails to open (no moving a sealed value)", () => {
    const k = kek("kek-a");
    const envelope = sealEnvelope(ref, plaintext, k, randomBytes);
    for (const other of [
      { ...ref, name: "db2" },
      { ...ref, namespace: "prod" },
      { ...ref, version: 2 },
    ]) {
      expect(() => openEnvelope(other, envelope, k)).toThrow(EnvelopeOpenError);
    }
  });

  it("REQ-063 the wrong KEK fails to open, whether it claims the same id or another", () => {
    const k = kek("kek-a");
    const envelope = sealEnvelope(ref, plaintext, k, randomBytes);
    expect(() => openEnvelope(ref, envelope, { id: "kek-a", key: randomBytes(32) })).toThrow(
      EnvelopeOpenError,
    );
    expect(() => openEnvelope(ref, envelope, { id: "kek-b", key: k.key })).toThrow(
      /wrapped by KEK kek-a/,
    );
    // The KEK id is bound into the wrap: relabelling the record to another id fails too.
    expect(() =>
      openEnvelope(ref, { ...envelope, kekId: "kek-b" }, { id: "kek-b", key: k.key }),
    ).toThrow(EnvelopeOpenError);
  });

  it("REQ-063 re-wrapping changes only the wrapped key; the new KEK opens it and the old one no longer does", () => {
    const old = kek("kek-old");
    const next = kek("kek-new");
    const envelope = sealEnvelope(ref, plaintext, old, randomBytes);
    const rewrapped = rewrapEnvelope(ref, envelope, old, next, randomBytes);
    expect(rewrapped.kekId).toBe("kek-new");
    expect(rewrapped.payload).toEqual(envelope.payload);
    expect(openEnvelope(ref, rewrapped, next).toString("utf8")).toBe("hunter2-very-secret");
    expect(() => openEnvelope(ref, rewrapped, old)).toThrow(EnvelopeOpenError);
    // A record whose value is damaged is reported, not silently re-wrapped.
    const damaged = {
      ...envelope,
      payload: { ...envelope.payload, dataB64: flipped(envelope.payload.dataB64) },
    };
    expect(() => rewrapEnvelope(ref, damaged, old, next, randomBytes)).toThrow(EnvelopeOpenError);
  });
});

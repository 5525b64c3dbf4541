/**
 * The random source, injected wherever the control plane or the agent needs randomness
 * (DESIGN.md decision 9, ADR 0041): jitter, tie-breaking, and identifiers that only have
 * to be unique (replica ids, uids, request ids). Tests and the simulator inject a seeded
 * one and get the same choices and identifiers on every run.
 *
 * Secrets, keys and certificate serials are not "randomness" in this sense: they come from
 * node:crypto where they are made, never from an injectable source (ADR 0041).
 */
import { randomBytes, randomUUID } from "node:crypto";

export interface Rng {
  /** A float in [0, 1). */
  next(): number;
  /** `count` random bytes (e.g. `.toString("hex")` for an identifier's suffix). */
  bytes(count: number): Buffer;
  /** An RFC 4122 version 4 UUID, lowercase. */
  uuid(): string;
}

/** mulberry32: small, fast and good enough for jitter, tie-breaking and test identifiers. */
export function seededRng(seed: number): Rng {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const bytes = (count: number) => {
    const out = Buffer.alloc(count);
    for (let i = 0; i < count; i++) out[i] = Math.floor(next() * 256);
    return out;
  };
  return { next, bytes, uuid: () => uuidFromBytes(bytes(16)) };
}

/**
 * The process's own randomness: Math.random for floats, node:crypto for bytes and UUIDs,
 * so identifiers stay unique across processes and coordinators without coordination.
 */
export const systemRng: Rng = {
  next: () => Math.random(),
  bytes: (count) => randomBytes(count),
  uuid: () => randomUUID(),
};

/** Sets the version (4) and variant (10xx) bits of 16 random bytes and formats them. */
function uuidFromBytes(bytes: Buffer): string {
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

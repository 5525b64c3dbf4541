/**
 * How the store's keys live in etcd (ADR 0014): every key is stored under one
 * namespace, `<prefix>/<key>` as UTF-8 bytes, so several Cloudless clusters (or other
 * programs) can share an etcd. Prefix ranges are byte ranges, which is etcd's (and the
 * contract's) key order.
 */

import type { IKeyValue } from "etcd3";
import { requirePrefix } from "./requestValidation.js";
import { type KeyValue, StoreError } from "./store.js";

/** The default namespace: keys are stored as `/cloudless/<key>`. */
export const DEFAULT_NAMESPACE = "/cloudless";

/**
 * The namespace as stored: "" stays "" (the whole etcd), anything else ends in exactly
 * one "/", so "/cloudless" and "/cloudless2" never overlap. Namespaces must still not
 * nest ("/a" and "/a/b" would): give each cluster a sibling.
 */
export function normalizeNamespace(prefix: string): string {
  requirePrefix(prefix);
  if (prefix === "") return "";
  if (prefix.includes("\u0000")) {
    throw new StoreError("an etcd key prefix may not contain NUL characters", "invalid");
  }
  return prefix.endsWith("/") ? prefix : `${prefix}/`;
}

/**
 * The smallest byte string greater than every string starting with `bytes`; etcd's
 * "\0" (every key from the start key on) when there is none.
 */
export function bytePrefixEnd(bytes: Buffer): Buffer {
  const end = Buffer.from(bytes);
  for (let i = end.length - 1; i >= 0; i--) {
    const byte = end[i] ?? 0xff;
    if (byte < 0xff) {
      end[i] = byte + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

/** Maps store keys to etcd keys and etcd key-values back to the contract's shape. */
export class EtcdKeyspace {
  private readonly base: Buffer;

  constructor(readonly namespace: string) {
    this.base = Buffer.from(namespace, "utf8");
  }

  /** The etcd key of a store key. */
  key(key: string): Buffer {
    return Buffer.from(this.namespace + key, "utf8");
  }

  /** The store key of an etcd key inside the namespace. */
  storeKey(raw: Buffer): string {
    return raw.subarray(this.base.length).toString("utf8");
  }

  /** A key read (count only) just for the revision in the response header. */
  get probeKey(): Buffer {
    return this.base.length > 0 ? this.base : Buffer.from([0]);
  }

  /** The etcd range holding every store key that starts with `prefix`. */
  prefixRange(prefix: string): { key: Buffer; range_end: Buffer } {
    const key = this.key(prefix);
    // An empty start key is refused by etcd; "\0" is the smallest key there is.
    return { key: key.length > 0 ? key : Buffer.from([0]), range_end: bytePrefixEnd(key) };
  }

  /** A key-value from etcd in the contract's shape (revisions are int64 strings). */
  keyValue(kv: IKeyValue): KeyValue {
    return {
      key: this.storeKey(kv.key),
      value: kv.value ? kv.value.toString("utf8") : "",
      createRevision: Number(kv.create_revision),
      modRevision: Number(kv.mod_revision),
      version: Number(kv.version),
      lease: Number(kv.lease),
    };
  }
}

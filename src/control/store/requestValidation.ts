/**
 * Request checks every store backend applies before talking to its engine, so a
 * malformed key, txn or range is refused the same way (kind "invalid") whether the
 * store is SQLite or etcd (REQ-012). Both backends import them from here.
 */

import { type Op, type RangeOptions, StoreError, type TxnRequest } from "./store.js";

/** A lone surrogate would be replaced on its way to UTF-8, silently changing the key. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** A key is a non-empty, well-formed Unicode string. */
export function requireKey(key: unknown): asserts key is string {
  if (typeof key !== "string" || key === "") {
    throw new StoreError("a key must be a non-empty string", "invalid");
  }
  if (LONE_SURROGATE.test(key)) {
    throw new StoreError(`key ${JSON.stringify(key)} is not well-formed Unicode`, "invalid");
  }
}

/** A prefix is a well-formed Unicode string; "" means every key. */
export function requirePrefix(prefix: unknown): asserts prefix is string {
  if (typeof prefix !== "string") throw new StoreError("a prefix must be a string", "invalid");
  if (LONE_SURROGATE.test(prefix)) {
    throw new StoreError(`prefix ${JSON.stringify(prefix)} is not well-formed Unicode`, "invalid");
  }
}

/** Values are stored as UTF-8, so they must be well-formed Unicode strings too. */
export function requireValue(key: string, value: unknown): asserts value is string {
  if (typeof value !== "string") {
    throw new StoreError(`value for ${JSON.stringify(key)} must be a string`, "invalid");
  }
  if (LONE_SURROGATE.test(value)) {
    throw new StoreError(`value for ${JSON.stringify(key)} is not well-formed Unicode`, "invalid");
  }
}

/** A lease id is 0 (no lease) or a positive safe integer. */
export function requireLeaseId(lease: unknown): asserts lease is number {
  if (typeof lease !== "number" || !Number.isSafeInteger(lease) || lease < 0) {
    throw new StoreError(`lease ${String(lease)} is not a lease id`, "invalid");
  }
}

export function validateRangeOptions(options: RangeOptions | undefined): void {
  if (options === undefined) return;
  if (options.limit !== undefined && (!Number.isSafeInteger(options.limit) || options.limit < 0)) {
    throw new StoreError(`range limit must be a non-negative integer`, "invalid");
  }
  if (options.fromKey !== undefined) requirePrefix(options.fromKey);
}

/**
 * Rejects malformed requests before anything runs. Like etcd, a branch may not write
 * the same key twice (two puts, or a put and a delete covering it).
 */
export function validateTxn(request: TxnRequest): void {
  if (!request || !Array.isArray(request.compare) || !Array.isArray(request.success)) {
    throw new StoreError("a txn needs compare and success arrays", "invalid");
  }
  for (const compare of request.compare) {
    requireKey(compare.key);
    const expected =
      compare.target === "modRevision"
        ? compare.modRevision
        : compare.target === "createRevision"
          ? compare.createRevision
          : compare.target === "version"
            ? compare.version
            : undefined;
    if (compare.target === "value") {
      if (typeof compare.value !== "string" || (compare.op !== "==" && compare.op !== "!=")) {
        throw new StoreError(`invalid value compare on ${JSON.stringify(compare.key)}`, "invalid");
      }
    } else if (
      typeof expected !== "number" ||
      !Number.isSafeInteger(expected) ||
      !["==", "!=", "<", ">"].includes(compare.op) ||
      !["modRevision", "createRevision", "version"].includes(compare.target)
    ) {
      throw new StoreError(`invalid compare on ${JSON.stringify(compare.key)}`, "invalid");
    }
  }
  validateOps(request.success);
  if (request.failure !== undefined) validateOps(request.failure);
}

function validateOps(ops: Op[]): void {
  if (!Array.isArray(ops)) throw new StoreError("txn branches must be arrays", "invalid");
  const putKeys = new Set<string>();
  const deleteKeys: string[] = [];
  const deletePrefixes: string[] = [];
  for (const op of ops) {
    switch (op.type) {
      case "put":
        requireKey(op.key);
        requireValue(op.key, op.value);
        if (op.lease !== undefined) requireLeaseId(op.lease);
        if (putKeys.has(op.key)) throw duplicateKey(op.key);
        putKeys.add(op.key);
        break;
      case "delete":
        requireKey(op.key);
        deleteKeys.push(op.key);
        break;
      case "deletePrefix":
        requirePrefix(op.prefix);
        deletePrefixes.push(op.prefix);
        break;
      case "get":
        requireKey(op.key);
        break;
      case "range":
        requirePrefix(op.prefix);
        validateRangeOptions(op.options);
        break;
      default:
        throw new StoreError(
          `unknown txn op ${JSON.stringify((op as { type?: unknown }).type)}`,
          "invalid",
        );
    }
  }
  for (const key of deleteKeys) if (putKeys.has(key)) throw duplicateKey(key);
  for (const prefix of deletePrefixes) {
    for (const key of putKeys) if (key.startsWith(prefix)) throw duplicateKey(key);
  }
}

function duplicateKey(key: string): StoreError {
  return new StoreError(
    `txn writes key ${JSON.stringify(key)} more than once; write each key once per branch`,
    "invalid",
  );
}

/** The error every backend gives for a missing, expired or revoked lease. */
export function leaseNotFound(leaseId: number | undefined): StoreError {
  return new StoreError(
    leaseId === undefined
      ? "a lease in this request was not found or has expired; grant a new lease and attach " +
          "the keys again"
      : `lease ${leaseId} not found or expired; grant a new lease and attach the keys again`,
    "leaseNotFound",
  );
}

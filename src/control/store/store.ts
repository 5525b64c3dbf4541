/**
 * The store contract: a revisioned key-value store shaped like etcd v3 (REQ-012).
 *
 * Every successful write (put, delete or transaction) advances the store's single
 * revision counter by one; all changes made by one transaction share that revision,
 * as in etcd. Backends: SQLite (embedded, one coordinator) and etcd (replicated).
 * The contract suite in storeContract.ts runs against every backend.
 */

import { CloudlessError, type ReportsCloudlessError } from "../../api/errors.js";

export interface KeyValue {
  key: string;
  value: string;
  /** Revision at which the key was created (last created, if deleted and re-created). */
  createRevision: number;
  /** Revision of the last modification. */
  modRevision: number;
  /** Number of modifications since creation; 1 after the first put. */
  version: number;
  /** Lease the key is attached to, or 0. */
  lease: number;
}

export interface RangeOptions {
  /** Maximum number of keys to return (0 or absent: no limit). */
  limit?: number;
  /** Start at this key (inclusive), for paging within the prefix. */
  fromKey?: string;
  /** Return only keys, with empty values. */
  keysOnly?: boolean;
}

export interface RangeResult {
  kvs: KeyValue[];
  /** The store's revision when the range was read. */
  revision: number;
  /** True when the limit cut the result short. */
  more: boolean;
}

/** A condition of a transaction, evaluated atomically with its operations. */
export type Compare =
  /** The key's modRevision equals `modRevision`; 0 means "the key does not exist". */
  | { key: string; target: "modRevision"; op: "==" | "!=" | "<" | ">"; modRevision: number }
  | { key: string; target: "createRevision"; op: "==" | "!=" | "<" | ">"; createRevision: number }
  | { key: string; target: "version"; op: "==" | "!=" | "<" | ">"; version: number }
  | { key: string; target: "value"; op: "==" | "!="; value: string };

export type Op =
  | { type: "put"; key: string; value: string; lease?: number }
  | { type: "delete"; key: string }
  | { type: "deletePrefix"; prefix: string }
  | { type: "get"; key: string }
  | { type: "range"; prefix: string; options?: RangeOptions };

export type OpResult =
  | { type: "put"; prev?: KeyValue }
  | { type: "delete"; deleted: number }
  | { type: "get"; kv?: KeyValue }
  | { type: "range"; kvs: KeyValue[]; more: boolean };

export interface TxnRequest {
  compare: Compare[];
  success: Op[];
  failure?: Op[];
}

export interface TxnResult {
  succeeded: boolean;
  /** The store's revision after the transaction (unchanged if it wrote nothing). */
  revision: number;
  results: OpResult[];
}

export interface WatchEvent {
  type: "put" | "delete";
  /** For a delete: the key with an empty value and the delete's revision as modRevision. */
  kv: KeyValue;
  prevKv?: KeyValue;
}

export interface WatchOptions {
  /**
   * Deliver every change with revision >= fromRevision, then live changes. Absent:
   * only changes after the current revision.
   */
  fromRevision?: number;
}

/** Why a watch ended, when it ended by itself. */
export type WatchEnd =
  /** The requested revision is older than the oldest kept; resync with a fresh range. */
  | { reason: "compacted"; compactRevision: number; message: string }
  /** The store closed or failed; resume from the last seen revision + 1. */
  | { reason: "closed"; message: string };

export interface WatchHandlers {
  /** Called with the events of one revision at a time, in revision order. */
  onEvents(events: WatchEvent[], revision: number): void;
  /** Called once if the watch ends without cancel(). */
  onEnd?(end: WatchEnd): void;
}

export interface Watch {
  cancel(): void;
}

export interface Lease {
  id: number;
  ttlMs: number;
}

export interface Store {
  readonly backend: "sqlite" | "etcd";
  get(key: string): Promise<KeyValue | undefined>;
  range(prefix: string, options?: RangeOptions): Promise<RangeResult>;
  /** Put a key; returns the new revision. */
  put(key: string, value: string, options?: { lease?: number }): Promise<number>;
  /** Delete a key; returns the number deleted (0 or 1). */
  delete(key: string): Promise<number>;
  txn(request: TxnRequest): Promise<TxnResult>;
  /** Watch every key under a prefix (use "" for all keys). */
  watch(prefix: string, options: WatchOptions, handlers: WatchHandlers): Watch;
  currentRevision(): Promise<number>;
  /** The oldest revision a watch can still start from, minus one. */
  compactedRevision(): Promise<number>;
  /** Discard history up to and including `revision`; current values are kept. */
  compact(revision: number): Promise<void>;
  /** Grant a lease; keys attached to it are deleted when it expires or is revoked. */
  grantLease(ttlMs: number): Promise<Lease>;
  /** Reset the lease's timer; fails with LeaseNotFoundError when it has expired. */
  keepAlive(leaseId: number): Promise<void>;
  revokeLease(leaseId: number): Promise<void>;
  close(): Promise<void>;
}

export type StoreErrorKind =
  | "locked"
  | "corrupt"
  | "unavailable"
  | "closed"
  | "leaseNotFound"
  | "invalid"
  /** A compare-and-swap lost its race every attempt (compareAndSwap.ts). */
  | "conflict";

/**
 * The store could not be opened or used; the message says what to do (for the operator,
 * in the coordinator's log). At the API edge it reports itself as one CloudlessError
 * (toCloudlessError, ADR 0043): a short line for the caller, with the store error as cause.
 */
export class StoreError extends Error implements ReportsCloudlessError {
  /** What the store said, in a few words for an API caller ("etcd: no quorum"). */
  readonly brief: string | undefined;

  constructor(
    message: string,
    readonly kind: StoreErrorKind,
    options?: { cause?: unknown; brief?: string },
  ) {
    super(message, options);
    this.name = "StoreError";
    this.brief = options?.brief;
  }

  toCloudlessError(): CloudlessError {
    return storeErrorToCloudless(this);
  }
}

/**
 * The one mapping of store failures to API codes. Unavailable: the store cannot answer
 * now and may later (unreachable, quorum lost, its deadline passed, closing, locked);
 * Conflict (gRPC Aborted): a compare-and-swap that kept losing; FailedPrecondition: the
 * store refuses until someone acts (corrupt, an expired lease); Internal: a request this
 * code should never have built (invalid), logged with its detail.
 */
export function storeErrorToCloudless(error: StoreError): CloudlessError {
  const brief = error.brief ? ` (${error.brief})` : "";
  switch (error.kind) {
    case "unavailable":
    case "locked":
      return new CloudlessError(
        "Unavailable",
        `the cluster store is unavailable${brief}; retry when it is back`,
        { cause: error },
      );
    case "closed":
      return new CloudlessError(
        "Unavailable",
        "the cluster store is closed (this coordinator is stopping); retry on another coordinator",
        { cause: error },
      );
    case "conflict":
      return new CloudlessError("Conflict", error.message, { cause: error });
    case "corrupt":
      return new CloudlessError(
        "FailedPrecondition",
        `the cluster store is corrupt${brief}; an operator must restore it (see the coordinator log)`,
        { cause: error },
      );
    case "leaseNotFound":
      return new CloudlessError("FailedPrecondition", error.message, { cause: error });
    case "invalid":
      return CloudlessError.internal(
        "internal error; see the coordinator log for details and report it if it persists",
        error,
      );
  }
}

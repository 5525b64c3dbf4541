/**
 * The store contract: a revisioned key-value store shaped like etcd v3 (REQ-012).
 *
 * Every successful write (put, delete or transaction) advances the store's single
 * revision counter by one; all changes made by one transaction share that revision,
 * as in etcd. Backends: SQLite (embedded, one coordinator) and etcd (replicated).
 * The contract suite in storeContract.ts runs against every backend.
 */

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

/** The store could not be opened or used; the message says what to do. */
export class StoreError extends Error {
  constructor(
    message: string,
    readonly kind: "locked" | "corrupt" | "unavailable" | "closed" | "leaseNotFound" | "invalid",
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "StoreError";
  }
}

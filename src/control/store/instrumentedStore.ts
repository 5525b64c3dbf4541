import { spanKind, withChildSpan } from "../../observe/tracing.js";
import type {
  KeyValue,
  Lease,
  RangeOptions,
  RangeResult,
  Store,
  TxnRequest,
  TxnResult,
  Watch,
  WatchHandlers,
  WatchOptions,
} from "./store.js";

/** The two metric handles the decorator needs (see src/observe/metrics.ts). */
export interface StoreMetrics {
  storeOperationDuration: { observe(labels: { operation: string }, seconds: number): void };
  storeOperationErrors: { inc(labels: { operation: string }): void };
}

/**
 * A Store that times every call of the store it wraps, by operation, and counts the
 * ones that fail; behaviour is otherwise the inner store's. Watches are long-lived and
 * not timed; close is passed through. While tracing is on, a call made inside a span
 * (an API request, a controller pass) is a child span `store.<operation>` of it.
 */
export class InstrumentedStore implements Store {
  constructor(
    private readonly inner: Store,
    private readonly metrics: StoreMetrics,
  ) {}

  get backend(): Store["backend"] {
    return this.inner.backend;
  }

  get(key: string): Promise<KeyValue | undefined> {
    return this.time("get", () => this.inner.get(key), key);
  }

  range(prefix: string, options?: RangeOptions): Promise<RangeResult> {
    return this.time("range", () => this.inner.range(prefix, options), prefix);
  }

  put(key: string, value: string, options?: { lease?: number }): Promise<number> {
    return this.time("put", () => this.inner.put(key, value, options), key);
  }

  delete(key: string): Promise<number> {
    return this.time("delete", () => this.inner.delete(key), key);
  }

  txn(request: TxnRequest): Promise<TxnResult> {
    return this.time("txn", () => this.inner.txn(request), txnCollection(request), {
      "db.operation.batch.size": request.success.length,
    });
  }

  watch(prefix: string, options: WatchOptions, handlers: WatchHandlers): Watch {
    return this.inner.watch(prefix, options, handlers);
  }

  currentRevision(): Promise<number> {
    return this.time("currentRevision", () => this.inner.currentRevision());
  }

  compactedRevision(): Promise<number> {
    return this.time("compactedRevision", () => this.inner.compactedRevision());
  }

  compact(revision: number): Promise<void> {
    return this.time("compact", () => this.inner.compact(revision));
  }

  grantLease(ttlMs: number): Promise<Lease> {
    return this.time("grantLease", () => this.inner.grantLease(ttlMs));
  }

  keepAlive(leaseId: number): Promise<void> {
    return this.time("keepAlive", () => this.inner.keepAlive(leaseId));
  }

  revokeLease(leaseId: number): Promise<void> {
    return this.time("revokeLease", () => this.inner.revokeLease(leaseId));
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private time<T>(
    operation: string,
    call: () => Promise<T>,
    key?: string,
    extra?: Record<string, number>,
  ): Promise<T> {
    return withChildSpan(
      `store.${operation}`,
      () => ({
        "db.system.name": this.inner.backend,
        "db.operation.name": operation,
        ...(key !== undefined ? { "db.collection.name": collectionOf(key) } : {}),
        ...extra,
      }),
      () => this.measure(operation, call),
      spanKind.client,
    );
  }

  private async measure<T>(operation: string, call: () => Promise<T>): Promise<T> {
    const started = process.hrtime.bigint();
    try {
      return await call();
    } catch (error) {
      this.metrics.storeOperationErrors.inc({ operation });
      throw error;
    } finally {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      this.metrics.storeOperationDuration.observe({ operation }, seconds);
    }
  }
}

/** "/replicas/default/web/web-1" → "replicas": bounded, and names no object. */
function collectionOf(key: string): string {
  return key.split("/")[1] ?? "";
}

/** The one collection a transaction touches, if it touches only one (a key in it). */
function txnCollection(request: TxnRequest): string | undefined {
  const keys = [...request.compare, ...request.success, ...(request.failure ?? [])].map((item) =>
    "key" in item ? item.key : item.prefix,
  );
  const first = keys[0];
  if (first === undefined) return undefined;
  const collection = collectionOf(first);
  return keys.every((key) => collectionOf(key) === collection) ? first : undefined;
}

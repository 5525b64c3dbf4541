import { CloudlessError } from "../../api/errors.js";
import type {
  Compare,
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
} from "../store/store.js";
import { leaderKey } from "./leaderElection.js";

/**
 * The store as the leader's controllers see it: every write carries the leadership
 * fence (a compare on the /leader key this coordinator created), so a leader that was
 * paused or cut off past its lease cannot overwrite its successor's decisions. Without
 * a fence — before the first election or after a demotion — every write is refused.
 *
 * A fenced txn that fails is checked once more: if the fence no longer holds the
 * caller gets NotLeader (an exception, it must stop), otherwise the ordinary
 * `succeeded: false` of its own compares (it retries as usual).
 */
export class FencedStore implements Store {
  private fence: Compare | undefined;

  constructor(private readonly inner: Store) {}

  get backend(): Store["backend"] {
    return this.inner.backend;
  }

  /** Set on election, cleared on demotion. */
  setFence(fence: Compare | undefined): void {
    this.fence = fence;
  }

  get fenced(): boolean {
    return this.fence !== undefined;
  }

  get(key: string): Promise<KeyValue | undefined> {
    return this.inner.get(key);
  }

  range(prefix: string, options?: RangeOptions): Promise<RangeResult> {
    return this.inner.range(prefix, options);
  }

  async put(key: string, value: string, options?: { lease?: number }): Promise<number> {
    const result = await this.txn({
      compare: [],
      success: [{ type: "put", key, value, ...(options?.lease ? { lease: options.lease } : {}) }],
    });
    return result.revision;
  }

  async delete(key: string): Promise<number> {
    const result = await this.txn({ compare: [], success: [{ type: "delete", key }] });
    const deleted = result.results[0];
    return deleted?.type === "delete" ? deleted.deleted : 0;
  }

  async txn(request: TxnRequest): Promise<TxnResult> {
    const fence = this.requireFence();
    const result = await this.inner.txn({ ...request, compare: [...request.compare, fence] });
    if (result.succeeded || (await this.fenceHolds(fence))) return result;
    if (this.fence === fence) this.fence = undefined;
    throw notLeader();
  }

  watch(prefix: string, options: WatchOptions, handlers: WatchHandlers): Watch {
    return this.inner.watch(prefix, options, handlers);
  }

  currentRevision(): Promise<number> {
    return this.inner.currentRevision();
  }

  compactedRevision(): Promise<number> {
    return this.inner.compactedRevision();
  }

  compact(revision: number): Promise<void> {
    this.requireFence();
    return this.inner.compact(revision);
  }

  grantLease(ttlMs: number): Promise<Lease> {
    return this.inner.grantLease(ttlMs);
  }

  keepAlive(leaseId: number): Promise<void> {
    return this.inner.keepAlive(leaseId);
  }

  revokeLease(leaseId: number): Promise<void> {
    return this.inner.revokeLease(leaseId);
  }

  /** The inner store belongs to the coordinator; closing a view of it does nothing. */
  async close(): Promise<void> {}

  private requireFence(): Compare {
    if (!this.fence) throw notLeader();
    return this.fence;
  }

  private async fenceHolds(fence: Compare): Promise<boolean> {
    if (fence.target !== "createRevision") return false;
    const current = await this.inner.get(leaderKey);
    return current?.createRevision === fence.createRevision;
  }
}

function notLeader(): CloudlessError {
  return new CloudlessError(
    "Unavailable",
    "this coordinator is no longer the leader; its write was refused",
  );
}

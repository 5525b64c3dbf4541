import type { Compare, Op, Store } from "./store.js";

/**
 * Compares and operations per transaction the coordinator builds: etcd refuses more than
 * 128 of either (its --max-txn-ops default), and the leader fence adds one compare.
 */
export const maxTxnOps = 100;

/**
 * The controller's transactions on SQLite, which has no such limit: each commit costs an
 * fsync and each chunk a turn of the event loop (commitPacked yields between chunks),
 * under which the rest of the coordinator runs, so fewer, larger chunks commit a
 * failover's plan sooner. A 500-write chunk blocks the event loop for about 15 ms on the
 * benchmark machine (ADR 0023). Report writes keep chunks of 100: one stale compare fails
 * its whole chunk, and reports race with the controller's writes more often than plans.
 */
export const maxSqliteTxnOps = 500;

/** Writes per transaction for the store's backend. */
export function txnOpsFor(store: Pick<Store, "backend">): number {
  return store.backend === "sqlite" ? maxSqliteTxnOps : maxTxnOps;
}

/** One write: its operation, the compare that guards it (if any) and what it stands for. */
export interface TxnItem<T> {
  op: Op;
  compare?: Compare;
  tag: T;
}

/**
 * Packs groups of writes into transactions of at most `maxOps` operations and compares.
 * A group that fits stays in one transaction (so its writes commit together); a larger
 * group is split. Every item keeps its own compare, so each transaction is safe on its
 * own: one that fails leaves its items undone for the caller's next attempt.
 */
export function packTxns<T>(groups: readonly TxnItem<T>[][], maxOps = maxTxnOps): TxnItem<T>[][] {
  const chunks: TxnItem<T>[][] = [];
  let current: TxnItem<T>[] = [];
  let compares = 0;
  const flush = () => {
    if (current.length > 0) chunks.push(current);
    current = [];
    compares = 0;
  };
  for (const group of groups) {
    const groupCompares = group.reduce((n, item) => n + (item.compare ? 1 : 0), 0);
    if (current.length + group.length > maxOps || compares + groupCompares > maxOps) flush();
    if (group.length <= maxOps) {
      current.push(...group);
      compares += groupCompares;
      continue;
    }
    for (const item of group) {
      if (current.length + 1 > maxOps || compares + (item.compare ? 1 : 0) > maxOps) flush();
      current.push(item);
      if (item.compare) compares++;
    }
  }
  flush();
  return chunks;
}

export interface ChunkOutcome<T> {
  items: TxnItem<T>[];
  succeeded: boolean;
  revision: number;
}

/**
 * Lets pending I/O run. A SQLite commit is synchronous, and awaiting one only yields to
 * microtasks: a loop of commits would hold heartbeats (and the leader's lease renewal)
 * until it ends. Long write loops call this between commits.
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Commits packed transactions one after another, letting I/O in between; a failed
 * compare fails only its chunk.
 */
export async function commitPacked<T>(
  store: Store,
  groups: readonly TxnItem<T>[][],
  maxOps = maxTxnOps,
): Promise<ChunkOutcome<T>[]> {
  const outcomes: ChunkOutcome<T>[] = [];
  for (const items of packTxns(groups, maxOps)) {
    if (outcomes.length > 0) await yieldToEventLoop();
    const compare: Compare[] = [];
    for (const item of items) if (item.compare) compare.push(item.compare);
    const result = await store.txn({ compare, success: items.map((item) => item.op) });
    outcomes.push({ items, succeeded: result.succeeded, revision: result.revision });
  }
  return outcomes;
}

/**
 * Deletes keys in transactions of txnOpsFor(store) operations, letting I/O in between;
 * returns how many existed. For clean-ups that may find thousands of keys at once: one
 * commit (an fsync on SQLite) per key held the event loop for seconds (ADR 0025).
 */
export async function deleteInChunks(store: Store, keys: readonly string[]): Promise<number> {
  const perTxn = txnOpsFor(store);
  let removed = 0;
  for (let start = 0; start < keys.length; start += perTxn) {
    if (start > 0) await yieldToEventLoop();
    const result = await store.txn({
      compare: [],
      success: keys.slice(start, start + perTxn).map((key) => ({ type: "delete", key })),
    });
    for (const outcome of result.results) {
      if (outcome.type === "delete") removed += outcome.deleted;
    }
  }
  return removed;
}

import { CloudlessError } from "../../api/errors.js";
import { type Clock, systemClock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import { type Rng, systemRng } from "../../lib/rng.js";
import { compareAndSwap } from "../store/compareAndSwap.js";
import type { Compare, Op, Store } from "../store/store.js";
import { type NodeRecord, nodeKey, nodeKeyPrefix, nodeRecordSchema } from "./nodeRecord.js";

/**
 * Node records in the store, with optimistic concurrency: every update reads the
 * record and its revision, applies a pure change, and writes only if nobody wrote
 * in between (compareAndSwap: a bounded number of attempts with jittered back-off).
 */
export class NodeRegistry {
  private readonly retry: { clock: Clock; rng: Rng };

  /** `clock` and `rng` pace the retries of a lost race (the system's by default). */
  constructor(
    private readonly store: Store,
    retry: { clock?: Clock; rng?: Rng } = {},
  ) {
    this.retry = { clock: retry.clock ?? systemClock, rng: retry.rng ?? systemRng };
  }

  async get(name: string): Promise<NodeRecord | undefined> {
    const kv = await this.store.get(nodeKey(name));
    return kv ? decodeRecord(nodeRecordSchema, kv.key, kv.value) : undefined;
  }

  async mustGet(name: string): Promise<NodeRecord> {
    const record = await this.get(name);
    if (!record) {
      throw CloudlessError.notFound(
        `node "${name}" not found; run \`cloudless node list\` to see the nodes`,
      );
    }
    return record;
  }

  async list(): Promise<NodeRecord[]> {
    const result = await this.store.range(nodeKeyPrefix);
    return result.kvs.map((kv) => decodeRecord(nodeRecordSchema, kv.key, kv.value));
  }

  /**
   * Applies `change` to the current record and writes it if it changed. Returns the
   * record as written (or as found, if the change was a no-op).
   */
  async update(
    name: string,
    change: (record: NodeRecord) => NodeRecord | undefined,
  ): Promise<NodeRecord> {
    return compareAndSwap(
      this.store,
      nodeKey(name),
      (kv) => {
        if (!kv) {
          throw CloudlessError.notFound(
            `node "${name}" not found; run \`cloudless node list\` to see the nodes`,
          );
        }
        const current = decodeRecord(nodeRecordSchema, kv.key, kv.value);
        const next = change(structuredClone(current));
        if (!next) return { result: current };
        const value = JSON.stringify(next);
        if (value === kv.value) return { result: current };
        return { write: [{ type: "put", key: kv.key, value }], result: next };
      },
      {
        ...this.retry,
        maxAttempts: 8,
        conflictMessage: `node "${name}" is being changed concurrently; try again`,
      },
    );
  }

  /**
   * Applies a change per node with as few commits as possible: reads and writes up to
   * `maxPerTxn` nodes per transaction, each write guarded by the revision it read (etcd
   * caps a txn at 128 operations; the leader fence adds one compare). Nodes whose write
   * lost a race are retried one by one through update(). Resolves with each node's record
   * as written, or the error (e.g. not found) for that node alone.
   */
  async updateMany(
    changes: ReadonlyMap<string, (record: NodeRecord) => NodeRecord | undefined>,
    maxPerTxn = 100,
  ): Promise<Map<string, NodeRecord | Error>> {
    const results = new Map<string, NodeRecord | Error>();
    const names = [...changes.keys()];
    for (let start = 0; start < names.length; start += maxPerTxn) {
      // Commits are synchronous: let heartbeats in between chunks.
      if (start > 0) await new Promise((resolve) => setImmediate(resolve));
      const chunk = names.slice(start, start + maxPerTxn);
      const read = await this.store.txn({
        compare: [],
        success: chunk.map((name) => ({ type: "get" as const, key: nodeKey(name) })),
      });
      const compare: Compare[] = [];
      const success: Op[] = [];
      const written = new Map<string, NodeRecord>();
      chunk.forEach((name, index) => {
        const result = read.results[index];
        const kv = result?.type === "get" ? result.kv : undefined;
        if (!kv) {
          results.set(
            name,
            CloudlessError.notFound(
              `node "${name}" not found; run \`cloudless node list\` to see the nodes`,
            ),
          );
          return;
        }
        const current = decodeRecord(nodeRecordSchema, kv.key, kv.value);
        const next = changes.get(name)?.(structuredClone(current));
        const value = next ? JSON.stringify(next) : kv.value;
        if (!next || value === kv.value) {
          results.set(name, current);
          return;
        }
        compare.push({ key: kv.key, target: "modRevision", op: "==", modRevision: kv.modRevision });
        success.push({ type: "put", key: kv.key, value });
        written.set(name, next);
      });
      if (success.length === 0) continue;
      const result = await this.store.txn({ compare, success });
      for (const [name, next] of written) {
        if (result.succeeded) {
          results.set(name, next);
          continue;
        }
        const change = changes.get(name);
        if (!change) continue;
        results.set(
          name,
          await this.update(name, change).catch((error: unknown) =>
            error instanceof Error ? error : new Error(String(error)),
          ),
        );
      }
    }
    return results;
  }

  async delete(name: string): Promise<void> {
    const deleted = await this.store.delete(nodeKey(name));
    if (deleted === 0) {
      throw CloudlessError.notFound(
        `node "${name}" not found; run \`cloudless node list\` to see the nodes`,
      );
    }
  }
}

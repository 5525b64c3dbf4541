import { CloudlessError } from "../../lib/errors.js";
import type { Store } from "../store/store.js";
import { type NodeRecord, nodeKey, nodeKeyPrefix } from "./nodeRecord.js";

/**
 * Node records in the store, with optimistic concurrency: every update reads the
 * record and its revision, applies a pure change, and writes only if nobody wrote
 * in between (retrying a bounded number of times).
 */
export class NodeRegistry {
  constructor(private readonly store: Store) {}

  async get(name: string): Promise<NodeRecord | undefined> {
    const kv = await this.store.get(nodeKey(name));
    return kv ? (JSON.parse(kv.value) as NodeRecord) : undefined;
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
    return result.kvs.map((kv) => JSON.parse(kv.value) as NodeRecord);
  }

  /**
   * Applies `change` to the current record and writes it if it changed. Returns the
   * record as written (or as found, if the change was a no-op).
   */
  async update(
    name: string,
    change: (record: NodeRecord) => NodeRecord | undefined,
  ): Promise<NodeRecord> {
    const maxAttempts = 8;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      const kv = await this.store.get(nodeKey(name));
      if (!kv) {
        throw CloudlessError.notFound(
          `node "${name}" not found; run \`cloudless node list\` to see the nodes`,
        );
      }
      const current = JSON.parse(kv.value) as NodeRecord;
      const next = change(structuredClone(current));
      if (!next) return current;
      const value = JSON.stringify(next);
      if (value === kv.value) return current;
      const result = await this.store.txn({
        compare: [{ key: kv.key, target: "modRevision", op: "==", modRevision: kv.modRevision }],
        success: [{ type: "put", key: kv.key, value }],
      });
      if (result.succeeded) return next;
    }
    throw CloudlessError.conflict(`node "${name}" is being changed concurrently; try again`);
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

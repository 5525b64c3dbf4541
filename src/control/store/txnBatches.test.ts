import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { maxSqliteTxnOps, maxTxnOps, packTxns, type TxnItem, txnOpsFor } from "./txnBatches.js";

function item(key: string, guarded: boolean): TxnItem<string> {
  return {
    op: { type: "put", key, value: "v" },
    ...(guarded ? { compare: { key, target: "modRevision", op: "==", modRevision: 1 } } : {}),
    tag: key,
  };
}

describe("packTxns", () => {
  it("keeps every item once, in order, within the operation and compare limits", () => {
    fc.assert(
      fc.property(
        fc.array(fc.array(fc.boolean(), { maxLength: 250 }), { maxLength: 20 }),
        fc.integer({ min: 1, max: 120 }),
        (shape, maxOps) => {
          let n = 0;
          const groups = shape.map((group) => group.map((guarded) => item(`k${n++}`, guarded)));
          const chunks = packTxns(groups, maxOps);
          expect(chunks.flat().map((i) => i.tag)).toEqual(groups.flat().map((i) => i.tag));
          for (const chunk of chunks) {
            expect(chunk.length).toBeGreaterThan(0);
            expect(chunk.length).toBeLessThanOrEqual(maxOps);
            expect(chunk.filter((i) => i.compare).length).toBeLessThanOrEqual(maxOps);
          }
          // A group that fits is never split across transactions.
          for (const group of groups) {
            if (group.length === 0 || group.length > maxOps) continue;
            const holding = chunks.filter((chunk) => chunk.some((i) => group.includes(i)));
            expect(holding).toHaveLength(1);
          }
        },
      ),
    );
  });
});

describe("txnOpsFor", () => {
  it("REQ-031 plans on SQLite commit in chunks of 500, on etcd within its 128-operation limit", () => {
    expect(txnOpsFor({ backend: "sqlite" })).toBe(maxSqliteTxnOps);
    expect(maxSqliteTxnOps).toBe(500);
    expect(txnOpsFor({ backend: "etcd" })).toBe(maxTxnOps);
    expect(maxTxnOps).toBeLessThan(128);
  });
});

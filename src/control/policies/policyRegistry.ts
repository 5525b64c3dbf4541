import { createHash } from "node:crypto";
import { z } from "zod";
import { CloudlessError } from "../../api/errors.js";
import { PolicySet, type PolicyVerdict } from "../../api/policy/evaluate.js";
import { workloadFacts } from "../../api/policy/facts.js";
import { parsePolicyDocument } from "../../api/policy/parse.js";
import { MAX_POLICIES, type Policy } from "../../api/policy/policy.js";
import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import type { Store } from "../store/store.js";

/** A stored policy: the document as written, and who changed it when. */
export interface PolicyRecord {
  name: string;
  document: string;
  updatedAtMs: number;
  updatedBy: string;
}

const policyRecordSchema: z.ZodType<PolicyRecord> = z.looseObject({
  name: z.string().min(1),
  document: z.string(),
  updatedAtMs: z.number(),
  updatedBy: z.string(),
});

export const policyKeyPrefix = "/policies/";

/**
 * Policies under /policies/<name>. Every workload apply reads them all (at most
 * MAX_POLICIES); the compiled set is kept while the stored documents are the same.
 */
export class PolicyRegistry {
  private compiled?: { fingerprint: string; set: PolicySet };

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  async list(): Promise<PolicyRecord[]> {
    const result = await this.store.range(policyKeyPrefix, { limit: MAX_POLICIES + 1 });
    return result.kvs.map((kv) => decodeRecord(policyRecordSchema, kv.key, kv.value));
  }

  async get(name: string): Promise<PolicyRecord> {
    const kv = /^[a-z0-9-]{1,63}$/.test(name)
      ? await this.store.get(policyKeyPrefix + name)
      : undefined;
    if (!kv) {
      throw CloudlessError.notFound(
        `policy "${name}" not found; run \`cloudless policy list\` to see policies`,
      );
    }
    return decodeRecord(policyRecordSchema, kv.key, kv.value);
  }

  /** Stores a valid document; "unchanged" when it is the same text. */
  async apply(
    text: string,
    actor: string,
    dryRun: boolean,
  ): Promise<{
    record: PolicyRecord;
    policy: Policy;
    action: "created" | "updated" | "unchanged";
  }> {
    const policy = parsePolicyDocument(text);
    const name = policy.metadata.name;
    const key = policyKeyPrefix + name;
    const existing = await this.store.get(key);
    if (existing) {
      const current = decodeRecord(policyRecordSchema, existing.key, existing.value);
      if (current.document === text) return { record: current, policy, action: "unchanged" };
    } else if ((await this.list()).length >= MAX_POLICIES) {
      throw CloudlessError.failedPrecondition(
        `this cluster has ${MAX_POLICIES} policies (MAX_POLICIES); merge rules into fewer policies`,
      );
    }
    const record: PolicyRecord = {
      name,
      document: text,
      updatedAtMs: this.clock.nowMs(),
      updatedBy: actor,
    };
    const action = existing ? "updated" : "created";
    if (dryRun) return { record, policy, action };
    const result = await this.store.txn({
      compare: [{ key, target: "modRevision", op: "==", modRevision: existing?.modRevision ?? 0 }],
      success: [{ type: "put", key, value: JSON.stringify(record) }],
    });
    if (!result.succeeded) {
      throw CloudlessError.conflict(`policy "${name}" changed meanwhile; apply it again`);
    }
    return { record, policy, action };
  }

  async delete(name: string): Promise<void> {
    await this.get(name);
    await this.store.delete(policyKeyPrefix + name);
  }

  /** Every stored policy, compiled (recompiled only when a document changed). */
  async policySet(): Promise<PolicySet> {
    const records = await this.list();
    const hash = createHash("sha256");
    for (const record of records) hash.update(`${record.name}\u0000${record.document}\u0001`);
    const fingerprint = hash.digest("hex");
    if (this.compiled?.fingerprint === fingerprint) return this.compiled.set;
    const policies = records.map((record) => parsePolicyDocument(record.document));
    const set = new PolicySet(policies);
    this.compiled = { fingerprint, set };
    return set;
  }

  /** The verdict on a workload spec: what `policy test` shows and apply enforces. */
  async judge(doc: WorkloadSpecDocument): Promise<PolicyVerdict> {
    return (await this.policySet()).evaluateWorkload(workloadFacts(doc));
  }

  /** Refuses a workload a policy denies, with the policy and rule named. */
  async admit(doc: WorkloadSpecDocument): Promise<void> {
    const verdict = await this.judge(doc);
    if (verdict.denied) {
      throw CloudlessError.permissionDenied(
        `workload ${doc.metadata.namespace}/${doc.metadata.name} is ${verdict.denied.reason}; see \`cloudless policy get ${verdict.denied.policy}\``,
      );
    }
  }
}

/**
 * Which node may read which secret (REQ-063): the node a replica is assigned to may read
 * the secrets that replica's spec revision references, and nothing else. Checked against
 * the store on every read, so a replica moved away or stopped loses access at once.
 */
import { z } from "zod";
import { decodeRecord } from "../../lib/recordCodec.js";
import {
  type ReplicaRecord,
  replicaKey,
  replicaRecordSchema,
  revisionKey,
  workloadRevisionRecordSchema,
} from "../controllers/records.js";
import type { Store } from "../store/store.js";

/** The only part of an applied document (a revision's `spec` field) this check reads. */
const secretRefsSchema = z.looseObject({
  spec: z.looseObject({
    secrets: z.array(z.looseObject({ name: z.string() })).optional(),
  }),
});

export type ReplicaAccess = { ok: true; replica: ReplicaRecord } | { ok: false; reason: string };

/** The decision, given what the store holds (pure: tested without a store). */
export function decideReplicaAccess(input: {
  node: string;
  secret: string;
  replica: ReplicaRecord | undefined;
  /** The replica's revision's applied document (apiVersion, kind, metadata, spec). */
  document: unknown;
}): ReplicaAccess {
  const { node, secret, replica } = input;
  if (!replica) return { ok: false, reason: "no such replica" };
  if (replica.node !== node) {
    return { ok: false, reason: `the replica is not assigned to node ${node}` };
  }
  if (replica.desired !== "Running") return { ok: false, reason: "the replica is being stopped" };
  const parsed = secretRefsSchema.safeParse(input.document);
  const names = parsed.success ? (parsed.data.spec.secrets ?? []).map((ref) => ref.name) : [];
  if (!names.includes(secret)) {
    return { ok: false, reason: `the replica's spec does not reference secret ${secret}` };
  }
  return { ok: true, replica };
}

/** Reads the replica and its spec revision from the store, then decides. */
export async function checkReplicaAccess(
  store: Store,
  request: { node: string; namespace: string; workload: string; replicaId: string; secret: string },
): Promise<ReplicaAccess> {
  const kv = await store.get(replicaKey(request.namespace, request.workload, request.replicaId));
  const replica = kv ? decodeRecord(replicaRecordSchema, kv.key, kv.value) : undefined;
  let document: unknown;
  if (replica && replica.node === request.node) {
    const revision = await store.get(
      revisionKey(replica.namespace, replica.workload, replica.revision),
    );
    document = revision
      ? decodeRecord(workloadRevisionRecordSchema, revision.key, revision.value).spec
      : undefined;
  }
  return decideReplicaAccess({ node: request.node, secret: request.secret, replica, document });
}

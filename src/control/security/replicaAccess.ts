/**
 * Which node may read which secret or config (REQ-063, ADR 0056): the node a replica is
 * assigned to may read the secrets and configs that replica's spec revision references,
 * and nothing else. Checked against the store on every read, so a replica moved away or
 * stopped loses access at once. One rule for both kinds: a config is not secret, but a
 * node should see no more of the cluster than its replicas need.
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

/** The kinds of object a replica's spec references by name, and where: `spec.<kind>s`. */
export type ReplicaObjectKind = "secret" | "config";

const refsSchema = z.array(z.looseObject({ name: z.string() })).optional();

/** The only part of an applied document (a revision's `spec` field) this check reads. */
const objectRefsSchema = z.looseObject({
  spec: z.looseObject({ secrets: refsSchema, configs: refsSchema }),
});

/** What a node asks for: a secret or config by name. */
export interface ReplicaObject {
  kind: ReplicaObjectKind;
  name: string;
}

export type ReplicaAccess = { ok: true; replica: ReplicaRecord } | { ok: false; reason: string };

/** The names of a kind a revision's applied document references (none if unreadable). */
export function referencedNames(document: unknown, kind: ReplicaObjectKind): string[] {
  const parsed = objectRefsSchema.safeParse(document);
  if (!parsed.success) return [];
  const refs = kind === "secret" ? parsed.data.spec.secrets : parsed.data.spec.configs;
  return (refs ?? []).map((ref) => ref.name);
}

/** Whether a replica is assigned to `node` and meant to run (pure). */
export function decideReplicaAssignment(
  node: string,
  replica: ReplicaRecord | undefined,
): ReplicaAccess {
  if (!replica) return { ok: false, reason: "no such replica" };
  if (replica.node !== node) {
    return { ok: false, reason: `the replica is not assigned to node ${node}` };
  }
  if (replica.desired !== "Running") return { ok: false, reason: "the replica is being stopped" };
  return { ok: true, replica };
}

/** Reads a replica from the store: may `node` get a token for it (ADR 0058)? */
export async function checkReplicaAssignment(
  store: Store,
  request: { node: string; namespace: string; workload: string; replicaId: string },
): Promise<ReplicaAccess> {
  const kv = await store.get(replicaKey(request.namespace, request.workload, request.replicaId));
  const replica = kv ? decodeRecord(replicaRecordSchema, kv.key, kv.value) : undefined;
  return decideReplicaAssignment(request.node, replica);
}

/** The decision, given what the store holds (pure: tested without a store). */
export function decideReplicaAccess(input: {
  node: string;
  object: ReplicaObject;
  replica: ReplicaRecord | undefined;
  /** The replica's revision's applied document (apiVersion, kind, metadata, spec). */
  document: unknown;
}): ReplicaAccess {
  const { node, object } = input;
  const assigned = decideReplicaAssignment(node, input.replica);
  if (!assigned.ok) return assigned;
  const { replica } = assigned;
  if (!referencedNames(input.document, object.kind).includes(object.name)) {
    return {
      ok: false,
      reason: `the replica's spec does not reference ${object.kind} ${object.name}`,
    };
  }
  return { ok: true, replica };
}

/** Reads the replica and its spec revision from the store, then decides. */
export async function checkReplicaAccess(
  store: Store,
  request: {
    node: string;
    namespace: string;
    workload: string;
    replicaId: string;
    object: ReplicaObject;
  },
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
  return decideReplicaAccess({ node: request.node, object: request.object, replica, document });
}

/**
 * The SecretService API (REQ-063): create, update, get, list, delete, rotate-key, verify.
 * Admin only today (the roles work adds operators granted `secrets.*`); no method returns a
 * value. Errors and events name secrets and keys, never values (NFR-S1).
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import {
  type SecretInfo,
  SecretInfoSchema,
  type SecretService,
} from "../../api/gen/cloudless/v1/secret_pb.js";
import { validateSecretName } from "../../api/secrets.js";
import { actorName, requireAdmin, requireNode } from "../api/context.js";
import type { EventLog } from "../events/eventLog.js";
import { checkReplicaAccess, checkReplicaAssignment } from "../security/replicaAccess.js";
import type { ReplicaTokenKeys } from "../security/replicaTokens.js";
import type { Store } from "../store/store.js";
import type { KeyRing } from "./keyRing.js";
import type { SecretRecord, SecretRegistry } from "./secretRegistry.js";

export interface SecretServiceDeps {
  secrets: SecretRegistry;
  keyRing: KeyRing;
  store: Store;
  events: EventLog;
  replicaTokens: ReplicaTokenKeys;
}

/** Defaulted like workloads: a secret without a namespace is in "default". */
function namespaceOf(request: { namespace: string }): string {
  return request.namespace === "" ? "default" : request.namespace;
}

export function secretToProto(record: SecretRecord): SecretInfo {
  return create(SecretInfoSchema, {
    namespace: record.namespace,
    name: record.name,
    version: BigInt(record.version),
    keys: record.keys.map((key) => ({ name: key.name, sizeBytes: BigInt(key.sizeBytes) })),
    createdAt: timestampFromMs(record.createdAtMs),
    updatedAt: timestampFromMs(record.updatedAtMs),
    createdBy: record.createdBy,
    updatedBy: record.updatedBy,
    kekId: record.envelope.kekId,
  });
}

function dataOf(request: { data: { [key: string]: Uint8Array } }): Map<string, Uint8Array> {
  return new Map(Object.entries(request.data));
}

/** Replica ids are generated, 10-20 characters; anything far longer is refused unread. */
const replicaIdCharsMax = 128;

/** A replica's namespace, workload and id, checked before any store read. */
function validateReplicaRef(request: { namespace: string; workload: string; replicaId: string }) {
  validateSecretName(request.namespace, request.workload);
  // Replica ids are short generated names; a long one is no replica of ours.
  if (request.replicaId.length === 0 || request.replicaId.length > replicaIdCharsMax) {
    throw CloudlessError.invalid(`replica_id must be 1 to ${replicaIdCharsMax} characters`);
  }
}

export function secretServiceImpl(deps: SecretServiceDeps): ServiceImpl<typeof SecretService> {
  const { secrets, events } = deps;
  return {
    async createSecret(request, context) {
      const actor = actorName(requireAdmin(context));
      const namespace = namespaceOf(request);
      const record = await secrets.create(namespace, request.name, dataOf(request), actor);
      await events.record({
        type: "SecretCreated",
        category: "security",
        subject: `secret/${namespace}/${record.name}`,
        reason: "Created",
        message: `secret created with keys ${record.keys.map((key) => key.name).join(", ")}`,
        actor,
      });
      return { secret: secretToProto(record) };
    },

    async updateSecret(request, context) {
      const actor = actorName(requireAdmin(context));
      const namespace = namespaceOf(request);
      const record = await secrets.update(namespace, request.name, dataOf(request), actor);
      await events.record({
        type: "SecretUpdated",
        category: "security",
        subject: `secret/${namespace}/${record.name}`,
        reason: "Updated",
        message: `secret updated to version ${record.version} with keys ${record.keys.map((key) => key.name).join(", ")}`,
        actor,
      });
      return { secret: secretToProto(record) };
    },

    async getSecret(request, context) {
      requireAdmin(context);
      return { secret: secretToProto(await secrets.get(namespaceOf(request), request.name)) };
    },

    async listSecrets(request, context) {
      requireAdmin(context);
      return { secrets: (await secrets.list(request.namespace)).map(secretToProto) };
    },

    async deleteSecret(request, context) {
      const actor = actorName(requireAdmin(context));
      const namespace = namespaceOf(request);
      await secrets.delete(namespace, request.name);
      await events.record({
        type: "SecretDeleted",
        category: "security",
        subject: `secret/${namespace}/${request.name}`,
        reason: "Deleted",
        message: "secret deleted",
        actor,
      });
      return {};
    },

    async rotateSecretsKey(request, context) {
      const actor = actorName(requireAdmin(context));
      const result = await secrets.rotateKey({ removeOld: request.removeOld });
      await events.record({
        type: "SecretsKeyRotated",
        category: "security",
        subject: `kek/${result.activeKekId}`,
        reason: "Rotated",
        message: `${result.rewrapped} of ${result.total} secrets re-wrapped with ${result.activeKekId}${result.removedKekIds.length > 0 ? `; removed ${result.removedKekIds.join(", ")}` : ""}`,
        actor,
      });
      return {
        activeKekId: result.activeKekId,
        createdKek: result.createdKek,
        total: result.total,
        rewrapped: result.rewrapped,
        alreadyCurrent: result.alreadyCurrent,
        removedKekIds: result.removedKekIds,
        keySource: deps.keyRing.describe(),
      };
    },

    async readReplicaSecret(request, context) {
      const node = requireNode(context).name;
      validateSecretName(request.namespace, request.name);
      validateReplicaRef(request);
      const subject = `secret/${request.namespace}/${request.name}`;
      const replica = `${request.namespace}/${request.workload}/${request.replicaId}`;
      const refuse = async (reason: "BadToken" | "NotAssigned", why: string): Promise<never> => {
        await events.record({
          type: "SecretAccessDenied",
          category: "security",
          subject,
          reason,
          message: `node ${node} asked for secret ${request.name} for replica ${replica}: ${why}`,
          actor: `node/${node}`,
        });
        throw CloudlessError.permissionDenied(
          `node ${node} may not read secret ${request.namespace}/${request.name} for replica ${replica}: ${why}`,
        );
      };
      // The replica's token first (ADR 0058), then the store (defence in depth): a token
      // outlives neither a move of the replica nor its stop.
      const token = await deps.replicaTokens.verify(request.token, node, request);
      if (!token.ok) return await refuse("BadToken", token.reason);
      const access = await checkReplicaAccess(deps.store, {
        node,
        namespace: request.namespace,
        workload: request.workload,
        replicaId: request.replicaId,
        object: { kind: "secret", name: request.name },
      });
      if (!access.ok) return await refuse("NotAssigned", access.reason);
      const { version, values } = await secrets.readValues(request.namespace, request.name);
      return { version: BigInt(version), data: Object.fromEntries(values) };
    },

    async issueReplicaToken(request, context) {
      const node = requireNode(context).name;
      validateReplicaRef(request);
      const replica = `${request.namespace}/${request.workload}/${request.replicaId}`;
      const access = await checkReplicaAssignment(deps.store, {
        node,
        namespace: request.namespace,
        workload: request.workload,
        replicaId: request.replicaId,
      });
      if (!access.ok) {
        await events.record({
          type: "ReplicaTokenDenied",
          category: "security",
          subject: `replica/${replica}`,
          reason: "NotAssigned",
          message: `node ${node} asked for a token for replica ${replica}: ${access.reason}`,
          actor: `node/${node}`,
        });
        throw CloudlessError.permissionDenied(
          `node ${node} may not have a token for replica ${replica}: ${access.reason}`,
        );
      }
      const issued = await deps.replicaTokens.issue(node, request);
      return { token: issued.token, expiresAt: timestampFromMs(issued.expiresAtMs) };
    },

    async verifySecrets(request, context) {
      requireAdmin(context);
      const namespace = request.name !== "" ? namespaceOf(request) : request.namespace;
      return await secrets.verify(namespace, request.name);
    },
  };
}

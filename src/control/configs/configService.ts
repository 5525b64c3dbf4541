/**
 * The ConfigService API (issue 15, ADR 0056): create, update, get (with values: configs
 * are not secret), list (metadata), delete, and ReadReplicaConfig for node agents. Who may
 * call what is the permission table's (security/permissions.ts); a node reads only the
 * configs its replicas reference (security/replicaAccess.ts).
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { validateConfigName } from "../../api/configs.js";
import { CloudlessError } from "../../api/errors.js";
import {
  type ConfigInfo,
  ConfigInfoSchema,
  type ConfigService,
} from "../../api/gen/cloudless/v1/config_pb.js";
import { actorName, requireAdmin, requireNode } from "../api/context.js";
import type { EventLog } from "../events/eventLog.js";
import { checkReplicaAccess } from "../security/replicaAccess.js";
import type { ReplicaTokenKeys } from "../security/replicaTokens.js";
import type { Store } from "../store/store.js";
import { type ConfigRecord, type ConfigRegistry, configValues } from "./configRegistry.js";

export interface ConfigServiceDeps {
  configs: ConfigRegistry;
  store: Store;
  events: EventLog;
  replicaTokens: ReplicaTokenKeys;
}

/** Defaulted like workloads: a config without a namespace is in "default". */
function namespaceOf(request: { namespace: string }): string {
  return request.namespace === "" ? "default" : request.namespace;
}

export function configToProto(record: ConfigRecord): ConfigInfo {
  return create(ConfigInfoSchema, {
    namespace: record.namespace,
    name: record.name,
    version: BigInt(record.version),
    keys: record.keys.map((key) => ({ name: key.name, sizeBytes: BigInt(key.sizeBytes) })),
    createdAt: timestampFromMs(record.createdAtMs),
    updatedAt: timestampFromMs(record.updatedAtMs),
    createdBy: record.createdBy,
    updatedBy: record.updatedBy,
  });
}

function dataOf(request: { data: { [key: string]: Uint8Array } }): Map<string, Uint8Array> {
  return new Map(Object.entries(request.data));
}

function keyList(record: ConfigRecord): string {
  return record.keys.map((key) => key.name).join(", ");
}

/** Replica ids are generated, 10-20 characters; anything far longer is refused unread. */
const replicaIdCharsMax = 128;

export function configServiceImpl(deps: ConfigServiceDeps): ServiceImpl<typeof ConfigService> {
  const { configs, events } = deps;
  return {
    // requireAdmin lets people and programs through; their role was checked by the
    // authorization interceptor against the permission table. It refuses nodes.
    async createConfig(request, context) {
      const actor = actorName(requireAdmin(context));
      const namespace = namespaceOf(request);
      const record = await configs.create(namespace, request.name, dataOf(request), actor);
      await events.record({
        type: "ConfigCreated",
        category: "operations",
        subject: `config/${namespace}/${record.name}`,
        reason: "Created",
        message: `config created with keys ${keyList(record)}`,
        actor,
      });
      return { config: configToProto(record) };
    },

    async updateConfig(request, context) {
      const actor = actorName(requireAdmin(context));
      const namespace = namespaceOf(request);
      const record = await configs.update(namespace, request.name, dataOf(request), actor);
      await events.record({
        type: "ConfigUpdated",
        category: "operations",
        subject: `config/${namespace}/${record.name}`,
        reason: "Updated",
        message: `config updated to version ${record.version} with keys ${keyList(record)}`,
        actor,
      });
      return { config: configToProto(record) };
    },

    async getConfig(request, context) {
      requireAdmin(context);
      const record = await configs.get(namespaceOf(request), request.name);
      return { config: configToProto(record), data: Object.fromEntries(configValues(record)) };
    },

    async listConfigs(request, context) {
      requireAdmin(context);
      return { configs: (await configs.list(request.namespace)).map(configToProto) };
    },

    async deleteConfig(request, context) {
      const actor = actorName(requireAdmin(context));
      const namespace = namespaceOf(request);
      await configs.delete(namespace, request.name);
      await events.record({
        type: "ConfigDeleted",
        category: "operations",
        subject: `config/${namespace}/${request.name}`,
        reason: "Deleted",
        message: "config deleted; running replicas keep their files",
        actor,
      });
      return {};
    },

    async readReplicaConfig(request, context) {
      const node = requireNode(context).name;
      validateConfigName(request.namespace, request.name);
      validateConfigName(request.namespace, request.workload);
      // Replica ids are short generated names; a long one is no replica of ours.
      if (request.replicaId.length === 0 || request.replicaId.length > replicaIdCharsMax) {
        throw CloudlessError.invalid(`replica_id must be 1 to ${replicaIdCharsMax} characters`);
      }
      const replica = `${request.namespace}/${request.workload}/${request.replicaId}`;
      const refuse = async (reason: "BadToken" | "NotAssigned", why: string): Promise<never> => {
        await events.record({
          type: "ConfigAccessDenied",
          category: "security",
          subject: `config/${request.namespace}/${request.name}`,
          reason,
          message: `node ${node} asked for config ${request.name} for replica ${replica}: ${why}`,
          actor: `node/${node}`,
        });
        throw CloudlessError.permissionDenied(
          `node ${node} may not read config ${request.namespace}/${request.name} for replica ${replica}: ${why}`,
        );
      };
      // The replica's token first (ADR 0058), then the store (defence in depth).
      const token = await deps.replicaTokens.verify(request.token, node, request);
      if (!token.ok) return await refuse("BadToken", token.reason);
      const access = await checkReplicaAccess(deps.store, {
        node,
        namespace: request.namespace,
        workload: request.workload,
        replicaId: request.replicaId,
        object: { kind: "config", name: request.name },
      });
      if (!access.ok) return await refuse("NotAssigned", access.reason);
      const record = await configs.get(request.namespace, request.name);
      return {
        version: BigInt(record.version),
        data: Object.fromEntries(configValues(record)),
      };
    },
  };
}

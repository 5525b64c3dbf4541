/**
 * Configs in the store (issue 15, ADR 0056): one record per config under
 * /configs/<namespace>/<name>, holding its values (base64; configs are not secret), key
 * names, sizes, version and who changed it when. The non-secret sibling of
 * secrets/secretRegistry.ts: the same checks and record shape without the envelope.
 */
import { z } from "zod";
import { validateConfigData, validateConfigName } from "../../api/configs.js";
import { CloudlessError } from "../../api/errors.js";
import { limitRef, limits } from "../../api/limits.js";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import type { Store } from "../store/store.js";

export const configKeyPrefix = "/configs/";

export interface ConfigKeyInfo {
  name: string;
  sizeBytes: number;
}

export interface ConfigRecord {
  namespace: string;
  name: string;
  /** 1 at create, +1 per update; what onChange: restart compares (ADR 0056). */
  version: number;
  keys: ConfigKeyInfo[];
  /** Every key's value, base64. */
  data: Record<string, string>;
  createdAtMs: number;
  updatedAtMs: number;
  createdBy: string;
  updatedBy: string;
}

export const configRecordSchema: z.ZodType<ConfigRecord> = z.looseObject({
  namespace: z.string().min(1),
  name: z.string().min(1),
  version: z.number().int().positive(),
  keys: z.array(z.object({ name: z.string(), sizeBytes: z.number() })),
  data: z.record(z.string(), z.string()),
  createdAtMs: z.number(),
  updatedAtMs: z.number(),
  createdBy: z.string(),
  updatedBy: z.string(),
});

export function configStoreKey(namespace: string, name: string): string {
  return `${configKeyPrefix}${namespace}/${name}`;
}

/** The namespace and name of a config's store key; undefined for any other key. */
export function configOfKey(key: string): { namespace: string; name: string } | undefined {
  if (!key.startsWith(configKeyPrefix)) return undefined;
  const [namespace, name, ...rest] = key.slice(configKeyPrefix.length).split("/");
  if (!namespace || !name || rest.length > 0) return undefined;
  return { namespace, name };
}

/** A config's values as bytes. */
export function configValues(record: ConfigRecord): Map<string, Buffer> {
  return new Map(
    Object.entries(record.data).map(([key, b64]) => [key, Buffer.from(b64, "base64")]),
  );
}

export class ConfigRegistry {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  async create(
    namespace: string,
    name: string,
    data: ReadonlyMap<string, Uint8Array>,
    actor: string,
  ): Promise<ConfigRecord> {
    validateConfigName(namespace, name);
    validateConfigData(data);
    const existing = await this.store.range(`${configKeyPrefix}${namespace}/`, { keysOnly: true });
    if (existing.kvs.length >= limits.configsPerNamespace) {
      throw CloudlessError.failedPrecondition(
        `namespace ${namespace} already holds ${limits.configsPerNamespace} configs ${limitRef("configsPerNamespace")}; delete some first`,
      );
    }
    const now = this.clock.nowMs();
    const record = this.recordOf(
      { namespace, name, version: 1, createdAtMs: now, createdBy: actor },
      data,
      actor,
    );
    const key = configStoreKey(namespace, name);
    const result = await this.store.txn({
      compare: [{ key, target: "version", op: "==", version: 0 }],
      success: [{ type: "put", key, value: JSON.stringify(record) }],
    });
    if (!result.succeeded) {
      throw CloudlessError.alreadyExists(
        `config ${namespace}/${name} already exists; change it with \`cloudless config update\``,
      );
    }
    return record;
  }

  /** Replaces every key: the new version holds exactly these. */
  async update(
    namespace: string,
    name: string,
    data: ReadonlyMap<string, Uint8Array>,
    actor: string,
  ): Promise<ConfigRecord> {
    validateConfigName(namespace, name);
    validateConfigData(data);
    const key = configStoreKey(namespace, name);
    const kv = await this.store.get(key);
    if (!kv) throw this.notFound(namespace, name);
    const previous = decodeRecord(configRecordSchema, kv.key, kv.value);
    const record = this.recordOf(
      {
        namespace,
        name,
        version: previous.version + 1,
        createdAtMs: previous.createdAtMs,
        createdBy: previous.createdBy,
      },
      data,
      actor,
    );
    const result = await this.store.txn({
      compare: [{ key, target: "modRevision", op: "==", modRevision: kv.modRevision }],
      success: [{ type: "put", key, value: JSON.stringify(record) }],
    });
    if (!result.succeeded) {
      throw CloudlessError.conflict(
        `config ${namespace}/${name} changed while it was updated; run the update again`,
      );
    }
    return record;
  }

  async get(namespace: string, name: string): Promise<ConfigRecord> {
    validateConfigName(namespace, name);
    const kv = await this.store.get(configStoreKey(namespace, name));
    if (!kv) throw this.notFound(namespace, name);
    return decodeRecord(configRecordSchema, kv.key, kv.value);
  }

  /** Every config, or a namespace's; sorted by namespace and name (the store's key order). */
  async list(namespace = ""): Promise<ConfigRecord[]> {
    if (namespace !== "") validateConfigName(namespace, "x");
    const prefix = namespace === "" ? configKeyPrefix : `${configKeyPrefix}${namespace}/`;
    const result = await this.store.range(prefix);
    return result.kvs.map((kv) => decodeRecord(configRecordSchema, kv.key, kv.value));
  }

  async delete(namespace: string, name: string): Promise<void> {
    validateConfigName(namespace, name);
    if ((await this.store.delete(configStoreKey(namespace, name))) === 0) {
      throw this.notFound(namespace, name);
    }
  }

  private recordOf(
    base: Pick<ConfigRecord, "namespace" | "name" | "version" | "createdAtMs" | "createdBy">,
    data: ReadonlyMap<string, Uint8Array>,
    actor: string,
  ): ConfigRecord {
    const encoded: Record<string, string> = {};
    for (const [key, value] of data) encoded[key] = Buffer.from(value).toString("base64");
    return {
      ...base,
      keys: [...data].map(([key, value]) => ({ name: key, sizeBytes: value.byteLength })),
      data: encoded,
      updatedAtMs: this.clock.nowMs(),
      updatedBy: actor,
    };
  }

  private notFound(namespace: string, name: string): CloudlessError {
    return CloudlessError.notFound(
      `config ${namespace}/${name} not found; run \`cloudless config list\` to see configs`,
    );
  }
}

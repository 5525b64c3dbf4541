/**
 * Secrets in the store (REQ-063, ADR 0052): one record per secret under
 * /secrets/<namespace>/<name>, holding its metadata in the clear (key names, sizes, version,
 * times, KEK id) and its values only inside an envelope (envelope.ts). No method returns a
 * value to an API caller; `readValues` is for the coordinator itself (delivery to replicas).
 */
import { z } from "zod";
import { CloudlessError } from "../../api/errors.js";
import { limitRef, limits } from "../../api/limits.js";
import { validateSecretData, validateSecretName } from "../../api/secrets.js";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import type { Logger } from "../../observe/logger.js";
import type { Store } from "../store/store.js";
import {
  type Envelope,
  EnvelopeOpenError,
  envelopeSchema,
  openEnvelope,
  rewrapEnvelope,
  type SecretRef,
  sealEnvelope,
} from "./envelope.js";
import type { KeyRing } from "./keyRing.js";

export const secretKeyPrefix = "/secrets/";

export interface SecretKeyInfo {
  name: string;
  sizeBytes: number;
}

export interface SecretRecord {
  namespace: string;
  name: string;
  /** 1 at create, +1 per update; each version has its own data key. */
  version: number;
  keys: SecretKeyInfo[];
  createdAtMs: number;
  updatedAtMs: number;
  createdBy: string;
  updatedBy: string;
  envelope: Envelope;
}

const secretRecordSchema: z.ZodType<SecretRecord> = z.looseObject({
  namespace: z.string().min(1),
  name: z.string().min(1),
  version: z.number().int().positive(),
  keys: z.array(z.object({ name: z.string(), sizeBytes: z.number() })),
  createdAtMs: z.number(),
  updatedAtMs: z.number(),
  createdBy: z.string(),
  updatedBy: z.string(),
  envelope: envelopeSchema,
});

/** The plaintext inside an envelope: every key's value, base64. */
const payloadSchema = z.object({ data: z.record(z.string(), z.string()) });

export function secretStoreKey(namespace: string, name: string): string {
  return `${secretKeyPrefix}${namespace}/${name}`;
}

export interface RotationResult {
  /** The KEK every secret is wrapped with now. */
  activeKekId: string;
  /** Whether a new KEK was created for this rotation (data dir keys only). */
  createdKek: boolean;
  total: number;
  rewrapped: number;
  alreadyCurrent: number;
  /** KEK ids removed after every secret was re-wrapped (with removeOld). */
  removedKekIds: string[];
}

export interface VerifyResult {
  checked: number;
  /** Secrets that did not decrypt, by name, with the reason (never a value). */
  failures: { secret: string; reason: string }[];
}

/** How many times a rotation retries one secret that changed under it. */
const rewrapAttemptsMax = 5;

export class SecretRegistry {
  /** Rotations of this coordinator, one at a time: each creates and removes keys. */
  private rotation: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: Store,
    private readonly keyRing: KeyRing,
    private readonly clock: Clock,
    private readonly secureRandom: (size: number) => Buffer,
    private readonly logger: Logger,
  ) {}

  async create(
    namespace: string,
    name: string,
    data: ReadonlyMap<string, Uint8Array>,
    actor: string,
  ): Promise<SecretRecord> {
    validateSecretName(namespace, name);
    validateSecretData(data);
    const existing = await this.store.range(`${secretKeyPrefix}${namespace}/`, { keysOnly: true });
    if (existing.kvs.length >= limits.secretsPerNamespace) {
      throw CloudlessError.failedPrecondition(
        `namespace ${namespace} already holds ${limits.secretsPerNamespace} secrets ${limitRef("secretsPerNamespace")}; delete some first`,
      );
    }
    const now = this.clock.nowMs();
    const record = await this.sealed(
      { namespace, name, version: 1, createdAtMs: now, createdBy: actor },
      data,
      actor,
    );
    const key = secretStoreKey(namespace, name);
    const result = await this.store.txn({
      compare: [{ key, target: "version", op: "==", version: 0 }],
      success: [{ type: "put", key, value: JSON.stringify(record) }],
    });
    if (!result.succeeded) {
      throw CloudlessError.alreadyExists(
        `secret ${namespace}/${name} already exists; change it with \`cloudless secret update\``,
      );
    }
    return record;
  }

  /** Replaces every value: a new version with a new data key. */
  async update(
    namespace: string,
    name: string,
    data: ReadonlyMap<string, Uint8Array>,
    actor: string,
  ): Promise<SecretRecord> {
    validateSecretName(namespace, name);
    validateSecretData(data);
    const key = secretStoreKey(namespace, name);
    const kv = await this.store.get(key);
    if (!kv) throw this.notFound(namespace, name);
    const previous = decodeRecord(secretRecordSchema, kv.key, kv.value);
    const record = await this.sealed(
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
        `secret ${namespace}/${name} changed while it was updated; run the update again`,
      );
    }
    return record;
  }

  async get(namespace: string, name: string): Promise<SecretRecord> {
    validateSecretName(namespace, name);
    const kv = await this.store.get(secretStoreKey(namespace, name));
    if (!kv) throw this.notFound(namespace, name);
    return decodeRecord(secretRecordSchema, kv.key, kv.value);
  }

  /** Every secret, or a namespace's; sorted by namespace and name (the store's key order). */
  async list(namespace = ""): Promise<SecretRecord[]> {
    if (namespace !== "") validateSecretName(namespace, "x");
    const prefix = namespace === "" ? secretKeyPrefix : `${secretKeyPrefix}${namespace}/`;
    const result = await this.store.range(prefix);
    return result.kvs.map((kv) => decodeRecord(secretRecordSchema, kv.key, kv.value));
  }

  async delete(namespace: string, name: string): Promise<void> {
    validateSecretName(namespace, name);
    if ((await this.store.delete(secretStoreKey(namespace, name))) === 0) {
      throw this.notFound(namespace, name);
    }
  }

  /**
   * The values of a secret, for the coordinator itself (delivery to the replicas that
   * reference it). Never returned to an API client: reading needs `secrets.read`.
   */
  async readValues(
    namespace: string,
    name: string,
  ): Promise<{ version: number; values: Map<string, Buffer> }> {
    const record = await this.get(namespace, name);
    return { version: record.version, values: await this.open(record) };
  }

  /**
   * Key rotation: with keys in the data dir, a new KEK becomes active first; then every
   * secret not yet wrapped by the active KEK has its data key re-wrapped (values are not
   * re-encrypted), each with a compare-and-swap. With `removeOld`, the other keys are
   * deleted once every secret is wrapped by the active one.
   */
  rotateKey(options: { removeOld: boolean }): Promise<RotationResult> {
    const run = this.rotation.then(
      () => this.rotateNow(options),
      () => this.rotateNow(options),
    );
    this.rotation = run.catch(() => undefined);
    return run;
  }

  /** Decrypts every secret (or one) and reports which do not open: values stay inside. */
  async verify(namespace = "", name = ""): Promise<VerifyResult> {
    const records =
      name !== "" ? [await this.get(namespace || "default", name)] : await this.list(namespace);
    const failures: VerifyResult["failures"] = [];
    for (const record of records) {
      try {
        for (const value of (await this.open(record)).values()) value.fill(0);
      } catch (error) {
        failures.push({
          secret: `${record.namespace}/${record.name}`,
          reason: error instanceof Error ? error.message : String(error),
        });
      }
    }
    return { checked: records.length, failures };
  }

  private async rotateNow(options: { removeOld: boolean }): Promise<RotationResult> {
    // Unusable keys (a shared store without a key file, a malformed file) are said first.
    await this.keyRing.keys();
    if (options.removeOld && !this.keyRing.managesKeys) {
      throw CloudlessError.failedPrecondition(
        `the keys are in ${this.keyRing.describe()}: Cloudless cannot remove them; run \`cloudless secret rotate-key\` without --remove-old, then delete the old key from every coordinator's copy`,
      );
    }
    const createdKek = this.keyRing.managesKeys;
    const active = createdKek ? await this.keyRing.createKey() : await this.keyRing.active();
    this.logger.info({ kekId: active.id }, "secrets key rotation started");
    const names = (await this.store.range(secretKeyPrefix, { keysOnly: true })).kvs.map(
      (kv) => kv.key,
    );
    let rewrapped = 0;
    let alreadyCurrent = 0;
    for (const [index, key] of names.entries()) {
      const outcome = await this.rewrapOne(key, active);
      if (outcome === "rewrapped") rewrapped += 1;
      if (outcome === "current") alreadyCurrent += 1;
      if ((index + 1) % 100 === 0 || index + 1 === names.length) {
        this.logger.info(
          { done: index + 1, total: names.length, rewrapped },
          "secrets key rotation progress",
        );
      }
    }
    // Secrets created meanwhile used the active key already; anything else stops removal.
    const stillOld = (await this.list()).filter((record) => record.envelope.kekId !== active.id);
    let removedKekIds: string[] = [];
    if (options.removeOld) {
      if (stillOld.length > 0) {
        throw CloudlessError.conflict(
          `${stillOld.length} secrets are still wrapped by an old key (changed during the rotation); run \`cloudless secret rotate-key --remove-old\` again`,
        );
      }
      removedKekIds = await this.keyRing.removeAllBut(active.id);
    }
    this.logger.info(
      { kekId: active.id, total: names.length, rewrapped, removedKekIds },
      "secrets key rotation finished",
    );
    return {
      activeKekId: active.id,
      createdKek,
      total: names.length,
      rewrapped,
      alreadyCurrent,
      removedKekIds,
    };
  }

  private async rewrapOne(
    key: string,
    active: { id: string; key: Buffer },
  ): Promise<"rewrapped" | "current" | "gone"> {
    for (let attempt = 1; attempt <= rewrapAttemptsMax; attempt++) {
      const kv = await this.store.get(key);
      if (!kv) return "gone";
      const record = decodeRecord(secretRecordSchema, kv.key, kv.value);
      if (record.envelope.kekId === active.id) return "current";
      const from = await this.kekFor(record);
      const envelope = rewrapEnvelope(
        refOf(record),
        record.envelope,
        from,
        active,
        this.secureRandom,
      );
      const result = await this.store.txn({
        compare: [{ key, target: "modRevision", op: "==", modRevision: kv.modRevision }],
        success: [{ type: "put", key, value: JSON.stringify({ ...record, envelope }) }],
      });
      if (result.succeeded) return "rewrapped";
    }
    throw CloudlessError.conflict(
      `secret at ${key} kept changing during the key rotation; run \`cloudless secret rotate-key\` again`,
    );
  }

  private async sealed(
    base: Pick<SecretRecord, "namespace" | "name" | "version" | "createdAtMs" | "createdBy">,
    data: ReadonlyMap<string, Uint8Array>,
    actor: string,
  ): Promise<SecretRecord> {
    const kek = await this.keyRing.active();
    const plain: Record<string, string> = {};
    for (const [key, value] of data) plain[key] = Buffer.from(value).toString("base64");
    const plaintext = Buffer.from(JSON.stringify({ data: plain }), "utf8");
    try {
      return {
        ...base,
        keys: [...data].map(([key, value]) => ({ name: key, sizeBytes: value.byteLength })),
        updatedAtMs: this.clock.nowMs(),
        updatedBy: actor,
        envelope: sealEnvelope(base, plaintext, kek, this.secureRandom),
      };
    } finally {
      plaintext.fill(0);
    }
  }

  private async open(record: SecretRecord): Promise<Map<string, Buffer>> {
    const kek = await this.kekFor(record);
    let plaintext: Buffer;
    try {
      plaintext = openEnvelope(refOf(record), record.envelope, kek);
    } catch (error) {
      if (error instanceof EnvelopeOpenError) {
        throw CloudlessError.failedPrecondition(
          `secret ${record.namespace}/${record.name} does not decrypt: ${error.message}`,
        );
      }
      throw error;
    }
    try {
      const payload = payloadSchema.parse(JSON.parse(plaintext.toString("utf8")));
      return new Map(
        Object.entries(payload.data).map(([key, b64]) => [key, Buffer.from(b64, "base64")]),
      );
    } finally {
      plaintext.fill(0);
    }
  }

  private async kekFor(record: SecretRecord): Promise<{ id: string; key: Buffer }> {
    const kek = await this.keyRing.find(record.envelope.kekId);
    if (!kek) {
      throw CloudlessError.failedPrecondition(
        `secret ${record.namespace}/${record.name} is wrapped by KEK ${record.envelope.kekId}, which ${this.keyRing.describe()} does not hold; give every coordinator the same keys (--secrets-key-file) or restore the key`,
      );
    }
    return kek;
  }

  private notFound(namespace: string, name: string): CloudlessError {
    return CloudlessError.notFound(
      `secret ${namespace}/${name} not found; run \`cloudless secret list\` to see secrets`,
    );
  }
}

function refOf(record: SecretRecord): SecretRef {
  return { namespace: record.namespace, name: record.name, version: record.version };
}

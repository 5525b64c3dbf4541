import {
  createCipheriv,
  createDecipheriv,
  // biome-ignore lint/style/noRestrictedImports: the cluster secret, salts and IVs: cryptographic randomness only
  randomBytes,
  scrypt as scryptCallback,
} from "node:crypto";
import { mkdir, readFile, rm } from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";
import { z } from "zod";
import { CloudlessError } from "../../api/errors.js";
import { writePublicFile, writeSecretFile } from "../../lib/atomicFile.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import type { Store } from "../store/store.js";
import { CA_CERT_FILE, CA_KEY_FILE } from "./pki.js";

const scrypt = promisify(scryptCallback) as (
  password: string,
  salt: Buffer,
  keyLength: number,
) => Promise<Buffer>;

/** Where the cluster CA lives in a shared store, its private key sealed with the cluster secret. */
export const sharedCaKey = "/cluster/ca";

/** The CA as kept in a shared (etcd) store: the key never leaves a coordinator unsealed. */
export interface SealedCa {
  certPem: string;
  /** AES-256-GCM of the key PEM under scrypt(cluster secret, salt). */
  sealedKey: { saltB64: string; ivB64: string; tagB64: string; dataB64: string };
}

/** Reads the cluster secret, or creates one (32 random bytes) when `createIfMissing`. */
export async function readClusterSecret(
  file: string,
  createIfMissing: boolean,
): Promise<{ secret: string; created: boolean }> {
  try {
    const secret = (await readFile(file, "utf8")).trim();
    if (secret.length < 16) {
      throw CloudlessError.invalid(
        `cluster secret file ${file} holds fewer than 16 characters; use the file the first coordinator wrote`,
      );
    }
    return { secret, created: false };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    if (!createIfMissing) {
      throw CloudlessError.invalid(
        `cluster secret file ${file} does not exist; copy cluster-secret from the first coordinator's data dir and pass --cluster-secret-file`,
      );
    }
    const secret = randomBytes(32).toString("base64url");
    await writeSecretFile(file, `${secret}\n`, { exclusive: true });
    return { secret, created: true };
  }
}

export async function sealCa(certPem: string, keyPem: string, secret: string): Promise<SealedCa> {
  const salt = randomBytes(16);
  const iv = randomBytes(12);
  const key = await scrypt(secret, salt, 32);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  const data = Buffer.concat([cipher.update(keyPem, "utf8"), cipher.final()]);
  return {
    certPem,
    sealedKey: {
      saltB64: salt.toString("base64"),
      ivB64: iv.toString("base64"),
      tagB64: cipher.getAuthTag().toString("base64"),
      dataB64: data.toString("base64"),
    },
  };
}

export async function unsealCaKey(sealed: SealedCa, secret: string): Promise<string> {
  const { saltB64, ivB64, tagB64, dataB64 } = sealed.sealedKey;
  const key = await scrypt(secret, Buffer.from(saltB64, "base64"), 32);
  const decipher = createDecipheriv("aes-256-gcm", key, Buffer.from(ivB64, "base64"));
  decipher.setAuthTag(Buffer.from(tagB64, "base64"));
  try {
    return Buffer.concat([
      decipher.update(Buffer.from(dataB64, "base64")),
      decipher.final(),
    ]).toString("utf8");
  } catch {
    throw CloudlessError.invalid(
      "the cluster secret does not open the CA stored in etcd; pass the cluster-secret file of this cluster's first coordinator with --cluster-secret-file",
    );
  }
}

/** Writes the shared CA into a coordinator's pki/ directory (key 0600). */
export async function installSharedCa(pkiDir: string, sealed: SealedCa, secret: string) {
  const keyPem = await unsealCaKey(sealed, secret);
  await mkdir(pkiDir, { recursive: true, mode: 0o700 });
  await writePublicFile(path.join(pkiDir, CA_CERT_FILE), sealed.certPem);
  await writeSecretFile(path.join(pkiDir, CA_KEY_FILE), keyPem);
}

/** Removes a CA this coordinator created but lost the race to publish. */
export async function removeLocalCa(pkiDir: string): Promise<void> {
  await rm(path.join(pkiDir, CA_KEY_FILE), { force: true });
  await rm(path.join(pkiDir, CA_CERT_FILE), { force: true });
}

/** The sealed CA as decoded where it leaves the store (lib/recordCodec.ts). */
const sealedCaSchema: z.ZodType<SealedCa> = z.looseObject({
  certPem: z.string().min(1),
  sealedKey: z.looseObject({
    saltB64: z.string(),
    ivB64: z.string(),
    tagB64: z.string(),
    dataB64: z.string(),
  }),
});

export async function readSealedCa(store: Store): Promise<SealedCa | undefined> {
  const kv = await store.get(sharedCaKey);
  return kv ? decodeRecord(sealedCaSchema, kv.key, kv.value) : undefined;
}

import { X509Certificate } from "node:crypto";
import { access, mkdir, readFile } from "node:fs/promises";
import * as path from "node:path";
import { writePublicFile, writeSecretFile } from "../control/security/pki.js";
import { CloudlessError } from "../lib/errors.js";

/** What an agent keeps in its data dir to come back without a new token. */
export interface AgentIdentity {
  nodeName: string;
  clusterName: string;
  servers: string[];
  caPem: string;
  certPem: string;
  keyPem: string;
}

interface IdentityFile {
  nodeName: string;
  clusterName: string;
  servers: string[];
}

const files = {
  meta: "identity.json",
  ca: "ca.crt",
  cert: "node.crt",
  key: "node.key",
} as const;

export async function loadIdentity(dataDir: string): Promise<AgentIdentity | undefined> {
  const metaPath = path.join(dataDir, files.meta);
  try {
    await access(metaPath);
  } catch {
    return undefined;
  }
  try {
    const meta = JSON.parse(await readFile(metaPath, "utf8")) as IdentityFile;
    const [caPem, certPem, keyPem] = await Promise.all([
      readFile(path.join(dataDir, files.ca), "utf8"),
      readFile(path.join(dataDir, files.cert), "utf8"),
      readFile(path.join(dataDir, files.key), "utf8"),
    ]);
    new X509Certificate(certPem);
    new X509Certificate(caPem);
    if (typeof meta.nodeName !== "string" || !Array.isArray(meta.servers)) {
      throw new Error("identity.json lacks nodeName or servers");
    }
    return { ...meta, caPem, certPem, keyPem };
  } catch (error) {
    throw CloudlessError.invalid(
      `agent identity in ${dataDir} is corrupt (${error instanceof Error ? error.message : String(error)}); restore it or move the directory aside and join again with a new token`,
    );
  }
}

export async function saveIdentity(dataDir: string, identity: AgentIdentity): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await writeSecretFile(path.join(dataDir, files.key), identity.keyPem);
  await writePublicFile(path.join(dataDir, files.cert), identity.certPem);
  await writePublicFile(path.join(dataDir, files.ca), identity.caPem);
  const meta: IdentityFile = {
    nodeName: identity.nodeName,
    clusterName: identity.clusterName,
    servers: identity.servers,
  };
  // Written last: its presence means the identity is complete.
  await writePublicFile(path.join(dataDir, files.meta), `${JSON.stringify(meta, null, 2)}\n`);
}

export function certificateWindow(certPem: string): { notBeforeMs: number; notAfterMs: number } {
  const certificate = new X509Certificate(certPem);
  return {
    notBeforeMs: Date.parse(certificate.validFrom),
    notAfterMs: Date.parse(certificate.validTo),
  };
}

import { X509Certificate } from "node:crypto";
import { access, mkdir, readFile, stat } from "node:fs/promises";
import * as path from "node:path";
import { CloudlessError } from "../api/errors.js";
import { writePublicFile, writeSecretFile } from "../lib/atomicFile.js";

/** What an agent keeps in its data dir to come back without a new token. */
export interface AgentIdentity {
  nodeName: string;
  clusterName: string;
  /**
   * The node record's uid (ADR 0030): replicas are labelled with it. Absent in identities
   * saved before it was sent; the agent learns it from the hello's ack.
   */
  nodeUid?: string;
  servers: string[];
  caPem: string;
  certPem: string;
  keyPem: string;
  /**
   * When the agent received certPem (ms since the epoch), if known. The CA backdates
   * notBefore to allow for clock skew, so renewal is timed from this, not notBefore.
   */
  certReceivedAtMs?: number;
}

interface IdentityFile {
  nodeName: string;
  clusterName: string;
  nodeUid?: string;
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
    const [caPem, certPem, keyPem, certStat] = await Promise.all([
      readFile(path.join(dataDir, files.ca), "utf8"),
      readFile(path.join(dataDir, files.cert), "utf8"),
      readFile(path.join(dataDir, files.key), "utf8"),
      stat(path.join(dataDir, files.cert)),
    ]);
    new X509Certificate(certPem);
    new X509Certificate(caPem);
    if (typeof meta.nodeName !== "string" || !Array.isArray(meta.servers)) {
      throw new Error("identity.json lacks nodeName or servers");
    }
    if (meta.nodeUid !== undefined && typeof meta.nodeUid !== "string") {
      throw new Error("identity.json: nodeUid is not a string");
    }
    // node.crt is written when the certificate arrives, so its mtime is the receipt time.
    // biome-ignore lint/plugin/clockAndRng: compared with a file mtime, which is on the real clock
    const certReceivedAtMs = Math.min(certStat.mtimeMs, Date.now());
    return { ...meta, caPem, certPem, keyPem, certReceivedAtMs };
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
    ...(identity.nodeUid ? { nodeUid: identity.nodeUid } : {}),
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

/**
 * When a certificate is due for renewal: after `fraction` of its lifetime, counted
 * from when it was received (notBefore is backdated for clock skew, which for short
 * lifetimes would make a renewal due at once and spaced only by the check interval).
 */
export function renewalSchedule(
  identity: Pick<AgentIdentity, "certPem" | "certReceivedAtMs">,
  fraction: number,
  window: { notBeforeMs: number; notAfterMs: number } = certificateWindow(identity.certPem),
): { startMs: number; renewAtMs: number; notAfterMs: number } {
  const { notBeforeMs, notAfterMs } = window;
  const startMs = Math.min(
    notAfterMs,
    Math.max(notBeforeMs, identity.certReceivedAtMs ?? notBeforeMs),
  );
  return { startMs, renewAtMs: startMs + (notAfterMs - startMs) * fraction, notAfterMs };
}

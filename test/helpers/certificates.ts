/**
 * Real certificates for tests outside the control plane (the agent's metrics listener):
 * a fresh cluster CA and a node and an admin certificate it issued. Unit tests under
 * src/agent may not import control/ (ADR 0038), so they get the CA through here.
 */
import { spiffeUri } from "../../src/api/identity.js";
import {
  CertificateAuthority,
  createCertificateAuthority,
} from "../../src/control/security/pki.js";

export interface Credentials {
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** A new CA for `clusterName`; node "n1" (client and server, DNS name n1) and "admin". */
export async function clusterCredentials(
  clusterName: string,
): Promise<{ caPem: string; node: Credentials; admin: Credentials }> {
  const nowMs = Date.now();
  const generated = await createCertificateAuthority({ clusterName, nowMs });
  const ca = await CertificateAuthority.load(generated.certPem, generated.keyPem);
  const issue = (kind: "node" | "admin", name: string, usage: "client" | "clientAndServer") =>
    ca.issueKeyPair({
      subjectName: name,
      spiffeUri: spiffeUri(clusterName, kind, name),
      ttlMs: 3_600_000,
      nowMs,
      usage,
      ...(kind === "node" ? { dnsNames: [name] } : {}),
    });
  const node = await issue("node", "n1", "clientAndServer");
  const admin = await issue("admin", "admin", "client");
  return {
    caPem: ca.certPem,
    node: { caPem: ca.certPem, certPem: node.certPem, keyPem: node.keyPem },
    admin: { caPem: ca.certPem, certPem: admin.certPem, keyPem: admin.keyPem },
  };
}

/**
 * Real certificates for the mesh tests (issue 14): a cluster CA, node, admin and
 * coordinator certificates it issued, and MeshPeer records. Unit tests under src/agent and
 * src/lib may not import control/ (ADR 0038), so they get the CA through here.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type MeshPeer, MeshPeerSchema } from "../../src/api/gen/cloudless/v1/service_pb.js";
import { spiffeUri } from "../../src/api/identity.js";
import {
  CertificateAuthority,
  createCertificateAuthority,
} from "../../src/control/security/pki.js";

export interface IssuedPair {
  certPem: string;
  keyPem: string;
}

export interface TestCluster {
  clusterName: string;
  caPem: string;
  issue(
    kind: "node" | "admin" | "coordinator",
    name: string,
    options?: { nowMs?: number },
  ): Promise<IssuedPair>;
}

export async function testCluster(clusterName = "test"): Promise<TestCluster> {
  // The real clock: TLS checks these certificates against it.
  const nowMs = Date.now();
  const generated = await createCertificateAuthority({ clusterName, nowMs: nowMs - 3_600_000 });
  const ca = await CertificateAuthority.load(generated.certPem, generated.keyPem);
  return {
    clusterName,
    caPem: ca.certPem,
    async issue(kind, name, options = {}) {
      const issued = await ca.issueKeyPair({
        subjectName: name,
        spiffeUri: spiffeUri(clusterName, kind, name),
        ttlMs: 3 * 3_600_000,
        nowMs: options.nowMs ?? nowMs,
        usage: kind === "admin" ? "client" : "clientAndServer",
        ...(kind === "coordinator" ? { ipAddresses: ["127.0.0.1"] } : { dnsNames: [name] }),
      });
      return { certPem: issued.certPem, keyPem: issued.keyPem };
    },
  };
}

export function meshPeer(
  node: string,
  options: { port?: number; addresses?: string[]; relay?: boolean; enrolledAtMs?: number } = {},
): MeshPeer {
  return create(MeshPeerSchema, {
    node,
    addresses: options.addresses ?? ["127.0.0.1"],
    meshPort: options.port ?? 0,
    relay: options.relay ?? false,
    ...(options.enrolledAtMs !== undefined
      ? { enrolledAt: timestampFromMs(options.enrolledAtMs) }
      : {}),
  });
}

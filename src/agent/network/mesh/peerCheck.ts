/**
 * Who may talk on the mesh (REQ-040, REQ-060): after TLS verified a certificate against
 * the cluster CA, it must name a node of this cluster (SPIFFE `spiffe://<cluster>/node/<name>`)
 * that is in the current member list, and must have been issued to the node's current
 * incarnation (a deleted node re-enrolled under the same name gets a new enrolledAt; the
 * old certificate, issued before, is refused). Admin and coordinator certificates are not
 * mesh peers — except a coordinator serving as a relay, checked by `checkRelayCertificate`.
 */
import { createHash, X509Certificate } from "node:crypto";
import type { TLSSocket } from "node:tls";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { MeshPeer } from "../../../api/gen/cloudless/v1/service_pb.js";
import { type CertificateIdentity, identityFromCertificate } from "../../../api/identity.js";

/**
 * How far the CA backdates a certificate's notBefore for clock skew: a copy of
 * CLOCK_SKEW_ALLOWANCE_MS in src/control/security/pki.ts (agent/ may not import control/);
 * keep the two equal. A certificate whose notBefore is earlier than the member's
 * enrolledAt minus this was issued before the node (re-)enrolled.
 */
export const CLOCK_SKEW_ALLOWANCE_MS = 5 * 60_000;

export type PeerVerdict = { ok: true; node: string } | { ok: false; reason: string };

type ParsedIdentity = { identity: CertificateIdentity; notBeforeMs: number } | string;

/**
 * Parsed identities by certificate (SHA-256 of the DER and the cluster name). Every flow
 * is a TLS handshake that presents the peer's certificate again, and reading its SAN with
 * @peculiar/x509 took a third of the CPU of a new flow; the identity is a pure function of
 * those bytes, so it is parsed once. Membership and incarnation are still checked on every
 * flow. Bounded: past the limit the oldest entry goes (certificates are renewed, nodes come
 * and go).
 */
const parsedIdentities = new Map<string, ParsedIdentity>();
export const MAX_CACHED_PEER_IDENTITIES = 1024;

function identityOf(raw: Buffer | undefined, clusterName: string): ParsedIdentity {
  if (!raw || raw.length === 0) return "no certificate was presented";
  const key = `${clusterName}\n${createHash("sha256").update(raw).digest("hex")}`;
  const cached = parsedIdentities.get(key);
  if (cached !== undefined) return cached;
  const parsed = parseIdentity(raw, clusterName);
  if (parsedIdentities.size >= MAX_CACHED_PEER_IDENTITIES) {
    const oldest = parsedIdentities.keys().next().value;
    if (oldest !== undefined) parsedIdentities.delete(oldest);
  }
  parsedIdentities.set(key, parsed);
  return parsed;
}

function parseIdentity(raw: Buffer, clusterName: string): ParsedIdentity {
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(raw);
  } catch {
    return "the certificate does not parse";
  }
  const identity = identityFromCertificate(certificate, clusterName);
  if (!identity) return `the certificate carries no identity of cluster ${clusterName}`;
  return { identity, notBeforeMs: Date.parse(certificate.validFrom) };
}

/** Checks a verified certificate (DER) names a current member node, `expectedNode` if given. */
export function checkNodeCertificate(
  raw: Buffer | undefined,
  clusterName: string,
  members: ReadonlyMap<string, MeshPeer>,
  expectedNode?: string,
): PeerVerdict {
  const parsed = identityOf(raw, clusterName);
  if (typeof parsed === "string") return { ok: false, reason: parsed };
  const { identity, notBeforeMs } = parsed;
  if (identity.kind !== "node") {
    return { ok: false, reason: `a ${identity.kind} certificate is not a mesh peer` };
  }
  if (expectedNode !== undefined && identity.name !== expectedNode) {
    return {
      ok: false,
      reason: `the certificate names node ${identity.name}, not ${expectedNode}`,
    };
  }
  const member = members.get(identity.name);
  if (!member) return { ok: false, reason: `node ${identity.name} is not a member` };
  if (member.enrolledAt !== undefined) {
    // The CA floors notBefore to a whole second (X.509 time), so the bound is floored too.
    const earliestMs =
      Math.floor((timestampMs(member.enrolledAt) - CLOCK_SKEW_ALLOWANCE_MS) / 1000) * 1000;
    if (notBeforeMs < earliestMs) {
      return {
        ok: false,
        reason: `the certificate of node ${identity.name} predates its enrolment (an earlier incarnation)`,
      };
    }
  }
  return { ok: true, node: identity.name };
}

/** The mesh check of a TLS socket's peer, TLS authorization included. */
export function checkSocketPeer(
  socket: TLSSocket,
  clusterName: string,
  members: ReadonlyMap<string, MeshPeer>,
  expectedNode?: string,
): PeerVerdict {
  // The native X509 object, not getPeerCertificate()'s JS object of every field: cheaper.
  const certificate = socket.getPeerX509Certificate();
  if (!certificate?.raw) return { ok: false, reason: "no certificate was presented" };
  if (!socket.authorized) {
    return {
      ok: false,
      reason: `the certificate is not from this cluster's CA (${String(socket.authorizationError)})`,
    };
  }
  return checkNodeCertificate(certificate.raw, clusterName, members, expectedNode);
}

/** Who a relay must be: a coordinator of the cluster, or the named relay node. */
export type RelayExpectation = { kind: "coordinator" } | { kind: "node"; name: string };

/** Checks a relay server's verified certificate names what the dialer expects. */
export function checkRelayCertificate(
  raw: Buffer | undefined,
  clusterName: string,
  members: ReadonlyMap<string, MeshPeer>,
  expectation: RelayExpectation,
): PeerVerdict {
  if (expectation.kind === "node") {
    return checkNodeCertificate(raw, clusterName, members, expectation.name);
  }
  const parsed = identityOf(raw, clusterName);
  if (typeof parsed === "string") return { ok: false, reason: parsed };
  if (parsed.identity.kind !== "coordinator") {
    return { ok: false, reason: `the relay presented a ${parsed.identity.kind} certificate` };
  }
  return { ok: true, node: parsed.identity.name };
}

/**
 * Who is who in a cluster, as every plane names it (part of the contract, ADR 0038): node
 * and cluster names, the SPIFFE-like URI a certificate carries
 * (`spiffe://<cluster>/<kind>/<name>`), the cluster id derived from the CA, and the one
 * key type (ECDSA P-256, signed with SHA-256) that an agent generates and the CA issues
 * for (DESIGN.md, decision 8). The CA itself — issuing, loading, its files — is the
 * control plane's (control/security/pki.ts).
 */
import { createHash, KeyObject, webcrypto, X509Certificate } from "node:crypto";
import { x509 } from "../lib/x509Runtime.js";
import { CloudlessError } from "./errors.js";

/**
 * The kinds of caller a certificate can name. `admin` is the cluster's own admin
 * certificate (admin.conf, role admin); `user` is a person or program made by `cloudless
 * user create`, whose role is a second URI SAN (ADR 0051).
 */
export type IdentityKind = "admin" | "node" | "coordinator" | "user";

/** What a person or program may do (ADR 0051): admin everything, operator workloads, viewer reads. */
export type Role = "admin" | "operator" | "viewer";

export const ROLES: readonly Role[] = ["admin", "operator", "viewer"];

export function isRole(value: string): value is Role {
  return (ROLES as readonly string[]).includes(value);
}

const ROLE_URI_PREFIX = "urn:cloudless:role:";

/** The URI SAN that binds a user certificate to its role: `urn:cloudless:role:<role>`. */
export function roleUri(role: Role): string {
  return `${ROLE_URI_PREFIX}${role}`;
}

/** Checks a user name: a DNS-1123 label, like node names (it becomes part of a URI). */
export function validateUserName(name: string): NameValidation {
  return validateLabel("user name", name);
}

export type NameValidation = { ok: true } | { ok: false; reason: string };

const LABEL_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const LABEL_RULE =
  "use 1 to 63 lowercase letters (a-z), digits (0-9) or '-', starting and ending with a letter or digit";

function validateLabel(what: string, name: string): NameValidation {
  if (LABEL_PATTERN.test(name)) return { ok: true };
  return { ok: false, reason: `${what} ${JSON.stringify(name)} is not valid: ${LABEL_RULE}` };
}

/** Checks a node name: a DNS-1123 label, so it is safe in URIs, file names and host names. */
export function validateNodeName(name: string): NameValidation {
  return validateLabel("node name", name);
}

/** Checks a cluster name, which becomes the SPIFFE trust domain; same rule as node names. */
export function validateClusterName(name: string): NameValidation {
  return validateLabel("cluster name", name);
}

// ---------------------------------------------------------------------------------------
// SPIFFE URIs

export type SpiffeId = { clusterName: string; kind: IdentityKind; name: string };

const SPIFFE_KINDS: readonly IdentityKind[] = ["node", "admin", "coordinator", "user"];
const SPIFFE_PATTERN = /^spiffe:\/\/([^/]+)\/([^/]+)\/([^/]+)$/;
const TRUST_DOMAIN_PATTERN = /^spiffe:\/\/([^/]+)$/;

/** Builds `spiffe://<cluster>/<kind>/<name>`; a bad name is a CloudlessError InvalidArgument. */
export function spiffeUri(clusterName: string, kind: IdentityKind, name: string): string {
  const cluster = validateClusterName(clusterName);
  if (!cluster.ok) throw CloudlessError.invalid(cluster.reason);
  const checked = validateLabel(`${kind} name`, name);
  if (!checked.ok) throw CloudlessError.invalid(checked.reason);
  return `spiffe://${clusterName}/${kind}/${name}`;
}

/** Parses a URI made by `spiffeUri`; anything else (query, extra segments, bad names) → undefined. */
export function parseSpiffeUri(uri: string): SpiffeId | undefined {
  const match = SPIFFE_PATTERN.exec(uri);
  if (match === null) return undefined;
  const [, clusterName, kind, name] = match;
  if (clusterName === undefined || kind === undefined || name === undefined) return undefined;
  if (!SPIFFE_KINDS.includes(kind as IdentityKind)) return undefined;
  if (!LABEL_PATTERN.test(clusterName) || !LABEL_PATTERN.test(name)) return undefined;
  return { clusterName, kind: kind as IdentityKind, name };
}

/** The URI SAN on the CA certificate: the trust domain alone, as SPIFFE does for CAs. */
export function trustDomainUri(clusterName: string): string {
  return `spiffe://${clusterName}`;
}

/** The cluster name in a URI made by `trustDomainUri`, or undefined. */
export function parseTrustDomainUri(uri: string): string | undefined {
  const clusterName = TRUST_DOMAIN_PATTERN.exec(uri)?.[1];
  return clusterName !== undefined && LABEL_PATTERN.test(clusterName) ? clusterName : undefined;
}

/**
 * True when a TLS peer's `subjectaltname` (Node's "URI:…, DNS:…" text) names a coordinator
 * of `clusterName` (of any cluster when undefined): what a client checks before it sends
 * credentials or a token to a server.
 */
export function namesCoordinator(subjectAltName: string, clusterName: string | undefined): boolean {
  return subjectAltName.split(", ").some((entry) => {
    const id = entry.startsWith("URI:") ? parseSpiffeUri(entry.slice(4)) : undefined;
    return (
      id !== undefined &&
      id.kind === "coordinator" &&
      (clusterName === undefined || id.clusterName === clusterName)
    );
  });
}

// ---------------------------------------------------------------------------------------
// Certificates

/** A DER certificate as @peculiar/x509 reads it (Node's X509Certificate has no SAN list). */
export function parseCertificateDer(der: Uint8Array): InstanceType<typeof x509.X509Certificate> {
  return new x509.X509Certificate(new Uint8Array(der));
}

/** The URI subject alternative names of a certificate, in order. */
export function uriSansOf(cert: InstanceType<typeof x509.X509Certificate>): string[] {
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  if (san === null) return [];
  return san.names.items.filter((n) => n.type === "url").map((n) => n.value);
}

export type CertificateIdentity = {
  kind: IdentityKind;
  name: string;
  /** Lowercase hex, as returned by `issueFromCsr` / `issueKeyPair`. */
  serial: string;
  notAfterMs: number;
  /** The role of a person or program: `admin` for kind admin, the role SAN for kind user. */
  role?: Role;
};

/**
 * Maps a peer certificate to a caller identity through its single SPIFFE URI SAN.
 * Returns undefined when there is none, more than one, it is malformed or names another
 * cluster. It does not check the signature: call it only on a certificate the TLS layer
 * has already verified against the cluster CA (`socket.authorized`).
 */
export function identityFromCertificate(
  cert: X509Certificate,
  clusterName: string,
): CertificateIdentity | undefined {
  if (cert.ca) return undefined;
  let uris: string[];
  let roleUris: string[];
  let notAfterMs: number;
  try {
    const parsed = parseCertificateDer(cert.raw);
    const all = uriSansOf(parsed);
    uris = all.filter((uri) => uri.toLowerCase().startsWith("spiffe:"));
    roleUris = all.filter((uri) => uri.toLowerCase().startsWith(ROLE_URI_PREFIX));
    notAfterMs = parsed.notAfter.getTime();
  } catch {
    // SAN forms the parser does not know (otherName, x400) are not ours: no identity.
    return undefined;
  }
  // More than one SPIFFE ID would make the identity ambiguous; our CA never issues that.
  if (uris.length !== 1) return undefined;
  const id = parseSpiffeUri(uris[0]!);
  if (id === undefined || id.clusterName !== clusterName) return undefined;
  const serial = cert.serialNumber.toLowerCase();
  if (id.kind !== "user") {
    // A role SAN on a node, coordinator or admin certificate is not one our CA makes.
    if (roleUris.length > 0) return undefined;
    return {
      kind: id.kind,
      name: id.name,
      serial,
      notAfterMs,
      ...(id.kind === "admin" ? { role: "admin" as const } : {}),
    };
  }
  // A user has exactly one role; none or several would leave its permissions ambiguous.
  if (roleUris.length !== 1) return undefined;
  const role = roleUris[0]!.slice(ROLE_URI_PREFIX.length);
  if (!isRole(role)) return undefined;
  return { kind: "user", name: id.name, serial, notAfterMs, role };
}

// ---------------------------------------------------------------------------------------
// The cluster id

/** Hex digits of the CA fingerprint that make the cluster id (64 bits). */
const CLUSTER_ID_HEX_DIGITS = 16;

/**
 * The cluster's stable id: the first 16 hex digits of its CA certificate's SHA-256
 * fingerprint (the one join tokens pin). The CA never changes for the life of a cluster
 * (a coordinator refuses another), so every coordinator and every agent — which holds the
 * CA — derives the same id without asking anyone. Replicas carry it (ADR 0030), so two
 * clusters sharing a host and node names never touch each other's.
 */
export function clusterIdFromFingerprint(fingerprintSha256Hex: string): string {
  return fingerprintSha256Hex.toLowerCase().slice(0, CLUSTER_ID_HEX_DIGITS);
}

/** The cluster id (see clusterIdFromFingerprint) of a CA certificate in PEM. */
export function clusterIdFromCaPem(caPem: string): string {
  const der = new X509Certificate(caPem).raw;
  return clusterIdFromFingerprint(createHash("sha256").update(der).digest("hex"));
}

// ---------------------------------------------------------------------------------------
// Keys: ECDSA P-256, signed with SHA-256, the only kind the CA issues for

export const ecP256 = { name: "ECDSA", namedCurve: "P-256" } as const;
export const ecdsaSha256 = { name: "ECDSA", hash: "SHA-256" } as const;

export function isP256(key: KeyObject): boolean {
  return key.asymmetricKeyType === "ec" && key.asymmetricKeyDetails?.namedCurve === "prime256v1";
}

export async function generateP256KeyPair(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ecP256, true, ["sign", "verify"]);
}

/** A private key as PKCS#8 PEM, the form keys are written to disk and travel in. */
export function privateKeyPem(key: webcrypto.CryptoKey): string {
  return KeyObject.from(key).export({ type: "pkcs8", format: "pem" }).toString();
}

/** PEM text as files conventionally hold it: ending with a newline, as Node's exports do. */
export function pemOf(value: { toString(format: "pem"): string }): string {
  const pem = value.toString("pem");
  return pem.endsWith("\n") ? pem : `${pem}\n`;
}

/** Generates a P-256 key and a CSR for it; the CA ignores the CSR's name, it is only a label. */
export async function generateKeyAndCsr(options: {
  commonName: string;
}): Promise<{ keyPem: string; csrPem: string }> {
  const keys = await generateP256KeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [options.commonName] }],
    keys,
    signingAlgorithm: ecdsaSha256,
  });
  return { keyPem: privateKeyPem(keys.privateKey), csrPem: pemOf(csr) };
}

/**
 * The cluster's public-key infrastructure: one self-signed CA per cluster, which signs
 * node, admin and coordinator certificates carrying a SPIFFE-like URI SAN
 * (`spiffe://<cluster>/<kind>/<name>`). Every API call except enrollment is authenticated
 * by such a certificate (DESIGN.md, decision 8).
 *
 * Pure of network and store: the only I/O here is reading and writing the CA files.
 * All keys are ECDSA P-256 signed with SHA-256; keys travel as PKCS#8 PEM, certificates
 * as PEM. Time is passed in (`nowMs`), never read from the system clock.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  // biome-ignore lint/style/noRestrictedImports: certificate serials must be unpredictable; temp names unique across processes
  randomBytes,
  webcrypto,
  X509Certificate,
} from "node:crypto";
import * as fs from "node:fs/promises";
import { isIP } from "node:net";
import * as path from "node:path";
import {
  clusterIdFromFingerprint,
  ecdsaSha256,
  ecP256,
  generateP256KeyPair,
  isP256,
  isRole,
  parseCertificateDer,
  parseSpiffeUri,
  parseTrustDomainUri,
  pemOf,
  privateKeyPem,
  type Role,
  roleUri,
  trustDomainUri,
  uriSansOf,
  validateClusterName,
} from "../../api/identity.js";
import { writePublicFile, writeSecretFile } from "../../lib/atomicFile.js";
import { x509 } from "../../lib/x509Runtime.js";

/** Certificates start this far in the past so that a peer whose clock is behind accepts them. */
export const CLOCK_SKEW_ALLOWANCE_MS = 5 * 60_000;
export const CA_CERT_FILE = "ca.crt";
export const CA_KEY_FILE = "ca.key";

const DAY_MS = 86_400_000;
const CSR_PEM_HEADER = "-----BEGIN CERTIFICATE REQUEST-----";
// Limits on untrusted or on-disk input: a P-256 CSR or certificate is well under 2 KiB.
const MAX_CSR_PEM_CHARS = 16 * 1024;
const MAX_CA_FILE_BYTES = 64 * 1024;
// X.520 upper bound for a common name.
const MAX_COMMON_NAME_CHARS = 64;
const MAX_SANS = 32;
const DO_NOT_REPLACE_CA =
  "restore it from a backup or move the directory aside; Cloudless will not create a new CA over an existing one";

export type PkiErrorKind =
  /** A CA file on disk is missing its pair, unreadable or does not match its pair. */
  | "corrupt"
  /** Another process created the CA files while this one was creating them. */
  | "conflict"
  /** A CSR failed to parse, uses the wrong key type or its signature does not verify. */
  | "invalidCsr"
  /** An argument is malformed (a name, a URI, a TTL, a PEM). */
  | "invalidInput"
  /** The cluster CA is past its notAfter and can no longer issue. */
  | "caExpired"
  /** The CA on disk belongs to another cluster than the one asked for. */
  | "clusterMismatch";

/** The one error type thrown by this module; `kind` says what went wrong, the message what to do. */
export class PkiError extends Error {
  override readonly name = "PkiError";
  readonly kind: PkiErrorKind;

  constructor(kind: PkiErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
  }
}

// ---------------------------------------------------------------------------------------
// Small helpers

function floorToSecondMs(ms: number): number {
  // X.509 times have one-second resolution; flooring keeps returned times equal to the cert's.
  return Math.floor(ms / 1000) * 1000;
}

function randomSerialHex(): string {
  const bytes = randomBytes(16);
  // Positive (top bit clear) and a non-zero first byte, so every serial is 16 bytes of DER
  // INTEGER without padding and prints the same way in every tool.
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString("hex");
}

function errorCode(error: unknown): string | undefined {
  return typeof error === "object" && error !== null && "code" in error
    ? String((error as { code: unknown }).code)
    : undefined;
}

function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// ---------------------------------------------------------------------------------------
// Creating and loading the CA

export type CaCreateOptions = { clusterName: string; nowMs: number; validityDays?: number };

/** Creates a self-signed cluster CA: ECDSA P-256, 16-byte random serial, backdated for skew. */
export async function createCertificateAuthority(
  options: CaCreateOptions,
): Promise<{ certPem: string; keyPem: string }> {
  const { clusterName, nowMs, validityDays = 3650 } = options;
  const checked = validateClusterName(clusterName);
  if (!checked.ok) throw new PkiError("invalidInput", checked.reason);
  if (!Number.isFinite(nowMs)) throw new PkiError("invalidInput", "nowMs must be a finite number");
  if (!(Number.isFinite(validityDays) && validityDays > 0)) {
    throw new PkiError("invalidInput", `validityDays must be positive, got ${validityDays}`);
  }
  const keys = await generateP256KeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: [{ CN: [`${clusterName} Cloudless CA`] }],
    keys,
    serialNumber: randomSerialHex(),
    notBefore: new Date(floorToSecondMs(nowMs - CLOCK_SKEW_ALLOWANCE_MS)),
    notAfter: new Date(floorToSecondMs(nowMs + validityDays * DAY_MS)),
    signingAlgorithm: ecdsaSha256,
    extensions: [
      // pathLength 0: this CA signs leaves only, never intermediate CAs.
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      new x509.SubjectAlternativeNameExtension([
        { type: "url", value: trustDomainUri(clusterName) },
      ]),
    ],
  });
  return { certPem: pemOf(cert), keyPem: privateKeyPem(keys.privateKey) };
}

export type CertificateUsage = "client" | "server" | "clientAndServer";

export type IssueOptions = {
  /** Becomes the subject CN; for humans and logs only, identity comes from the URI SAN. */
  subjectName: string;
  /** The identity's URI SAN; must name this CA's cluster. */
  spiffeUri: string;
  /** A user's role, as a second URI SAN (ADR 0051); only with a `user` SPIFFE ID. */
  role?: Role;
  ttlMs: number;
  nowMs: number;
  usage: CertificateUsage;
  dnsNames?: string[];
  ipAddresses?: string[];
};

export type IssuedCertificate = { certPem: string; serial: string; notAfterMs: number };

const DNS_NAME_PATTERN =
  /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** The cluster CA, able to sign certificates; build it with `CertificateAuthority.load`. */
export class CertificateAuthority {
  /** SHA-256 of the CA certificate's DER, lowercase hex; agents pin it from the join token. */
  readonly fingerprintSha256: string;
  /** The cluster id derived from the fingerprint (clusterIdFromFingerprint). */
  readonly clusterId: string;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;

  private constructor(
    readonly certPem: string,
    readonly clusterName: string,
    private readonly cert: InstanceType<typeof x509.X509Certificate>,
    private readonly signingKey: webcrypto.CryptoKey,
    private readonly keyIdHex: string,
    der: Uint8Array,
  ) {
    this.fingerprintSha256 = createHash("sha256").update(der).digest("hex");
    this.clusterId = clusterIdFromFingerprint(this.fingerprintSha256);
    this.notBeforeMs = cert.notBefore.getTime();
    this.notAfterMs = cert.notAfter.getTime();
  }

  /** Loads a CA from PEM; throws PkiError "invalidInput" naming what is wrong (e.g. key/cert mismatch). */
  static async load(certPem: string, keyPem: string): Promise<CertificateAuthority> {
    let nodeCert: X509Certificate;
    try {
      nodeCert = new X509Certificate(certPem);
    } catch (error) {
      throw new PkiError("invalidInput", "the CA certificate is not a PEM X.509 certificate", {
        cause: error,
      });
    }
    if (!nodeCert.ca) {
      throw new PkiError(
        "invalidInput",
        "the CA certificate is not a CA (basicConstraints CA:false)",
      );
    }
    let key: KeyObject;
    try {
      key = createPrivateKey(keyPem);
    } catch (error) {
      throw new PkiError("invalidInput", "the CA private key is not a PEM private key", {
        cause: error,
      });
    }
    if (!isP256(key)) {
      throw new PkiError("invalidInput", "the CA private key is not an ECDSA P-256 key");
    }
    if (!nodeCert.checkPrivateKey(key)) {
      throw new PkiError("invalidInput", "the CA private key does not match the CA certificate");
    }
    const cert = parseCertificateDer(nodeCert.raw);
    const clusterName = uriSansOf(cert)
      .map(parseTrustDomainUri)
      .find((name) => name !== undefined);
    if (clusterName === undefined) {
      throw new PkiError(
        "invalidInput",
        "the CA certificate names no cluster (no spiffe://<cluster> URI SAN); it was not made by Cloudless",
      );
    }
    const pkcs8Der = key.export({ type: "pkcs8", format: "der" });
    const signingKey = await webcrypto.subtle.importKey("pkcs8", pkcs8Der, ecP256, false, ["sign"]);
    const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension);
    const keyIdHex =
      ski?.keyId ?? (await x509.SubjectKeyIdentifierExtension.create(cert.publicKey)).keyId;
    return new CertificateAuthority(
      nodeCert.toString(),
      clusterName,
      cert,
      signingKey,
      keyIdHex,
      nodeCert.raw,
    );
  }

  /**
   * Signs the public key of a CSR. Everything the CSR asks for besides its key (subject,
   * SANs, extensions) is ignored: the CA alone decides who the certificate names, so a
   * joining node cannot request someone else's identity. A CSR that fails to parse or whose
   * self-signature does not verify is refused with PkiError "invalidCsr".
   */
  async issueFromCsr(csrPem: string, options: IssueOptions): Promise<IssuedCertificate> {
    if (csrPem.length > MAX_CSR_PEM_CHARS) {
      throw new PkiError("invalidCsr", `the CSR is larger than ${MAX_CSR_PEM_CHARS} characters`);
    }
    if (!csrPem.includes(CSR_PEM_HEADER)) {
      throw new PkiError("invalidCsr", `the CSR is not PEM (no "${CSR_PEM_HEADER}" line)`);
    }
    let csr: InstanceType<typeof x509.Pkcs10CertificateRequest>;
    let publicKey: KeyObject;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem);
      publicKey = createPublicKey({
        key: Buffer.from(csr.publicKey.rawData),
        format: "der",
        type: "spki",
      });
    } catch (error) {
      throw new PkiError("invalidCsr", "the CSR is not a valid PKCS#10 certificate request", {
        cause: error,
      });
    }
    if (!isP256(publicKey)) {
      throw new PkiError(
        "invalidCsr",
        "the CSR's key is not ECDSA P-256; Cloudless issues only P-256",
      );
    }
    let signatureValid = false;
    try {
      signatureValid = await csr.verify();
    } catch {
      signatureValid = false;
    }
    if (!signatureValid) {
      throw new PkiError(
        "invalidCsr",
        "the CSR's signature does not verify: it was altered or not signed by the key it carries",
      );
    }
    return this.issue(csr.publicKey.rawData, options);
  }

  /** Generates a P-256 key and issues a certificate for it (coordinator server and admin certs). */
  async issueKeyPair(options: IssueOptions): Promise<IssuedCertificate & { keyPem: string }> {
    const keys = await generateP256KeyPair();
    const spki = await webcrypto.subtle.exportKey("spki", keys.publicKey);
    const issued = await this.issue(spki, options);
    return { ...issued, keyPem: privateKeyPem(keys.privateKey) };
  }

  private async issue(spki: ArrayBuffer, options: IssueOptions): Promise<IssuedCertificate> {
    this.checkIssueOptions(options);
    const { nowMs, ttlMs } = options;
    if (nowMs >= this.notAfterMs) {
      throw new PkiError(
        "caExpired",
        `the cluster CA expired at ${new Date(this.notAfterMs).toISOString()}; it can no longer issue certificates`,
      );
    }
    // A leaf cannot usefully outlive its issuer; the returned notAfterMs tells the caller.
    const notAfterMs = Math.min(floorToSecondMs(nowMs + ttlMs), this.notAfterMs);
    const serial = randomSerialHex();
    const extendedUsages: string[] = [];
    if (options.usage !== "server") extendedUsages.push(x509.ExtendedKeyUsage.clientAuth);
    if (options.usage !== "client") extendedUsages.push(x509.ExtendedKeyUsage.serverAuth);
    const sans: { type: "url" | "dns" | "ip"; value: string }[] = [
      { type: "url", value: options.spiffeUri },
      ...(options.role !== undefined
        ? [{ type: "url" as const, value: roleUri(options.role) }]
        : []),
      ...(options.dnsNames ?? []).map((value) => ({ type: "dns" as const, value })),
      ...(options.ipAddresses ?? []).map((value) => ({ type: "ip" as const, value })),
    ];
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      subject: [{ CN: [options.subjectName] }],
      issuer: this.cert.subjectName,
      notBefore: new Date(floorToSecondMs(nowMs - CLOCK_SKEW_ALLOWANCE_MS)),
      notAfter: new Date(notAfterMs),
      publicKey: spki,
      signingKey: this.signingKey,
      signingAlgorithm: ecdsaSha256,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        // ECDSA keys sign; keyEncipherment is an RSA key-transport usage and does not apply.
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension(extendedUsages, false),
        new x509.SubjectAlternativeNameExtension(sans, false),
        await x509.SubjectKeyIdentifierExtension.create(new x509.PublicKey(spki)),
        new x509.AuthorityKeyIdentifierExtension(this.keyIdHex, false),
      ],
    });
    return { certPem: pemOf(cert), serial, notAfterMs };
  }

  private checkIssueOptions(options: IssueOptions): void {
    const invalid = (message: string): never => {
      throw new PkiError("invalidInput", message);
    };
    const { subjectName, ttlMs, nowMs, usage } = options;
    if (
      subjectName.length === 0 ||
      subjectName.length > MAX_COMMON_NAME_CHARS ||
      // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
      /[\u0000-\u001f\u007f]/.test(subjectName)
    ) {
      invalid(`subjectName must be 1 to ${MAX_COMMON_NAME_CHARS} printable characters`);
    }
    const id = parseSpiffeUri(options.spiffeUri);
    if (id === undefined) {
      invalid(
        `spiffeUri ${JSON.stringify(options.spiffeUri)} is not spiffe://<cluster>/<kind>/<name>`,
      );
    } else if ((id.kind === "user") !== (options.role !== undefined)) {
      invalid("a role is given with a user SPIFFE ID, and only with one");
    } else if (options.role !== undefined && !isRole(options.role)) {
      invalid(`role ${JSON.stringify(options.role)} is not admin, operator or viewer`);
    } else if (id.clusterName !== this.clusterName) {
      invalid(
        `spiffeUri ${JSON.stringify(options.spiffeUri)} names cluster "${id.clusterName}", but this CA is for "${this.clusterName}"`,
      );
    }
    if (!(Number.isFinite(ttlMs) && ttlMs > 0)) invalid(`ttlMs must be positive, got ${ttlMs}`);
    if (!Number.isFinite(nowMs)) invalid("nowMs must be a finite number");
    if (usage !== "client" && usage !== "server" && usage !== "clientAndServer") {
      invalid(
        `usage must be "client", "server" or "clientAndServer", got ${JSON.stringify(usage)}`,
      );
    }
    const dnsNames = options.dnsNames ?? [];
    const ipAddresses = options.ipAddresses ?? [];
    if (dnsNames.length + ipAddresses.length > MAX_SANS) {
      invalid(`at most ${MAX_SANS} DNS names and IP addresses may be given`);
    }
    for (const name of dnsNames) {
      if (!DNS_NAME_PATTERN.test(name)) invalid(`${JSON.stringify(name)} is not a valid DNS name`);
    }
    for (const address of ipAddresses) {
      if (isIP(address) === 0) invalid(`${JSON.stringify(address)} is not an IPv4 or IPv6 address`);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Reading certificates

/** Validity of a PEM certificate, for renewal scheduling. Throws PkiError "invalidInput" if unparsable. */
export function certificateValidity(certPem: string): {
  notBeforeMs: number;
  notAfterMs: number;
  serial: string;
} {
  try {
    const cert = parseCertificateDer(new X509Certificate(certPem).raw);
    return {
      notBeforeMs: cert.notBefore.getTime(),
      notAfterMs: cert.notAfter.getTime(),
      serial: cert.serialNumber.toLowerCase(),
    };
  } catch (error) {
    throw new PkiError("invalidInput", "not a PEM X.509 certificate", { cause: error });
  }
}

/**
 * When an agent should renew: two thirds into the certificate's lifetime, which leaves a
 * third of it to ride out a coordinator outage before the certificate expires.
 */
export function renewalDueAtMs(validity: { notBeforeMs: number; notAfterMs: number }): number {
  const lifetimeMs = validity.notAfterMs - validity.notBeforeMs;
  return validity.notBeforeMs + Math.floor((lifetimeMs * 2) / 3);
}

/** True when `certPem` is signed by `caPem` and both are within their validity at `nowMs`. */
export function verifyIssuedBy(certPem: string, caPem: string, nowMs: number): boolean {
  try {
    const leaf = new X509Certificate(certPem);
    const ca = new X509Certificate(caPem);
    if (!ca.ca || !leaf.checkIssued(ca) || !leaf.verify(ca.publicKey)) return false;
    for (const cert of [leaf, ca]) {
      const parsed = parseCertificateDer(cert.raw);
      if (nowMs < parsed.notBefore.getTime() || nowMs > parsed.notAfter.getTime()) return false;
    }
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------
// CA files

async function readCaFile(filePath: string): Promise<string | undefined> {
  let stat: Awaited<ReturnType<typeof fs.stat>>;
  try {
    stat = await fs.stat(filePath);
  } catch (error) {
    if (errorCode(error) === "ENOENT") return undefined;
    throw error;
  }
  if (!stat.isFile() || stat.size > MAX_CA_FILE_BYTES) {
    throw new PkiError(
      "corrupt",
      `${filePath} is not a regular file under ${MAX_CA_FILE_BYTES} bytes; ${DO_NOT_REPLACE_CA}`,
    );
  }
  return fs.readFile(filePath, "utf8");
}

/**
 * Loads the cluster CA from `dir/ca.crt` and `dir/ca.key`, or creates them on first start
 * (directory 0700, key 0600, certificate 0644). Existing files are never overwritten: a
 * missing half, an unparsable file or a key that does not match its certificate is a
 * PkiError "corrupt" naming the file, because silently making a new CA would lock every
 * enrolled node out of the cluster.
 */
export async function loadOrCreateCa(
  dir: string,
  clusterName: string,
  nowMs: number,
): Promise<{ ca: CertificateAuthority; created: boolean }> {
  const checked = validateClusterName(clusterName);
  if (!checked.ok) throw new PkiError("invalidInput", checked.reason);
  const certPath = path.join(dir, CA_CERT_FILE);
  const keyPath = path.join(dir, CA_KEY_FILE);
  const [certPem, keyPem] = await Promise.all([readCaFile(certPath), readCaFile(keyPath)]);

  if (certPem === undefined && keyPem === undefined) {
    return { ca: await createCaFiles(dir, certPath, keyPath, clusterName, nowMs), created: true };
  }
  if (keyPem === undefined) {
    throw new PkiError(
      "corrupt",
      `${keyPath} is missing but ${certPath} exists; ${DO_NOT_REPLACE_CA}`,
    );
  }
  if (certPem === undefined) {
    throw new PkiError(
      "corrupt",
      `${certPath} is missing but ${keyPath} exists; ${DO_NOT_REPLACE_CA}`,
    );
  }
  const ca = await loadCaFiles(certPem, keyPem, certPath, keyPath);
  if (ca.clusterName !== clusterName) {
    throw new PkiError(
      "clusterMismatch",
      `${certPath} is the CA of cluster "${ca.clusterName}", not "${clusterName}"; use cluster name "${ca.clusterName}" or another data directory`,
    );
  }
  return { ca, created: false };
}

async function loadCaFiles(
  certPem: string,
  keyPem: string,
  certPath: string,
  keyPath: string,
): Promise<CertificateAuthority> {
  // Check each file alone first so the error names the file that is actually broken.
  try {
    if (!new X509Certificate(certPem).ca) throw new Error("not a CA certificate");
  } catch (error) {
    throw new PkiError(
      "corrupt",
      `${certPath} is not a valid CA certificate (${describeError(error)}); ${DO_NOT_REPLACE_CA}`,
      { cause: error },
    );
  }
  try {
    if (!isP256(createPrivateKey(keyPem))) throw new Error("not an ECDSA P-256 key");
  } catch (error) {
    throw new PkiError(
      "corrupt",
      `${keyPath} is not a valid ECDSA P-256 private key (${describeError(error)}); ${DO_NOT_REPLACE_CA}`,
      { cause: error },
    );
  }
  try {
    return await CertificateAuthority.load(certPem, keyPem);
  } catch (error) {
    throw new PkiError(
      "corrupt",
      `${keyPath} and ${certPath} do not form a CA (${describeError(error)}); ${DO_NOT_REPLACE_CA}`,
      { cause: error },
    );
  }
}

async function createCaFiles(
  dir: string,
  certPath: string,
  keyPath: string,
  clusterName: string,
  nowMs: number,
): Promise<CertificateAuthority> {
  const firstCreated = await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  // mkdir's mode is narrowed by the umask but never widened; set it exactly on what we made.
  if (firstCreated !== undefined) await fs.chmod(dir, 0o700);
  const { certPem, keyPem } = await createCertificateAuthority({ clusterName, nowMs });
  try {
    // Key first: a certificate on disk means its key is already there.
    await writeSecretFile(keyPath, keyPem, { exclusive: true });
    await writePublicFile(certPath, certPem, { exclusive: true });
  } catch (error) {
    if (errorCode(error) === "EEXIST") {
      throw new PkiError(
        "conflict",
        `another process created the CA in ${dir} at the same time; only one coordinator may use a data directory — stop the other one and start again`,
        { cause: error },
      );
    }
    throw error;
  }
  return CertificateAuthority.load(certPem, keyPem);
}

import { createHash, createPrivateKey, webcrypto, X509Certificate } from "node:crypto";
import * as fs from "node:fs/promises";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import * as tls from "node:tls";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  clusterIdFromCaPem,
  generateKeyAndCsr,
  identityFromCertificate,
  spiffeUri,
} from "../../api/identity.js";
import { x509 } from "../../lib/x509Runtime.js";
import {
  CertificateAuthority,
  CLOCK_SKEW_ALLOWANCE_MS,
  certificateValidity,
  createCertificateAuthority,
  type IssueOptions,
  loadOrCreateCa,
  PkiError,
  renewalDueAtMs,
  verifyIssuedBy,
} from "./pki.js";

const CLUSTER = "test";
const NOW_MS = 1_700_000_000_000;
const HOUR_MS = 3_600_000;

let ca: CertificateAuthority;

beforeAll(async () => {
  const { certPem, keyPem } = await createCertificateAuthority({
    clusterName: CLUSTER,
    nowMs: NOW_MS,
  });
  ca = await CertificateAuthority.load(certPem, keyPem);
});

async function newCa(clusterName: string, nowMs: number): Promise<CertificateAuthority> {
  const { certPem, keyPem } = await createCertificateAuthority({ clusterName, nowMs });
  return CertificateAuthority.load(certPem, keyPem);
}

function nodeOptions(name: string, overrides: Partial<IssueOptions> = {}): IssueOptions {
  return {
    subjectName: name,
    spiffeUri: spiffeUri(CLUSTER, "node", name),
    ttlMs: 24 * HOUR_MS,
    nowMs: NOW_MS,
    usage: "client",
    ...overrides,
  };
}

async function expectPkiError(promise: Promise<unknown>, kind: string, message?: RegExp) {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PkiError);
  expect((error as PkiError).kind).toBe(kind);
  if (message) expect((error as PkiError).message).toMatch(message);
  return error as PkiError;
}

function pemToDer(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
}

function derToPem(der: Uint8Array, label: string): string {
  const lines =
    Buffer.from(der)
      .toString("base64")
      .match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** A CSR that asks for an admin identity, a foreign cluster and extra names. */
async function greedyCsr(): Promise<{ keyPem: string; csrPem: string }> {
  const keys = await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: ["root"] }],
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: [
      new x509.SubjectAlternativeNameExtension([
        { type: "url", value: "spiffe://test/admin/root" },
        { type: "url", value: "spiffe://other/node/n1" },
        { type: "dns", value: "evil.example" },
      ]),
      new x509.BasicConstraintsExtension(true, undefined, true),
    ],
  });
  const keyPem = createPrivateKey({
    key: Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey)),
    format: "der",
    type: "pkcs8",
  })
    .export({ type: "pkcs8", format: "pem" })
    .toString();
  return { keyPem, csrPem: csr.toString("pem") };
}

describe("cluster CA", () => {
  it("REQ-060: is a self-signed P-256 CA named after the cluster, backdated for clock skew", async () => {
    const cert = new X509Certificate(ca.certPem);
    expect(cert.ca).toBe(true);
    expect(cert.subject).toBe("CN=test Cloudless CA");
    expect(cert.checkIssued(cert)).toBe(true);
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(cert.serialNumber).toMatch(/^[0-7][0-9A-F]{31}$/);
    expect(ca.clusterName).toBe(CLUSTER);
    expect(ca.notBeforeMs).toBe(NOW_MS - CLOCK_SKEW_ALLOWANCE_MS);
    expect(ca.notAfterMs).toBe(NOW_MS + 3650 * 86_400_000);
    expect(ca.fingerprintSha256).toBe(createHash("sha256").update(cert.raw).digest("hex"));
    expect(ca.fingerprintSha256).toBe(cert.fingerprint256.replaceAll(":", "").toLowerCase());
    // The cluster id every agent derives from the CA it holds (ADR 0030).
    expect(ca.clusterId).toBe(ca.fingerprintSha256.slice(0, 16));
    expect(clusterIdFromCaPem(ca.certPem)).toBe(ca.clusterId);

    const parsed = new x509.X509Certificate(ca.certPem);
    const constraints = parsed.getExtension(x509.BasicConstraintsExtension);
    expect(constraints?.critical).toBe(true);
    expect(constraints?.ca).toBe(true);
    const usages = parsed.getExtension(x509.KeyUsagesExtension);
    expect(usages?.critical).toBe(true);
    expect(usages?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
  });

  it("gives each CA a distinct random serial", async () => {
    const a = await createCertificateAuthority({ clusterName: CLUSTER, nowMs: NOW_MS });
    const b = await createCertificateAuthority({ clusterName: CLUSTER, nowMs: NOW_MS });
    expect(new X509Certificate(a.certPem).serialNumber).not.toBe(
      new X509Certificate(b.certPem).serialNumber,
    );
    expect(a.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----/);
  });

  it("refuses to load a CA whose key does not match its certificate", async () => {
    const a = await createCertificateAuthority({ clusterName: CLUSTER, nowMs: NOW_MS });
    const b = await createCertificateAuthority({ clusterName: CLUSTER, nowMs: NOW_MS });
    await expectPkiError(
      CertificateAuthority.load(a.certPem, b.keyPem),
      "invalidInput",
      /does not match/,
    );
    await expectPkiError(
      CertificateAuthority.load("garbage", a.keyPem),
      "invalidInput",
      /certificate/,
    );
    await expectPkiError(
      CertificateAuthority.load(a.certPem, "garbage"),
      "invalidInput",
      /private key/,
    );
  });

  it("refuses a cluster name that is not a DNS label", async () => {
    await expectPkiError(
      createCertificateAuthority({ clusterName: "Bad_Name", nowMs: NOW_MS }),
      "invalidInput",
      /cluster name/,
    );
  });
});

describe("issueFromCsr", () => {
  it("REQ-001: issues a node certificate that verifies against the CA and carries exactly the URI SAN the CA chose", async () => {
    const { keyPem, csrPem } = await greedyCsr();
    const issued = await ca.issueFromCsr(csrPem, nodeOptions("n1"));

    expect(verifyIssuedBy(issued.certPem, ca.certPem, NOW_MS)).toBe(true);
    const cert = new X509Certificate(issued.certPem);
    // Only what the CA decided: not the admin URI, the foreign cluster, the DNS name or CA:true.
    expect(cert.subjectAltName).toBe("URI:spiffe://test/node/n1");
    expect(cert.subject).toBe("CN=n1");
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.2"]);
    expect(cert.checkPrivateKey(createPrivateKey(keyPem))).toBe(true);
    expect(cert.serialNumber.toLowerCase()).toBe(issued.serial);
    expect(issued.serial).toMatch(/^[0-7][0-9a-f]{31}$/);

    const parsed = new x509.X509Certificate(issued.certPem);
    expect(parsed.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(false);
    expect(parsed.getExtension(x509.KeyUsagesExtension)?.usages).toBe(
      x509.KeyUsageFlags.digitalSignature,
    );
    const caKeyId = new x509.X509Certificate(ca.certPem).getExtension(
      x509.SubjectKeyIdentifierExtension,
    )?.keyId;
    expect(parsed.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(caKeyId);
    expect(parsed.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).toMatch(/^[0-9a-f]+$/);
    expect(parsed.notBefore.getTime()).toBe(NOW_MS - CLOCK_SKEW_ALLOWANCE_MS);
    expect(parsed.notAfter.getTime()).toBe(issued.notAfterMs);
    expect(issued.notAfterMs).toBe(NOW_MS + 24 * HOUR_MS);

    expect(identityFromCertificate(cert, CLUSTER)).toEqual({
      kind: "node",
      name: "n1",
      serial: issued.serial,
      notAfterMs: issued.notAfterMs,
    });
    expect(identityFromCertificate(cert, CLUSTER)?.role).toBeUndefined();
  });

  it("REQ-001: issues from a CSR made by generateKeyAndCsr", async () => {
    const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: "n2" });
    expect(keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(csrPem).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----/);
    const issued = await ca.issueFromCsr(csrPem, nodeOptions("n2"));
    const cert = new X509Certificate(issued.certPem);
    expect(cert.checkPrivateKey(createPrivateKey(keyPem))).toBe(true);
    expect(verifyIssuedBy(issued.certPem, ca.certPem, NOW_MS)).toBe(true);
  });

  it("REQ-001: refuses a CSR whose signature was tampered with", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "n3" });
    const der = pemToDer(csrPem);

    const badSignature = Buffer.from(der);
    badSignature[badSignature.length - 1]! ^= 0x01;
    await expectPkiError(
      ca.issueFromCsr(derToPem(badSignature, "CERTIFICATE REQUEST"), nodeOptions("n3")),
      "invalidCsr",
      /signature does not verify/,
    );

    // Altering the signed content (the "n3" in the subject) breaks the signature as well.
    const badSubject = Buffer.from(der);
    const at = badSubject.indexOf(Buffer.from("n3"));
    expect(at).toBeGreaterThan(0);
    badSubject[at + 1] = "4".charCodeAt(0);
    await expectPkiError(
      ca.issueFromCsr(derToPem(badSubject, "CERTIFICATE REQUEST"), nodeOptions("n3")),
      "invalidCsr",
      /signature does not verify/,
    );
  });

  it("refuses input that is not a P-256 PKCS#10 CSR", async () => {
    await expectPkiError(ca.issueFromCsr("hello", nodeOptions("n1")), "invalidCsr", /not PEM/);
    await expectPkiError(
      ca.issueFromCsr(derToPem(Buffer.from("junk"), "CERTIFICATE REQUEST"), nodeOptions("n1")),
      "invalidCsr",
      /not a valid PKCS#10/,
    );
    const keys = await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-384" }, true, [
      "sign",
      "verify",
    ]);
    const p384 = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: ["n1"] }],
      keys,
      signingAlgorithm: { name: "ECDSA", hash: "SHA-384" },
    });
    await expectPkiError(
      ca.issueFromCsr(p384.toString("pem"), nodeOptions("n1")),
      "invalidCsr",
      /P-256/,
    );
  });

  it("refuses identities for another cluster and malformed options", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "n1" });
    const cases: [Partial<IssueOptions>, RegExp][] = [
      [{ spiffeUri: "spiffe://other/node/n1" }, /names cluster "other"/],
      [{ spiffeUri: "https://test/node/n1" }, /not spiffe:/],
      [{ ttlMs: 0 }, /ttlMs/],
      [{ subjectName: "" }, /subjectName/],
      [{ dnsNames: ["not a name"] }, /DNS name/],
      [{ ipAddresses: ["300.1.1.1"] }, /IPv4 or IPv6/],
    ];
    for (const [override, message] of cases) {
      await expectPkiError(
        ca.issueFromCsr(csrPem, nodeOptions("n1", override)),
        "invalidInput",
        message,
      );
    }
  });

  it("will not issue past the CA's expiry, and caps lifetimes at it", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "n1" });
    await expectPkiError(
      ca.issueFromCsr(csrPem, nodeOptions("n1", { nowMs: ca.notAfterMs + 1 })),
      "caExpired",
      /expired/,
    );
    const late = await ca.issueFromCsr(
      csrPem,
      nodeOptions("n1", { nowMs: ca.notAfterMs - HOUR_MS, ttlMs: 30 * 86_400_000 }),
    );
    expect(late.notAfterMs).toBe(ca.notAfterMs);
  });
});

describe("issueKeyPair", () => {
  it("REQ-060: issues a server certificate with DNS and IP names and a matching PKCS#8 key", async () => {
    const issued = await ca.issueKeyPair({
      subjectName: "coordinator c1",
      spiffeUri: spiffeUri(CLUSTER, "coordinator", "c1"),
      ttlMs: HOUR_MS,
      nowMs: NOW_MS,
      usage: "clientAndServer",
      dnsNames: ["localhost", "coordinator.internal"],
      ipAddresses: ["127.0.0.1", "::1"],
    });
    expect(issued.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    const cert = new X509Certificate(issued.certPem);
    expect(cert.checkPrivateKey(createPrivateKey(issued.keyPem))).toBe(true);
    expect(cert.subjectAltName).toBe(
      "URI:spiffe://test/coordinator/c1, DNS:localhost, DNS:coordinator.internal, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1",
    );
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.2", "1.3.6.1.5.5.7.3.1"]);
    expect(cert.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(cert.checkHost("localhost")).toBe("localhost");
    expect(identityFromCertificate(cert, CLUSTER)).toMatchObject({
      kind: "coordinator",
      name: "c1",
    });
  });
});

describe("verifyIssuedBy", () => {
  it("REQ-060: a certificate from another CA, even one with the same cluster name, fails", async () => {
    const other = await newCa(CLUSTER, NOW_MS);
    const { csrPem } = await generateKeyAndCsr({ commonName: "n1" });
    const foreign = await other.issueFromCsr(csrPem, nodeOptions("n1"));
    expect(verifyIssuedBy(foreign.certPem, other.certPem, NOW_MS)).toBe(true);
    expect(verifyIssuedBy(foreign.certPem, ca.certPem, NOW_MS)).toBe(false);
  });

  it("REQ-060: checks the validity period at the given time", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "n1" });
    const issued = await ca.issueFromCsr(csrPem, nodeOptions("n1", { ttlMs: HOUR_MS }));
    expect(verifyIssuedBy(issued.certPem, ca.certPem, NOW_MS - CLOCK_SKEW_ALLOWANCE_MS)).toBe(true);
    expect(verifyIssuedBy(issued.certPem, ca.certPem, NOW_MS - CLOCK_SKEW_ALLOWANCE_MS - 1)).toBe(
      false,
    );
    expect(verifyIssuedBy(issued.certPem, ca.certPem, issued.notAfterMs)).toBe(true);
    expect(verifyIssuedBy(issued.certPem, ca.certPem, issued.notAfterMs + 1)).toBe(false);
  });

  it("returns false rather than throwing on garbage", () => {
    expect(verifyIssuedBy("nope", ca.certPem, NOW_MS)).toBe(false);
    expect(verifyIssuedBy(ca.certPem, "nope", NOW_MS)).toBe(false);
  });
});

describe("identityFromCertificate", () => {
  it("REQ-060: yields nothing for another cluster's identity or for the CA itself", async () => {
    const otherCa = await newCa("other", NOW_MS);
    const foreign = await otherCa.issueKeyPair({
      subjectName: "n1",
      spiffeUri: spiffeUri("other", "node", "n1"),
      ttlMs: HOUR_MS,
      nowMs: NOW_MS,
      usage: "client",
    });
    expect(identityFromCertificate(new X509Certificate(foreign.certPem), CLUSTER)).toBeUndefined();
    expect(identityFromCertificate(new X509Certificate(ca.certPem), CLUSTER)).toBeUndefined();
  });

  it("REQ-060: yields nothing when the URI SAN is missing, ambiguous or malformed", async () => {
    const keys = await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
      "sign",
      "verify",
    ]);
    const selfSigned = async (uris: string[]) => {
      const extensions =
        uris.length === 0
          ? []
          : [
              new x509.SubjectAlternativeNameExtension(
                uris.map((value) => ({ type: "url", value })),
              ),
            ];
      const cert = await x509.X509CertificateGenerator.createSelfSigned({
        name: [{ CN: ["x"] }],
        keys,
        notBefore: new Date(NOW_MS),
        notAfter: new Date(NOW_MS + HOUR_MS),
        extensions,
      });
      return new X509Certificate(cert.toString("pem"));
    };
    expect(identityFromCertificate(await selfSigned([]), CLUSTER)).toBeUndefined();
    expect(
      identityFromCertificate(
        await selfSigned(["spiffe://test/node/a", "spiffe://test/admin/b"]),
        CLUSTER,
      ),
    ).toBeUndefined();
    expect(
      identityFromCertificate(await selfSigned(["spiffe://test/node/a/extra"]), CLUSTER),
    ).toBeUndefined();
    expect(
      identityFromCertificate(await selfSigned(["spiffe://test/root/a"]), CLUSTER),
    ).toBeUndefined();
    expect(
      identityFromCertificate(await selfSigned(["spiffe://test/node/a"]), CLUSTER),
    ).toMatchObject({ kind: "node", name: "a" });
    // A user needs exactly one known role; a role on any other kind is not ours (ADR 0051).
    for (const uris of [
      ["spiffe://test/user/u"],
      ["spiffe://test/user/u", "urn:cloudless:role:root"],
      ["spiffe://test/user/u", "urn:cloudless:role:viewer", "urn:cloudless:role:admin"],
      ["spiffe://test/node/a", "urn:cloudless:role:admin"],
      ["spiffe://test/admin/admin", "urn:cloudless:role:viewer"],
    ]) {
      expect(identityFromCertificate(await selfSigned(uris), CLUSTER), uris.join(" ")).toBe(
        undefined,
      );
    }
    expect(
      identityFromCertificate(
        await selfSigned(["spiffe://test/user/u", "urn:cloudless:role:operator"]),
        CLUSTER,
      ),
    ).toMatchObject({ kind: "user", name: "u", role: "operator" });
    expect(
      identityFromCertificate(await selfSigned(["spiffe://test/admin/admin"]), CLUSTER),
    ).toMatchObject({ kind: "admin", role: "admin" });
  });

  it("NFR-S1 issues a user certificate whose role is bound by a second URI SAN, and only for a user", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "anything" });
    const issued = await ca.issueFromCsr(csrPem, {
      subjectName: "vera",
      spiffeUri: spiffeUri(CLUSTER, "user", "vera"),
      role: "viewer",
      ttlMs: HOUR_MS,
      nowMs: NOW_MS,
      usage: "client",
    });
    const cert = new X509Certificate(issued.certPem);
    expect(cert.subjectAltName).toBe(
      `URI:spiffe://${CLUSTER}/user/vera, URI:urn:cloudless:role:viewer`,
    );
    expect(identityFromCertificate(cert, CLUSTER)).toMatchObject({
      kind: "user",
      name: "vera",
      role: "viewer",
      serial: issued.serial,
    });
    const options = { subjectName: "x", ttlMs: HOUR_MS, nowMs: NOW_MS, usage: "client" as const };
    await expect(
      ca.issueFromCsr(csrPem, { ...options, spiffeUri: spiffeUri(CLUSTER, "user", "x") }),
    ).rejects.toThrow("a role is given with a user SPIFFE ID, and only with one");
    await expect(
      ca.issueFromCsr(csrPem, {
        ...options,
        spiffeUri: spiffeUri(CLUSTER, "node", "x"),
        role: "admin",
      }),
    ).rejects.toThrow("a role is given with a user SPIFFE ID, and only with one");
  });
});

describe("renewal", () => {
  it("is due two thirds into a certificate's lifetime", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "n1" });
    const issued = await ca.issueFromCsr(csrPem, nodeOptions("n1", { ttlMs: 3 * HOUR_MS }));
    const validity = certificateValidity(issued.certPem);
    expect(validity).toEqual({
      notBeforeMs: NOW_MS - CLOCK_SKEW_ALLOWANCE_MS,
      notAfterMs: issued.notAfterMs,
      serial: issued.serial,
    });
    const dueMs = renewalDueAtMs(validity);
    expect(dueMs).toBeGreaterThan(NOW_MS);
    expect(dueMs).toBeLessThan(issued.notAfterMs);
    expect(dueMs).toBe(
      validity.notBeforeMs + Math.floor(((validity.notAfterMs - validity.notBeforeMs) * 2) / 3),
    );
  });
});

describe("CA files", () => {
  let root: string;

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), "cloudless-pki-"));
  });

  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  const modeOf = async (p: string) => (await fs.stat(p)).mode & 0o777;

  async function snapshot(dir: string) {
    const names = (await fs.readdir(dir)).sort();
    const files = await Promise.all(
      names.map(async (name) => {
        const p = path.join(dir, name);
        const stat = await fs.stat(p);
        return { name, bytes: await fs.readFile(p), mtimeMs: stat.mtimeMs, mode: stat.mode };
      }),
    );
    return files;
  }

  it("NFR-S1: creates the CA with the directory 0700, ca.key 0600 and ca.crt 0644", async () => {
    const dir = path.join(root, "pki");
    const { ca: created, created: wasCreated } = await loadOrCreateCa(dir, CLUSTER, NOW_MS);
    expect(wasCreated).toBe(true);
    expect(await modeOf(dir)).toBe(0o700);
    expect(await modeOf(path.join(dir, "ca.key"))).toBe(0o600);
    expect(await modeOf(path.join(dir, "ca.crt"))).toBe(0o644);
    expect((await fs.readdir(dir)).sort()).toEqual(["ca.crt", "ca.key"]);
    expect(await fs.readFile(path.join(dir, "ca.crt"), "utf8")).toBe(created.certPem);
    expect(created.clusterName).toBe(CLUSTER);
  });

  it("NFR-S1: sets the modes exactly whatever the process umask", async () => {
    for (const umask of [0o000, 0o077]) {
      const previous = process.umask(umask);
      try {
        const dir = path.join(root, `pki-${umask.toString(8)}`);
        await loadOrCreateCa(dir, CLUSTER, NOW_MS);
        expect(await modeOf(dir)).toBe(0o700);
        expect(await modeOf(path.join(dir, "ca.key"))).toBe(0o600);
        expect(await modeOf(path.join(dir, "ca.crt"))).toBe(0o644);
      } finally {
        process.umask(previous);
      }
    }
  });

  it("NFR-S1: is idempotent: a second start loads the same CA and touches nothing", async () => {
    const dir = path.join(root, "pki");
    const first = await loadOrCreateCa(dir, CLUSTER, NOW_MS);
    const before = await snapshot(dir);
    const second = await loadOrCreateCa(dir, CLUSTER, NOW_MS + HOUR_MS);
    expect(second.created).toBe(false);
    expect(second.ca.fingerprintSha256).toBe(first.ca.fingerprintSha256);
    expect(await snapshot(dir)).toEqual(before);
    // The loaded CA can sign, and what it signs verifies against the original.
    const { csrPem } = await generateKeyAndCsr({ commonName: "n1" });
    const issued = await second.ca.issueFromCsr(csrPem, nodeOptions("n1"));
    expect(verifyIssuedBy(issued.certPem, first.ca.certPem, NOW_MS)).toBe(true);
  });

  it("NFR-S1: a truncated ca.key is reported as corrupt and the files are left untouched", async () => {
    const dir = path.join(root, "pki");
    await loadOrCreateCa(dir, CLUSTER, NOW_MS);
    const keyPath = path.join(dir, "ca.key");
    const key = await fs.readFile(keyPath, "utf8");
    await fs.writeFile(keyPath, key.slice(0, key.length / 2));
    const before = await snapshot(dir);
    const error = await expectPkiError(loadOrCreateCa(dir, CLUSTER, NOW_MS), "corrupt");
    expect(error.message).toContain(keyPath);
    expect(error.message).toContain("restore it from a backup or move the directory aside");
    expect(error.message).toContain("will not create a new CA over an existing one");
    expect(error.message).not.toContain("\n");
    expect(await snapshot(dir)).toEqual(before);
  });

  it("NFR-S1: an orphan ca.crt without its key is corrupt, not a reason to make a new CA", async () => {
    const dir = path.join(root, "pki");
    await loadOrCreateCa(dir, CLUSTER, NOW_MS);
    await fs.rm(path.join(dir, "ca.key"));
    const before = await snapshot(dir);
    await expectPkiError(loadOrCreateCa(dir, CLUSTER, NOW_MS), "corrupt", /ca\.key is missing/);
    expect(await snapshot(dir)).toEqual(before);
  });

  it("NFR-S1: an orphan ca.key without its certificate is corrupt", async () => {
    const dir = path.join(root, "pki");
    await loadOrCreateCa(dir, CLUSTER, NOW_MS);
    await fs.rm(path.join(dir, "ca.crt"));
    await expectPkiError(loadOrCreateCa(dir, CLUSTER, NOW_MS), "corrupt", /ca\.crt is missing/);
    expect(await fs.readdir(dir)).toEqual(["ca.key"]);
  });

  it("NFR-S1: a garbled ca.crt or a ca.key from another CA is corrupt", async () => {
    const dir = path.join(root, "pki");
    await loadOrCreateCa(dir, CLUSTER, NOW_MS);
    const certPath = path.join(dir, "ca.crt");
    const goodCert = await fs.readFile(certPath, "utf8");
    await fs.writeFile(certPath, "not a certificate");
    await expectPkiError(loadOrCreateCa(dir, CLUSTER, NOW_MS), "corrupt", /ca\.crt is not a valid/);

    await fs.writeFile(certPath, goodCert);
    const other = await createCertificateAuthority({ clusterName: CLUSTER, nowMs: NOW_MS });
    await fs.writeFile(path.join(dir, "ca.key"), other.keyPem);
    await expectPkiError(loadOrCreateCa(dir, CLUSTER, NOW_MS), "corrupt", /does not match/);
  });

  it("refuses to load another cluster's CA", async () => {
    const dir = path.join(root, "pki");
    await loadOrCreateCa(dir, "blue", NOW_MS);
    await expectPkiError(loadOrCreateCa(dir, "green", NOW_MS), "clusterMismatch", /cluster "blue"/);
  });
});

describe("mutual TLS with issued certificates", () => {
  const servers: tls.Server[] = [];

  afterEach(async () => {
    await Promise.all(
      servers
        .splice(0)
        .map((server) => new Promise<void>((resolve) => server.close(() => resolve()))),
    );
  });

  type Seen = { authorized: boolean; error: string | null; identity: unknown };

  async function startServer(serverCert: { certPem: string; keyPem: string }): Promise<number> {
    const server = tls.createServer(
      {
        cert: serverCert.certPem,
        key: serverCert.keyPem,
        ca: [ca.certPem],
        requestCert: true,
        // Let unauthorized clients finish the handshake so the test can observe the verdict.
        rejectUnauthorized: false,
      },
      (socket) => {
        const peer = socket.getPeerX509Certificate();
        const seen: Seen = {
          authorized: socket.authorized,
          error: socket.authorizationError ? String(socket.authorizationError) : null,
          identity: socket.authorized && peer ? identityFromCertificate(peer, CLUSTER) : null,
        };
        socket.end(JSON.stringify(seen));
      },
    );
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return (server.address() as AddressInfo).port;
  }

  function connect(port: number, client: { certPem: string; keyPem: string }): Promise<Seen> {
    return new Promise((resolve, reject) => {
      let received = "";
      const socket = tls.connect({
        host: "127.0.0.1",
        port,
        ca: [ca.certPem],
        cert: client.certPem,
        key: client.keyPem,
      });
      socket.setTimeout(10_000, () => socket.destroy(new Error("TLS test connection timed out")));
      socket.setEncoding("utf8");
      socket.on("data", (chunk: string) => {
        received += chunk;
      });
      socket.on("end", () => {
        try {
          resolve(JSON.parse(received) as Seen);
        } catch (error) {
          reject(error);
        }
      });
      socket.on("error", reject);
    });
  }

  it("REQ-060: a client certificate from the cluster CA is authorized; one from another CA is not", async () => {
    // OpenSSL checks validity against the real clock, so these certificates use it too.
    const nowMs = Date.now();
    const server = await ca.issueKeyPair({
      subjectName: "coordinator c1",
      spiffeUri: spiffeUri(CLUSTER, "coordinator", "c1"),
      ttlMs: HOUR_MS,
      nowMs,
      usage: "server",
      ipAddresses: ["127.0.0.1"],
    });
    const port = await startServer(server);

    const admin = await ca.issueKeyPair({
      subjectName: "alice",
      spiffeUri: spiffeUri(CLUSTER, "admin", "alice"),
      ttlMs: HOUR_MS,
      nowMs,
      usage: "client",
    });
    const accepted = await connect(port, admin);
    expect(accepted.authorized).toBe(true);
    expect(accepted.identity).toMatchObject({ kind: "admin", name: "alice", serial: admin.serial });

    const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: "n1" });
    const node = await ca.issueFromCsr(csrPem, nodeOptions("n1", { nowMs }));
    const nodeSeen = await connect(port, { certPem: node.certPem, keyPem });
    expect(nodeSeen).toMatchObject({ authorized: true, identity: { kind: "node", name: "n1" } });

    const impostorCa = await newCa(CLUSTER, nowMs);
    const impostor = await impostorCa.issueKeyPair({
      subjectName: "alice",
      spiffeUri: spiffeUri(CLUSTER, "admin", "alice"),
      ttlMs: HOUR_MS,
      nowMs,
      usage: "client",
    });
    const refused = await connect(port, impostor);
    expect(refused.authorized).toBe(false);
    expect(refused.error).toBeTruthy();
    expect(refused.identity).toBeNull();
  });
});

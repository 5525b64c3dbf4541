import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import * as tls from "node:tls";
import { CloudlessError } from "../api/errors.js";

/**
 * Before a joining agent sends its token, it makes sure it talks to the cluster the
 * token belongs to: the token carries the SHA-256 of the cluster CA, the server
 * sends its CA with its certificate, and the agent checks both the fingerprint and
 * the signature. Returns the CA certificate (PEM) to trust from then on.
 */
export async function fetchPinnedCa(
  url: string,
  caFingerprintSha256: string,
  timeoutMs = 10_000,
): Promise<string> {
  const target = new URL(url);
  const port = Number(target.port || 443);
  const host = target.hostname.replace(/^\[|\]$/g, "");
  const chain = await new Promise<tls.DetailedPeerCertificate>((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      // Verification happens below, against the pinned fingerprint.
      rejectUnauthorized: false,
      ALPNProtocols: ["h2"],
      ...(isIP(host) ? {} : { servername: host }),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(CloudlessError.unavailable(`no TLS answer from ${url} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      const certificate = socket.getPeerCertificate(true);
      socket.end();
      resolve(certificate);
    });
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(
        CloudlessError.unavailable(`cannot reach the coordinator at ${url}: ${error.message}`),
      );
    });
  });
  if (!chain?.raw) {
    throw CloudlessError.unavailable(`the server at ${url} presented no certificate`);
  }
  const leaf = new X509Certificate(chain.raw);
  const wanted = caFingerprintSha256.toLowerCase();
  let cursor: tls.DetailedPeerCertificate | undefined = chain;
  for (let depth = 0; cursor && depth < 5; depth++) {
    const candidate = new X509Certificate(cursor.raw);
    const fingerprint = candidate.fingerprint256.replaceAll(":", "").toLowerCase();
    if (fingerprint === wanted && candidate.ca && leaf.verify(candidate.publicKey)) {
      return candidate.toString();
    }
    cursor = cursor.issuerCertificate === cursor ? undefined : cursor.issuerCertificate;
  }
  throw CloudlessError.unauthenticated(
    `the server at ${url} is not the cluster this token belongs to (CA fingerprint mismatch); check --join and the token`,
  );
}

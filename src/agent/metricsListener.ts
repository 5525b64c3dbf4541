import { X509Certificate } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import { CloudlessError } from "../api/errors.js";
import { identityFromCertificate } from "../api/identity.js";
import type { Logger } from "../observe/logger.js";
import { metricsPath, type Registry, writeMetrics } from "../observe/metrics.js";

export interface MetricsListenerCredentials {
  /** The node's certificate (issued for client and server use) and its key. */
  certPem: string;
  keyPem: string;
  /** The cluster CA: the only issuer whose client certificates are accepted. */
  caPem: string;
}

export interface MetricsListenerOptions extends MetricsListenerCredentials {
  host: string;
  /** 0 picks a free port. */
  port: number;
  clusterName: string;
  registry: Registry;
  logger: Logger;
}

export interface MetricsListener {
  /** https://host:port/metrics */
  url: string;
  port: number;
  /** Presents a renewed node certificate from now on. */
  updateCredentials(credentials: MetricsListenerCredentials): void;
  close(): Promise<void>;
}

const handshakeTimeoutMs = 10_000;
const serverAuthOid = "1.3.6.1.5.5.7.3.1";

/** Node certificates issued before 0009 are client-only; they are replaced at renewal. */
function canServe(certPem: string): boolean {
  const usages = new X509Certificate(certPem).keyUsage;
  return usages === undefined || usages.includes(serverAuthOid);
}
const maxConnections = 64;

/**
 * The agent's only listener (docs/decisions/0009-agent-metrics-listener.md): opt-in,
 * HTTPS with the node's certificate, and mutual TLS — the handshake itself fails for a
 * client without a certificate from the cluster CA (NFR-S1). It serves GET /metrics and
 * nothing else.
 */
export async function startMetricsListener(
  options: MetricsListenerOptions,
): Promise<MetricsListener> {
  const server = https.createServer(
    {
      key: options.keyPem,
      cert: options.certPem,
      ca: options.caPem,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: "TLSv1.2",
      handshakeTimeout: handshakeTimeoutMs,
    },
    (request, response) => {
      handle(options, request, response).catch((error: unknown) => {
        options.logger.warn({ err: error }, "metrics request failed");
        response.destroy();
      });
    },
  );
  if (!canServe(options.certPem)) {
    options.logger.warn(
      "the node certificate was issued for client use only (before metrics listeners existed); scrapers that check key usage, such as Prometheus, refuse it until the agent renews it",
    );
  }
  server.maxConnections = maxConnections;
  server.headersTimeout = handshakeTimeoutMs;
  server.requestTimeout = 30_000;
  server.on("tlsClientError", (error) => {
    options.logger.debug({ err: error }, "metrics listener: TLS handshake refused");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  }).catch((error: unknown) => {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") {
      throw CloudlessError.unavailable(
        `--metrics-port ${options.port} on ${options.host} is already in use; choose another port`,
      );
    }
    if (code === "EACCES") {
      throw CloudlessError.permissionDenied(
        `not allowed to listen on ${options.host}:${options.port}; choose a port above 1024 with --metrics-port`,
      );
    }
    if (code === "EADDRNOTAVAIL") {
      throw CloudlessError.invalid(
        `--metrics-host ${options.host} is not an address of this machine`,
      );
    }
    throw error;
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.host.includes(":") ? `[${options.host}]` : options.host;
  return {
    url: `https://${host}:${port}${metricsPath}`,
    port,
    updateCredentials(credentials) {
      server.setSecureContext({
        key: credentials.keyPem,
        cert: credentials.certPem,
        ca: credentials.caPem,
      });
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

async function handle(
  options: MetricsListenerOptions,
  request: IncomingMessage,
  response: ServerResponse,
): Promise<void> {
  // The handshake already required a certificate chaining to the cluster CA; it must
  // also carry an identity of this cluster (admin, node or coordinator).
  const raw = (request.socket as TLSSocket).getPeerCertificate(false)?.raw;
  const identity = raw
    ? identityFromCertificate(new X509Certificate(raw), options.clusterName)
    : undefined;
  if (!identity) {
    response.writeHead(403, { "content-type": "text/plain" });
    response.end("the client certificate carries no identity of this cluster\n");
    return;
  }
  const pathname = (request.url ?? "").split("?")[0];
  if (pathname !== metricsPath) {
    response.writeHead(404, { "content-type": "text/plain" });
    response.end("only /metrics is served here\n");
    return;
  }
  await writeMetrics(options.registry, request, response);
}

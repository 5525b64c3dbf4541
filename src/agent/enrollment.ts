/**
 * Joining the cluster (REQ-001): the saved identity when there is one, else enrollment
 * with a bootstrap token against the join URLs (any coordinator that answers may enroll;
 * a follower names the leader).
 */
import { hostname } from "node:os";
import { CloudlessError, fromConnectError } from "../api/errors.js";
import { generateKeyAndCsr, validateNodeName } from "../api/identity.js";
import { parseToken } from "../api/token.js";
import { leaderHint } from "../client/endpoints.js";
import { fetchPinnedCa } from "../client/pinning.js";
import { createClients, createCoordinatorTransport } from "../client/transport.js";
import { type Clock, systemClock } from "../lib/clock.js";
import type { Logger } from "../observe/logger.js";
import { type AgentIdentity, loadIdentity, saveIdentity } from "./identity.js";

export interface EnrollmentOptions {
  /** Coordinator URLs; required to join, optional afterwards (the saved ones are used). */
  joinUrls?: string[];
  token?: string;
  name?: string;
  region?: string;
  zone?: string;
  labels?: Record<string, string>;
  clock?: Clock;
}

/**
 * The identity saved in `dataDir` (with new join URLs remembered), or a new one from
 * enrollment. A data dir holds one node: another --name is refused.
 */
export async function loadOrEnroll(
  options: EnrollmentOptions,
  dataDir: string,
  logger: Logger,
): Promise<AgentIdentity> {
  let identity = await loadIdentity(dataDir);
  if (!identity) return enroll(options, dataDir, logger);
  if (options.name && options.name !== identity.nodeName) {
    throw CloudlessError.invalid(
      `data dir ${dataDir} holds the identity of node "${identity.nodeName}", not "${options.name}"; use another --data-dir for a second node`,
    );
  }
  if (options.joinUrls && options.joinUrls.length > 0) {
    identity = { ...identity, servers: options.joinUrls };
    await saveIdentity(dataDir, identity);
  }
  logger.info({ node: identity.nodeName }, "reusing saved identity; no token needed");
  return identity;
}

async function enroll(
  options: EnrollmentOptions,
  dataDir: string,
  logger: Logger,
): Promise<AgentIdentity> {
  const joinUrls = options.joinUrls ?? [];
  if (joinUrls.length === 0 || !options.token) {
    throw CloudlessError.invalid(
      `this agent has not joined a cluster yet (no identity in ${dataDir}); pass --join URL --token TOKEN`,
    );
  }
  const parsed = parseToken(options.token);
  if (!parsed.ok) throw CloudlessError.invalid(parsed.reason);
  const nodeName = options.name ?? defaultNodeName();
  // The coordinator refuses a bad name too, naming its API field; said here for the flag.
  const nameCheck = validateNodeName(nodeName);
  if (!nameCheck.ok) throw CloudlessError.invalid(`--name: ${nameCheck.reason}`);
  const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: nodeName });
  // Each join URL in turn (and a leader a follower names): any coordinator that
  // answers may be the one that enrolls. Only unreachable ones are skipped; a refused
  // token is an answer.
  const candidates = [...joinUrls];
  const failures: string[] = [];
  for (let i = 0; i < candidates.length && i < joinUrls.length + 2; i++) {
    const joinUrl = candidates[i] as string;
    try {
      const caPem = await fetchPinnedCa(joinUrl, parsed.caFingerprint);
      // The cluster name is only known after enrollment; for this one call any
      // coordinator certificate from the pinned CA is accepted.
      const clients = createClients(createCoordinatorTransport({ baseUrl: joinUrl, caPem }));
      const response = await clients.nodes.enroll({
        token: options.token,
        name: nodeName,
        csrPem,
        region: options.region ?? "",
        zone: options.zone ?? "",
        labels: options.labels ?? {},
      });
      const identity: AgentIdentity = {
        nodeName: response.nodeName,
        clusterName: response.clusterName,
        ...(response.nodeUid ? { nodeUid: response.nodeUid } : {}),
        servers: joinUrls,
        caPem: response.caPem,
        certPem: response.certificatePem,
        keyPem,
        certReceivedAtMs: (options.clock ?? systemClock).nowMs(),
      };
      await saveIdentity(dataDir, identity);
      logger.info({ node: nodeName, cluster: response.clusterName, url: joinUrl }, "enrolled");
      return identity;
    } catch (error) {
      const hint = leaderHint(error);
      if (hint?.leaderUrl && !candidates.includes(hint.leaderUrl)) {
        candidates.splice(i + 1, 0, hint.leaderUrl);
      }
      const normalized = fromConnectError(error);
      if (normalized.code !== "Unavailable" || joinUrls.length === 1) throw normalized;
      failures.push(`${joinUrl}: ${normalized.message}`);
      logger.warn({ url: joinUrl, err: normalized.message }, "enrollment failed; trying the next");
    }
  }
  throw CloudlessError.unavailable(
    `could not enroll with any coordinator (${failures.join("; ")}); check the --join URLs`,
  );
}

function defaultNodeName(): string {
  const name = hostname()
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 63);
  return name || "node";
}

import type { Client } from "@connectrpc/connect";
import type { ConfigService } from "../../api/gen/cloudless/v1/config_pb.js";
import type { SecretService } from "../../api/gen/cloudless/v1/secret_pb.js";
import type { Clock } from "../../lib/clock.js";
import type { FetchSource } from "./replicaFiles.js";
import { ReplicaTokenCache } from "./replicaTokenCache.js";

export interface SourceClients {
  secrets: Client<typeof SecretService>;
  configs: Client<typeof ConfigService>;
}

/** A fetcher that also drops a replica's token when the replica goes. */
export type CoordinatorFetch = FetchSource & { forget(replicaId: string): void };

/**
 * Reads a replica's secret or config from the coordinator the agent is connected to,
 * with its node certificate and the replica's token (ADR 0058): the coordinator answers
 * only for a replica assigned to this node whose spec names the source (replicaAccess.ts),
 * and audits each delivery.
 */
export function coordinatorFetch(clients: () => SourceClients, clock: Clock): CoordinatorFetch {
  const tokens = new ReplicaTokenCache(async (replica, signal) => {
    const response = await clients().secrets.issueReplicaToken(replica, { signal });
    const expiresAt = response.expiresAt;
    // A response without an expiry is used once: it is never reused from the cache.
    const expiresAtMs = expiresAt
      ? Number(expiresAt.seconds) * 1000 + Math.floor(expiresAt.nanos / 1e6)
      : 0;
    return { token: response.token, expiresAtMs };
  }, clock);
  const fetch = async (
    request: Parameters<FetchSource>[0],
    signal: AbortSignal,
  ): ReturnType<FetchSource> => {
    const replica = {
      namespace: request.namespace,
      workload: request.workload,
      replicaId: request.replicaId,
    };
    const token = await tokens.token(replica, signal);
    const message = { ...replica, name: request.name, token };
    try {
      const response =
        request.kind === "secret"
          ? await clients().secrets.readReplicaSecret(message, { signal })
          : await clients().configs.readReplicaConfig(message, { signal });
      return { version: response.version, data: response.data };
    } catch (error) {
      // A refused token (expired by the coordinator's clock, its key gone) is not reused.
      tokens.forget(request.replicaId);
      throw error;
    }
  };
  return Object.assign(fetch, { forget: (replicaId: string) => tokens.forget(replicaId) });
}

import type { Client } from "@connectrpc/connect";
import type { ConfigService } from "../../api/gen/cloudless/v1/config_pb.js";
import type { SecretService } from "../../api/gen/cloudless/v1/secret_pb.js";
import type { FetchSource } from "./replicaFiles.js";

export interface SourceClients {
  secrets: Client<typeof SecretService>;
  configs: Client<typeof ConfigService>;
}

/**
 * Reads a replica's secret or config from the coordinator the agent is connected to,
 * with its node certificate: the coordinator answers only for a replica assigned to
 * this node whose spec names the source (replicaAccess.ts), and audits each delivery.
 */
export function coordinatorFetch(clients: () => SourceClients): FetchSource {
  return async (request, signal) => {
    const message = {
      namespace: request.namespace,
      workload: request.workload,
      replicaId: request.replicaId,
      name: request.name,
    };
    const response =
      request.kind === "secret"
        ? await clients().secrets.readReplicaSecret(message, { signal })
        : await clients().configs.readReplicaConfig(message, { signal });
    return { version: response.version, data: response.data };
  };
}

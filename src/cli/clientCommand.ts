import { ConnectError } from "@connectrpc/connect";
import { type ClientCredentials, loadClientConfig, resolveConfigPath } from "../client/config.js";
import {
  type CoordinatorClients,
  createClients,
  createCoordinatorTransport,
} from "../client/transport.js";
import { fromConnectError } from "../control/api/errorMapping.js";
import { CloudlessError } from "../lib/errors.js";

export interface ClientContext {
  clients: CoordinatorClients;
  credentials: ClientCredentials;
  server: string;
}

/** Loads the client config and connects to the first coordinator in it. */
export async function connect(configFlag: string | undefined): Promise<ClientContext> {
  const credentials = await loadClientConfig(resolveConfigPath(configFlag));
  const server = credentials.servers[0] as string;
  const transport = createCoordinatorTransport({
    baseUrl: server,
    clusterName: credentials.clusterName,
    caPem: credentials.caPem,
    certPem: credentials.certPem,
    keyPem: credentials.keyPem,
  });
  return { clients: createClients(transport), credentials, server };
}

/** Turns an RPC failure into the one line a user sees. */
export function describeClientError(error: unknown, server?: string): CloudlessError {
  const normalized = fromConnectError(error);
  if (error instanceof ConnectError && normalized.code === "Unavailable" && server) {
    const detail = error.rawMessage.replace(/^\[\w+\]\s*/, "");
    return CloudlessError.unavailable(
      `cannot reach the coordinator at ${server} (${detail}); is it running?`,
    );
  }
  return normalized;
}

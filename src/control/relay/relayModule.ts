/**
 * The coordinator's mesh relay (issue 14, REQ-003, ADR 0046): nodes behind NAT keep a
 * listen stream here, and a node that cannot dial one asks the relay to join its stream
 * to one the NATed node opens. Served on the API port (the one port every agent can
 * already reach) for node identities only; the two agents run their own TLS session
 * inside the joined streams, so the relay moves ciphertext. Every coordinator relays, not
 * only the leader: agents keep a listen stream to each.
 */
import { handleRelayRequest, RELAY_PATH_PREFIX, RelayHub } from "../../lib/mesh/relayHub.js";
import { nodeRegistryKey } from "../membership/membershipModule.js";
import type { ModuleDefinition } from "../modules/module.js";

/**
 * How often the relay re-reads the member list: a deleted node's relay streams and flows
 * end within this (its new requests are refused at once, by the certificate check).
 */
const memberRefreshMs = 10_000;

export const relayModule: ModuleDefinition = {
  name: "relay",
  start(context) {
    const nodes = context.use(nodeRegistryKey);
    const logger = context.logger.child({ component: "relay" });
    let members = new Set<string>();
    const hub = new RelayHub({ isMember: (node) => members.has(node), logger });
    let refreshing = false;
    const refresh = async () => {
      if (refreshing) return;
      refreshing = true;
      try {
        members = new Set((await nodes.list()).map((node) => node.name));
        hub.evictNonMembers();
      } catch (error) {
        // Keep the last list: a store outage must not cut relayed flows.
        logger.debug({ err: error }, "could not refresh the relay's member list");
      } finally {
        refreshing = false;
      }
    };
    void refresh();
    const timer = setInterval(() => void refresh(), memberRefreshMs);
    timer.unref();
    return {
      streamRoutes: [
        {
          prefix: RELAY_PATH_PREFIX,
          handle(request, response, caller) {
            if (caller.kind !== "node") {
              response.writeHead(403, { "content-type": "text/plain" });
              response.end("only nodes use the mesh relay\n");
              return;
            }
            // The server checked this caller is a current member; a node that joined
            // since the last refresh is one.
            members.add(caller.name);
            handleRelayRequest(hub, request, response, caller.name);
          },
        },
      ],
      async stop() {
        clearInterval(timer);
        hub.close();
      },
    };
  },
};

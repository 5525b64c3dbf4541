import { CloudlessError } from "../../api/errors.js";
import { NodeService } from "../../api/gen/cloudless/v1/node_pb.js";
import { type AuditTarget, auditedMethodName, stringField } from "../api/audit.js";
import { HeartbeatHooks } from "../api/heartbeatHooks.js";
import { nodeServiceImpl } from "../api/nodeService.js";
import { eventsKey } from "../events/eventsModule.js";
import { membershipKey, nodeRegistryKey } from "../membership/membershipModule.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";
import { tokensKey } from "../tokens/tokensModule.js";
import { workloadPlaneKey } from "../workloads/workloadsModule.js";

const defaultNodeCertTtlMs = 24 * 3600 * 1000;

/** The open heartbeat streams per node, so deleting a node or a demotion can end them. */
export type NodeStreams = Map<string, Set<AbortController>>;
export const nodeStreamsKey = moduleKey<NodeStreams>("node streams");
/** Lets later modules push down and read from every heartbeat stream (services, storage). */
export const heartbeatHooksKey = moduleKey<HeartbeatHooks>("heartbeat hooks");

/** The node a request names. */
const namedNode: AuditTarget = ({ request }) => {
  const name = stringField(request, "name");
  return name ? `node/${name}` : "";
};

/** The node API's state-changing methods (NFR-C1). */
const nodeAuditTargets = new Map<string, AuditTarget>([
  [auditedMethodName(NodeService.method.enroll), namedNode],
  [
    auditedMethodName(NodeService.method.renewCertificate),
    ({ peer }) => (peer.identity?.kind === "node" ? `node/${peer.identity.name}` : ""),
  ],
  [auditedMethodName(NodeService.method.cordonNode), namedNode],
  [auditedMethodName(NodeService.method.uncordonNode), namedNode],
  [auditedMethodName(NodeService.method.drainNode), namedNode],
  [auditedMethodName(NodeService.method.deleteNode), namedNode],
]);

/** The node API: enrollment, heartbeat streams, node list and cordon/drain/delete. */
export const nodesModule: ModuleDefinition = {
  name: "nodes",
  start(context) {
    const streams: NodeStreams = new Map();
    context.provide(nodeStreamsKey, streams);
    const hooks = new HeartbeatHooks();
    context.provide(heartbeatHooksKey, hooks);
    const plane = context.use(workloadPlaneKey);
    const deps = {
      clusterName: context.clusterName,
      ca: context.ca,
      nodeCertTtlMs: context.options.nodeCertTtlMs ?? defaultNodeCertTtlMs,
      store: context.store,
      clock: context.clock,
      rng: context.rng,
      logger: context.logger,
      metrics: context.metrics,
      leadership: context.leadership,
      nodes: context.use(nodeRegistryKey),
      tokens: context.use(tokensKey),
      events: context.use(eventsKey),
      membership: context.use(membershipKey),
      nodeStreams: streams,
      hooks,
      ...plane,
    };
    return {
      routes: (router) => {
        router.service(NodeService, nodeServiceImpl(deps));
      },
      audited: nodeAuditTargets,
      async onFollower() {
        // Agents connected here reconnect to whoever leads now.
        const { leaderId, leaderUrl } = context.leadership;
        const next = CloudlessError.notLeader(
          leaderId === context.coordinatorId ? undefined : leaderUrl,
        );
        for (const open of streams.values()) {
          for (const stream of open) stream.abort(next);
        }
      },
      stateGauges: {
        heartbeatStreams: () => {
          let open = 0;
          for (const set of streams.values()) open += set.size;
          return open;
        },
      },
    };
  },
};

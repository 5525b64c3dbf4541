import { countBy } from "../../observe/metrics.js";
import { eventsKey } from "../events/eventsModule.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";
import { NodeRegistry } from "../nodes/nodeRegistry.js";
import { MembershipService } from "./membershipService.js";
import { defaultMembershipConfig, type MembershipConfig } from "./membershipTracker.js";

/** The node records, read and written through the plain store (API handlers, the listener). */
export const nodeRegistryKey = moduleKey<NodeRegistry>("node registry");
/** The leader's failure detector and node state machine (REQ-002). */
export const membershipKey = moduleKey<MembershipService>("membership");

/** Membership: node records, and the leader's judgement of which nodes are alive. */
export const membershipModule: ModuleDefinition = {
  name: "membership",
  start(context) {
    const { options } = context;
    const config: MembershipConfig = {
      ...defaultMembershipConfig,
      ...options.membership,
      detector: {
        ...defaultMembershipConfig.detector,
        firstHeartbeatEstimateMs:
          options.heartbeatEstimateMs ??
          options.membership?.heartbeatIntervalMs ??
          defaultMembershipConfig.detector.firstHeartbeatEstimateMs,
      },
    };
    const nodes = new NodeRegistry(context.store);
    // The tracker's transitions are the leader's writes: through the fence (NFR-R1).
    const membership = new MembershipService(
      new NodeRegistry(context.leaderStore),
      context.use(eventsKey),
      context.clock,
      context.logger,
      config,
    );
    context.provide(nodeRegistryKey, nodes);
    context.provide(membershipKey, membership);
    return {
      onLeader: () => membership.start(),
      onFollower: () => membership.stop(),
      stop: () => membership.stop(),
      stateGauges: {
        nodesByStatus: async () => countBy(await nodes.list(), (node) => node.status),
      },
    };
  },
};

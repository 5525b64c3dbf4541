/**
 * Services (issue 14, ADR 0048): the leader's services controller (VIPs, endpoints, the
 * NetworkSnapshot pushed down every heartbeat stream), the agents' network reports, and
 * the ServiceService API.
 */
import { ServiceService } from "../../api/gen/cloudless/v1/service_pb.js";
import { eventsKey } from "../events/eventsModule.js";
import { listCoordinators } from "../leader/coordinatorRegistry.js";
import type { ModuleDefinition } from "../modules/module.js";
import { heartbeatHooksKey } from "../nodes/nodesModule.js";
import { workloadPlaneKey } from "../workloads/workloadsModule.js";
import { defaultClusterDomain, defaultServiceCidr, parseClusterDomain } from "./clusterDomain.js";
import { serviceServiceImpl } from "./serviceApi.js";
import { ServicesController } from "./servicesController.js";
import { parseServiceCidr } from "./vipAllocator.js";

/** host:port of an API URL ("https://10.0.0.1:7443" → "10.0.0.1:7443"); "" if not a URL. */
export function relayAddressOf(url: string): string {
  try {
    const parsed = new URL(url);
    return parsed.port === "" ? parsed.hostname : `${parsed.hostname}:${parsed.port}`;
  } catch {
    return "";
  }
}

export const servicesModule: ModuleDefinition = {
  name: "services",
  start(context) {
    const { options, clock } = context;
    const cidr = parseServiceCidr(options.serviceCidr ?? defaultServiceCidr);
    const clusterDomain = parseClusterDomain(options.clusterDomain ?? defaultClusterDomain);
    const plane = context.use(workloadPlaneKey);
    const hooks = context.use(heartbeatHooksKey);
    const controller = new ServicesController({
      store: context.leaderStore,
      cache: plane.controller.cache,
      clock,
      logger: context.logger.child({ component: "services" }),
      events: context.use(eventsKey),
      cidr,
      clusterDomain,
      coordinatorRelays: async () =>
        (await listCoordinators(context.store, clock.nowMs()))
          .filter((coordinator) => coordinator.alive)
          .map((coordinator) => relayAddressOf(coordinator.url))
          .filter((address) => address !== ""),
    });
    const detachStreams = hooks.onStream((node, push) => controller.attach(node, push));
    const detachReports = hooks.onRequest("network", (node, report) =>
      controller.report(node, report),
    );
    return {
      routes: (router) => {
        router.service(
          ServiceService,
          serviceServiceImpl({
            store: context.store,
            clusterDomain,
            serviceCidr: cidr.text,
            controller,
            cache: plane.controller.cache,
          }),
        );
      },
      onLeader: () => controller.start(),
      onFollower: () => controller.stop(),
      async stop() {
        detachStreams();
        detachReports();
        await controller.stop();
      },
    };
  },
};

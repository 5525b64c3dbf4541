import { Gauge } from "prom-client";
import type { ModuleDefinition } from "../modules/module.js";

/**
 * `cloudless_coordinator_info{cluster, coordinator, store} 1`: which cluster and store
 * each scraped coordinator serves, for joining onto its other series (the `_info`
 * convention). The example of a module (ADR 0045): its own folder and one line in the
 * module list.
 */
export const infoModule: ModuleDefinition = {
  name: "info",
  start(context) {
    const info = new Gauge({
      name: "cloudless_coordinator_info",
      help: "Always 1; its labels name this coordinator's cluster, id and store backend.",
      labelNames: ["cluster", "coordinator", "store"],
      registers: [context.metrics.registry],
    });
    info.set(
      {
        cluster: context.clusterName,
        coordinator: context.coordinatorId,
        store: context.store.backend,
      },
      1,
    );
    return {
      stop: async () => {
        context.metrics.registry.removeSingleMetric("cloudless_coordinator_info");
      },
    };
  },
};

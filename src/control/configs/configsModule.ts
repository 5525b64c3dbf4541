/**
 * Configs (issue 15, ADR 0056): the registry of configuration objects, the ConfigService
 * API, and the leader's loop that rolls workloads mounting a changed config with
 * `onChange: restart`. After the workloads module: the rolls are new revisions written
 * by a workload registry on the leader's fenced store, driven by the leader's controller.
 */
import { ConfigService } from "../../api/gen/cloudless/v1/config_pb.js";
import { auditedMethodName, stringField } from "../api/audit.js";
import { eventsKey } from "../events/eventsModule.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";
import { replicaTokensKey } from "../secrets/secretsModule.js";
import { WorkloadRegistry } from "../workloads/workloadRegistry.js";
import { workloadPlaneKey } from "../workloads/workloadsModule.js";
import { ConfigRegistry } from "./configRegistry.js";
import { ConfigRestarter } from "./configRestarter.js";
import { configServiceImpl } from "./configService.js";

export const configsKey = moduleKey<ConfigRegistry>("configs");

/** "config/<namespace>/<name>" of a request: what the audit log names. */
function configTarget({ request }: { request: unknown }): string {
  const name = stringField(request, "name");
  if (name === "") return "";
  return `config/${stringField(request, "namespace") || "default"}/${name}`;
}

export const configsModule: ModuleDefinition = {
  name: "configs",
  start(context) {
    const configs = new ConfigRegistry(context.store, context.clock);
    context.provide(configsKey, configs);
    const events = context.use(eventsKey);
    const plane = context.use(workloadPlaneKey);
    const replicaTokens = context.use(replicaTokensKey);
    // The leader's writes go through the fence: a deposed leader makes no revision.
    const leaderWorkloads = new WorkloadRegistry({
      store: context.leaderStore,
      clock: context.clock,
      rng: context.rng,
      events,
      controller: plane.controller,
    });
    const restarter = new ConfigRestarter({
      store: context.store,
      restart: (namespace, name, actor) =>
        leaderWorkloads.restartForConfigs(namespace, name, actor),
      logger: context.logger.child({ component: "configs" }),
    });
    return {
      routes: (router) => {
        router.service(
          ConfigService,
          configServiceImpl({ configs, events, store: context.store, replicaTokens }),
        );
      },
      audited: new Map([
        [auditedMethodName(ConfigService.method.createConfig), configTarget],
        [auditedMethodName(ConfigService.method.updateConfig), configTarget],
        [auditedMethodName(ConfigService.method.deleteConfig), configTarget],
        // Every read by a node, and every refusal, names the config and the replica.
        [
          auditedMethodName(ConfigService.method.readReplicaConfig),
          ({ request }) => {
            const target = configTarget({ request });
            const replica = stringField(request, "replicaId");
            return target && replica
              ? `${target} replica/${stringField(request, "workload")}/${replica}`
              : target;
          },
        ],
      ]),
      onLeader: () => restarter.start(),
      onFollower: () => restarter.stop(),
      maintain: () => restarter.request(""),
      stop: () => restarter.stop(),
    };
  },
};

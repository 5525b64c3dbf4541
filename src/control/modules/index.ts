import { auditModule } from "../audit/auditModule.js";
import { configsModule } from "../configs/configsModule.js";
import { eventsModule } from "../events/eventsModule.js";
import { infoModule } from "../info/infoModule.js";
import { clusterModule } from "../leader/clusterModule.js";
import { membershipModule } from "../membership/membershipModule.js";
import { nodesModule } from "../nodes/nodesModule.js";
import { policiesModule } from "../policies/policiesModule.js";
import { policyDistributionModule } from "../policies/policyDistributionModule.js";
import { relayModule } from "../relay/relayModule.js";
import { objectVersionsModule } from "../replicaFiles/objectVersionsModule.js";
import { secretsModule } from "../secrets/secretsModule.js";
import { servicesModule } from "../services/servicesModule.js";
import { tokensModule } from "../tokens/tokensModule.js";
import { usersModule } from "../users/usersModule.js";
import { workloadsModule } from "../workloads/workloadsModule.js";
import type { ModuleDefinition } from "./module.js";

/**
 * The coordinator's modules, in start order: a module may use what the ones before it
 * provide. Leader work starts and stops in this order; `stop` runs in reverse.
 */
export const coordinatorModules: readonly ModuleDefinition[] = [
  auditModule,
  eventsModule,
  tokensModule,
  usersModule,
  secretsModule,
  membershipModule,
  policiesModule,
  workloadsModule,
  configsModule,
  nodesModule,
  policyDistributionModule,
  objectVersionsModule,
  servicesModule,
  relayModule,
  clusterModule,
  infoModule,
];

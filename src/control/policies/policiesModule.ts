import { PolicyService } from "../../api/gen/cloudless/v1/policy_pb.js";
import { auditedMethodName } from "../api/audit.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";
import { PolicyRegistry } from "./policyRegistry.js";
import { policyServiceImpl } from "./policyService.js";

/** Cluster policies (ADR 0053): the workloads module checks every apply against them. */
export const policiesKey = moduleKey<PolicyRegistry>("policies");

export const policiesModule: ModuleDefinition = {
  name: "policies",
  start(context) {
    const policies = new PolicyRegistry(context.store, context.clock);
    context.provide(policiesKey, policies);
    // The name is in the document, not a request field: the audit line names the method.
    const target = () => "";
    return {
      routes: (router) => {
        router.service(PolicyService, policyServiceImpl(policies));
      },
      audited: new Map([
        [auditedMethodName(PolicyService.method.applyPolicy), target],
        [auditedMethodName(PolicyService.method.deletePolicy), target],
      ]),
    };
  },
};

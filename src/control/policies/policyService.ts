import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import {
  type PolicyInfo,
  PolicyInfoSchema,
  type PolicyService,
} from "../../api/gen/cloudless/v1/policy_pb.js";
import { parsePolicyDocument } from "../../api/policy/parse.js";
import type { Policy } from "../../api/policy/policy.js";
import { formatSpecErrors } from "../../api/workload/parse.js";
import { actorName, requireAdmin } from "../api/context.js";
import { parseRequestSpec } from "../api/workloadService.js";
import type { PolicyRecord, PolicyRegistry } from "./policyRegistry.js";

export function policyToProto(record: PolicyRecord, policy?: Policy): PolicyInfo {
  const decoded = policy ?? parsePolicyDocument(record.document);
  return create(PolicyInfoSchema, {
    name: record.name,
    document: record.document,
    rules: decoded.spec.rules.length,
    updatedAt: timestampFromMs(record.updatedAtMs),
    updatedBy: record.updatedBy,
    description: decoded.spec.description ?? "",
  });
}

/**
 * The policy API (ADR 0053). The authorization interceptor lets policies.read (operator,
 * admin) and policies.write (admin) through; `requireAdmin` keeps node identities out.
 */
export function policyServiceImpl(policies: PolicyRegistry): ServiceImpl<typeof PolicyService> {
  return {
    async applyPolicy(request, context) {
      const identity = requireAdmin(context);
      const { record, policy, action } = await policies.apply(
        request.document,
        actorName(identity),
        request.dryRun,
      );
      return { policy: policyToProto(record, policy), action };
    },

    async getPolicy(request, context) {
      requireAdmin(context);
      return { policy: policyToProto(await policies.get(request.name)) };
    },

    async listPolicies(_request, context) {
      requireAdmin(context);
      const records = await policies.list();
      return { policies: records.map((record) => policyToProto(record)) };
    },

    async deletePolicy(request, context) {
      requireAdmin(context);
      await policies.delete(request.name);
      return {};
    },

    async testPolicy(request, context) {
      requireAdmin(context);
      const parsed = parseRequestSpec(request.specText, undefined);
      if (!parsed.ok) {
        throw CloudlessError.invalid(
          `workload spec is invalid:\n${formatSpecErrors(parsed.errors)}`,
        );
      }
      const verdict = await policies.judge(parsed.doc);
      return {
        allowed: verdict.allowed,
        decisions: verdict.decisions.map((d) => ({
          subject: d.subject,
          item: d.item,
          effect: d.effect,
          policy: d.policy ?? "",
          rule: d.rule ?? "",
          reason: d.reason,
        })),
      };
    },
  };
}

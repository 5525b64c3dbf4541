import type { JsonValue } from "@bufbuild/protobuf";
import type { Struct } from "@bufbuild/protobuf/wkt";
import { parse as parseYaml } from "yaml";
import { WorkloadService } from "../../api/gen/cloudless/v1/workload_pb.js";
import { unreadableSpecText } from "../../api/workload/parse.js";
import {
  type AuditedMethods,
  type AuditTarget,
  auditedMethodName,
  stringField,
} from "../api/audit.js";

const workload = (namespace: string, name: string) =>
  name ? `workload/${namespace || "default"}/${name}` : "";

/** The workload a request names. */
const named: AuditTarget = ({ request }) =>
  workload(stringField(request, "namespace"), stringField(request, "name"));

/** The workload applied, or for a refused apply the one its spec names (best effort). */
const applied: AuditTarget = ({ request, response }) => {
  const answer = (response as { workload?: unknown } | undefined)?.workload;
  if (answer) return workload(stringField(answer, "namespace"), stringField(answer, "name"));
  const metadata = specMetadata(request);
  return workload(stringField(metadata, "namespace"), stringField(metadata, "name"));
};

/** The workload API's state-changing methods (NFR-C1). */
export const workloadAuditTargets: AuditedMethods = new Map([
  [auditedMethodName(WorkloadService.method.applyWorkload), applied],
  [auditedMethodName(WorkloadService.method.deleteWorkload), named],
  [auditedMethodName(WorkloadService.method.scaleWorkload), named],
  [auditedMethodName(WorkloadService.method.rolloutUndo), named],
  [auditedMethodName(WorkloadService.method.execWorkload), named],
]);

/** The metadata of a spec that could not be applied, best effort, for the target. */
function specMetadata(request: unknown): unknown {
  const { specText, spec } = request as { specText?: string; spec?: Struct };
  try {
    if (spec?.fields?.metadata?.kind.case === "structValue") {
      const fields = spec.fields.metadata.kind.value.fields;
      const text = (key: string) => {
        const kind = fields[key]?.kind;
        return kind?.case === "stringValue" ? kind.value : undefined;
      };
      return { name: text("name"), namespace: text("namespace") };
    }
    // Text the spec parser would refuse to read (too large, too deep) is not read here.
    if (specText && unreadableSpecText(specText, "spec") === undefined) {
      const parsed = parseYaml(specText, { maxAliasCount: 100 }) as JsonValue;
      return (parsed as { metadata?: unknown } | null)?.metadata;
    }
  } catch {
    // An unreadable spec has no target; its error says why.
  }
  return undefined;
}

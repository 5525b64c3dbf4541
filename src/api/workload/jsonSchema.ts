/**
 * The published JSON Schema for workload specs (REQ-081), derived from the zod schema so the two
 * cannot disagree. scripts/generate-schema.ts writes it to schemas/workload.schema.json, and a
 * unit test fails when that file no longer matches.
 */
import { z } from "zod";
import { workloadApiVersion, workloadKind, workloadSchema } from "./spec.js";

/** A URN rather than a URL: the project publishes no schema host yet. */
export const workloadSchemaId = "urn:cloudless:schema:workload:v1";

export function workloadJsonSchema(): Record<string, unknown> {
  // "input": what a person may write, so fields with defaults are optional.
  const generated = z.toJSONSchema(workloadSchema, { io: "input" }) as Record<string, unknown>;
  const { $schema, ...rest } = generated;
  return {
    $schema,
    $id: workloadSchemaId,
    title: `Cloudless ${workloadKind} (${workloadApiVersion})`,
    description:
      "A declarative Cloudless workload. Cross-field rules (unique port names, probe port names, " +
      "minAvailable <= replicas, a rollout that can make progress) are checked by " +
      "`cloudless workload apply` in addition to this schema.",
    ...rest,
  };
}

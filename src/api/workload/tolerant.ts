/**
 * Reading a spec another version wrote (version skew, ADR 0042). The API parses what a
 * person applies strictly — an unknown field there is a typo to name. A spec the
 * coordinator hands an agent was already accepted by that coordinator, which may be newer
 * than the agent: a field the agent's schema lacks is a feature it does not have yet, not
 * a mistake. This reading sets such fields aside, says which, and parses the rest as
 * strictly as ever (a wrong type or a missing field is still an error).
 */
import type { z } from "zod";
import { documentPath, parseWorkloadValue, type SpecError } from "./parse.js";
import { type WorkloadSpecDocument, workloadSchema } from "./spec.js";

export type TolerantParseResult =
  | {
      ok: true;
      doc: WorkloadSpecDocument;
      /** Dotted paths of the fields set aside, e.g. `spec.ports[0].appProtocol`; sorted. */
      unknownFields: string[];
    }
  | { ok: false; errors: SpecError[] };

/**
 * Unknown fields nest at most as deep as the schema (a field inside an unknown field goes
 * with it): a few rounds suffice; the bound keeps a hostile document from looping.
 */
const maxRounds = 4;

/** Parses a decoded spec, setting aside the fields this version does not know. */
export function parseWorkloadValueTolerant(value: unknown): TolerantParseResult {
  let current = value;
  const unknownFields: string[] = [];
  for (let round = 0; round < maxRounds; round++) {
    const result = workloadSchema.safeParse(current);
    if (result.success) {
      return { ok: true, doc: result.data, unknownFields: unknownFields.sort() };
    }
    const unknown = result.error.issues.filter(
      (issue): issue is z.core.$ZodIssueUnrecognizedKeys => issue.code === "unrecognized_keys",
    );
    if (unknown.length === 0) break;
    current = structuredClone(current);
    for (const issue of unknown) {
      const parent = valueAt(current, issue.path);
      if (typeof parent !== "object" || parent === null) continue;
      for (const key of issue.keys) {
        delete (parent as Record<string, unknown>)[key];
        unknownFields.push(formatPath([...issue.path, key]));
      }
    }
  }
  // Errors other than unknown fields: the strict parser words them, field by field.
  const strict = parseWorkloadValue(current);
  if (strict.ok) {
    return { ok: true, doc: strict.doc, unknownFields: unknownFields.sort() };
  }
  return {
    ok: false,
    errors: strict.errors.length > 0 ? strict.errors : [{ path: documentPath, message: "invalid" }],
  };
}

function valueAt(value: unknown, path: readonly PropertyKey[]): unknown {
  let at = value;
  for (const segment of path) {
    if (typeof at !== "object" || at === null || typeof segment === "symbol") return undefined;
    at = (at as Record<string | number, unknown>)[segment];
  }
  return at;
}

function formatPath(path: readonly PropertyKey[]): string {
  let text = "";
  for (const segment of path) {
    if (typeof segment === "number") text += `[${segment}]`;
    else text += text === "" ? String(segment) : `.${String(segment)}`;
  }
  return text;
}

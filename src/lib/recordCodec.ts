/**
 * Decoding records where they leave the store: JSON text checked against a schema, never
 * cast. A record that does not match (a bug, a hand edit, a newer writer) is refused with
 * an error naming its key and what is wrong, instead of travelling on as a wrongly typed
 * object and failing somewhere far away.
 */
import type { z } from "zod";

/** How much of a record's text an error quotes at most (a record can be large). */
const maxIssuesShown = 3;

export class MalformedRecordError extends Error {
  constructor(
    readonly key: string,
    readonly detail: string,
  ) {
    super(`store record ${key} is malformed: ${detail}`);
    this.name = "MalformedRecordError";
  }
}

/** The record stored under `key` as `schema` reads it; MalformedRecordError if it does not. */
export function decodeRecord<T>(schema: z.ZodType<T>, key: string, text: string): T {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new MalformedRecordError(key, `not JSON (${(error as Error).message})`);
  }
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues;
  const shown = issues
    .slice(0, maxIssuesShown)
    .map(
      (issue) => `${issue.path.length > 0 ? issue.path.join(".") : "(record)"}: ${issue.message}`,
    );
  const more =
    issues.length > maxIssuesShown ? ` (and ${issues.length - maxIssuesShown} more)` : "";
  throw new MalformedRecordError(key, `${shown.join("; ")}${more}`);
}

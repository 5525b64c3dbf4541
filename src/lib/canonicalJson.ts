/**
 * Canonical JSON: the one stable text of a JSON value, so that equal values compare and
 * hash equal whatever order their keys were written in. Workload specs are hashed with it
 * (specHash, the template hash) and compared with it (the agent's "is this the same run
 * spec?"); the audit log writes and chains its entries with it (ADR 0008).
 *
 * The text: no whitespace; object keys sorted at every level; members whose value is
 * `undefined` left out; strings, numbers, booleans and null written by JSON.stringify.
 *
 * Key order is Array.prototype.sort's (UTF-16 code units), with one exception kept on
 * purpose: keys that are array indices ("2", "10") come first, in ascending numeric order,
 * because the sorted members are rebuilt as a JavaScript object and JavaScript enumerates
 * such keys first. RFC 8785 would write "10" before "2". The spec hashes stored in every
 * cluster were computed this way, and changing it would make an unchanged spec with such
 * label keys look changed, so it stays (a fixed vector in canonicalJson.test.ts holds it).
 * Audit entries have fixed, non-numeric keys, for which this is RFC 8785 exactly.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (typeof value !== "object" || value === null) return value;
  const record = value as Record<string, unknown>;
  const sorted: Record<string, unknown> = {};
  for (const key of Object.keys(record).sort()) {
    if (record[key] !== undefined) sorted[key] = sortKeys(record[key]);
  }
  return sorted;
}

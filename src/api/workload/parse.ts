/**
 * Reading a workload spec (REQ-081): YAML or JSON text, or an already decoded value, in; a
 * defaulted document or a complete list of errors that each name the field, out.
 *
 * Field-specific wording lives beside each field in spec.ts; this file supplies the wording for
 * everything generic (types, enums, missing fields), turns unknown keys into one error per key
 * with a "did you mean" hint, and orders the result so the same mistakes always print the same.
 */
import { createHash } from "node:crypto";
import { CST, Lexer, parseAllDocuments } from "yaml";
import type { z } from "zod";
import { canonicalJson } from "../../lib/canonicalJson.js";
import { limitRef, limits, specTooLargeMessage } from "../limits.js";
import { type WorkloadSpecDocument, workloadSchema } from "./spec.js";

export interface SpecError {
  /** Dotted path with indices, e.g. `spec.ports[1].containerPort`; `(document)` for the whole. */
  path: string;
  message: string;
}

export type ParseWorkloadResult =
  | { ok: true; doc: WorkloadSpecDocument }
  | { ok: false; errors: SpecError[] };

export const documentPath = "(document)";

/** YAML aliases may expand exponentially ("billion laughs"); a real spec needs very few. */
const maxYamlAliases = 100;

type PathSegment = string | number;

/**
 * Parses YAML or JSON text (JSON is YAML) holding exactly one workload. Text over the
 * specBytes limit is refused before it is parsed, with the message the API gives.
 */
export function parseWorkloadText(text: string, sourceName: string): ParseWorkloadResult {
  const unreadable = unreadableSpecText(text, sourceName);
  if (unreadable) return { ok: false, errors: [unreadable] };
  const documents = parseAllDocuments(text);
  const syntaxErrors: SpecError[] = [];
  const values: unknown[] = [];
  for (const document of Array.isArray(documents) ? documents : []) {
    for (const error of document.errors) {
      const at = error.linePos?.[0];
      const where = at ? `${sourceName}:${at.line}:${at.col}` : sourceName;
      // yaml appends " at line L, column C:" and a code excerpt; the location is said up front.
      const message = (error.message.split("\n")[0] ?? "")
        .replace(/ at line \d+, column \d+:?$/, "")
        .trim();
      syntaxErrors.push({
        path: documentPath,
        message: `YAML syntax error at ${where}: ${message}`,
      });
    }
    if (document.errors.length > 0) continue;
    try {
      const value: unknown = document.toJS({ maxAliasCount: maxYamlAliases });
      // A bare `---` (for example a trailing one) is an empty document, not a second workload.
      if (value !== null && value !== undefined) values.push(value);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      syntaxErrors.push({ path: documentPath, message: `cannot read ${sourceName}: ${reason}` });
    }
  }
  if (syntaxErrors.length > 0) return { ok: false, errors: sortErrors(syntaxErrors) };
  if (values.length === 0) {
    return fail(documentPath, `${sourceName} is empty; expected a ${describeRoot()}`);
  }
  if (values.length > 1) {
    return fail(
      documentPath,
      `one workload per file: ${sourceName} holds ${values.length} YAML documents`,
    );
  }
  return parseWorkloadValue(values[0]);
}

/**
 * Why spec text is refused before it is parsed, if it is: larger than specBytes, or
 * nested deeper than specNestingLevels. Whatever parses spec text (the audit log too)
 * asks this first.
 */
export function unreadableSpecText(text: string, sourceName: string): SpecError | undefined {
  if (specTextTooLarge(text))
    return { path: documentPath, message: specTooLargeMessage(sourceName) };
  if (nestingExceeds(text, limits.specNestingLevels)) {
    return {
      path: documentPath,
      message:
        `${sourceName} nests deeper than ${limits.specNestingLevels} levels ` +
        `${limitRef("specNestingLevels")}; a workload spec needs fewer than 10`,
    };
  }
  return undefined;
}

/**
 * Whether YAML text nests collections deeper than `maxLevels`, read with yaml's lexer (no
 * recursion) and given up as soon as it does. Flow collections ([ and {, as in JSON) are
 * counted exactly; block collections as two levels per indentation step plus the `-` and
 * `?` that open collections on the same line, which is at least their real depth.
 */
function nestingExceeds(text: string, maxLevels: number): boolean {
  let flow = 0;
  let sameLine = 0;
  let atLineStart = true;
  let lineIndent = 0;
  const indents: number[] = [];
  let scalarSourceNext = false;
  for (const token of new Lexer().lex(text)) {
    // A scalar is a marker token followed by its source, which may look like anything.
    if (scalarSourceNext) {
      scalarSourceNext = false;
      continue;
    }
    const type = CST.tokenType(token);
    if (type === "flow-map-start" || type === "flow-seq-start") flow++;
    else if (type === "flow-map-end" || type === "flow-seq-end") flow = Math.max(0, flow - 1);
    if (flow > 0 && type !== "flow-map-start" && type !== "flow-seq-start") {
      if (type === "scalar") scalarSourceNext = true;
      continue;
    }
    switch (type) {
      case "newline":
        atLineStart = true;
        lineIndent = 0;
        sameLine = 0;
        continue;
      case "space":
        if (atLineStart) lineIndent = token.length;
        continue;
      case "comment":
        continue;
      case "doc-start":
      case "doc-end":
        indents.length = 0;
        continue;
      case "seq-item-ind":
      case "explicit-key-ind":
        sameLine++;
        break;
      case "scalar":
        scalarSourceNext = true;
        break;
    }
    if (atLineStart) {
      atLineStart = false;
      while (indents.length > 0 && (indents.at(-1) ?? 0) >= lineIndent) indents.pop();
      indents.push(lineIndent);
    }
    if (2 * indents.length + sameLine + flow > maxLevels) return true;
  }
  return false;
}

/** Whether spec text is over the specBytes limit, counted in UTF-8 bytes as it is sent. */
export function specTextTooLarge(text: string): boolean {
  // Each UTF-16 unit is at most 3 UTF-8 bytes, and at least 1: most texts need no count.
  if (text.length > limits.specBytes) return true;
  if (text.length * 3 <= limits.specBytes) return false;
  return Buffer.byteLength(text) > limits.specBytes;
}

/** Validates an already decoded document (for example a JSON body) and applies defaults. */
export function parseWorkloadValue(value: unknown): ParseWorkloadResult {
  if (!isPlainObject(value)) {
    return fail(documentPath, `expected a ${describeRoot()}, got ${describeValue(value)}`);
  }
  const result = workloadSchema.safeParse(value, { error: genericMessage });
  if (result.success) return { ok: true, doc: result.data };
  const errors = result.error.issues.flatMap((issue) => toSpecErrors(issue, value));
  return { ok: false, errors: sortErrors(errors) };
}

/** One error per line, `path: message`, ready to print. */
export function formatSpecErrors(errors: readonly SpecError[]): string {
  return errors.map((error) => `${error.path}: ${error.message}`).join("\n");
}

/**
 * Stable JSON of a defaulted document: keys sorted at every level, absent optionals omitted.
 * Two specs that differ only in key order or in spelling out defaults give the same text.
 */
export function canonicalSpecJson(doc: WorkloadSpecDocument): string {
  return canonicalJson(doc);
}

/**
 * A short content hash of the canonical spec. The API stores the hash of a workload's
 * template (workloadService.ts, templateHash) to tell a new revision from a re-apply.
 */
export function specHash(doc: WorkloadSpecDocument): string {
  return createHash("sha256").update(canonicalSpecJson(doc)).digest("hex").slice(0, 16);
}

// ---------------------------------------------------------------------------------------------
// Issues to errors

function fail(path: string, message: string): ParseWorkloadResult {
  return { ok: false, errors: [{ path, message }] };
}

function describeRoot(): string {
  return "mapping with apiVersion, kind, metadata and spec";
}

function toSpecErrors(issue: z.core.$ZodIssue, input: unknown): SpecError[] {
  const segments = issue.path.filter(
    (segment): segment is PathSegment => typeof segment !== "symbol",
  );
  if (issue.code === "unrecognized_keys") {
    const known = knownKeysAt(segments);
    return issue.keys.map((key) => {
      const suggestion = closestKey(key, known);
      return {
        path: formatPath(segments),
        message:
          `unknown field ${JSON.stringify(key)}` +
          (suggestion === undefined ? "" : `; did you mean ${JSON.stringify(suggestion)}?`),
      };
    });
  }
  if (issue.code === "invalid_key") {
    // The key is in the path already; its schema's message says what a key may look like.
    return issue.issues.map((inner) => ({ path: formatPath(segments), message: inner.message }));
  }
  // Checks on an absent field would say "expected a string"; what the person must do is add it.
  const required =
    issue.code === "invalid_type" && valueAt(input, segments) === undefined ? "is required" : "";
  return [{ path: formatPath(segments), message: required || issue.message }];
}

/** Wording for issues whose schema did not bring its own message. */
function genericMessage(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case "invalid_type":
      if (issue.input === undefined) return "is required";
      return expectedType(issue.expected, issue.input);
    case "invalid_value":
      return issue.values.length === 1
        ? `must be ${formatChoice(issue.values[0])}`
        : `expected one of ${issue.values.map(formatChoice).join(", ")}`;
    case "too_small":
      if (issue.origin === "array" || issue.origin === "set") {
        return Number(issue.minimum) <= 1
          ? "must not be empty"
          : `must have at least ${issue.minimum} entries`;
      }
      if (issue.origin === "string") {
        return Number(issue.minimum) <= 1
          ? "must not be empty"
          : `must be at least ${issue.minimum} characters`;
      }
      return `must be ${issue.inclusive ? "at least" : "greater than"} ${issue.minimum}`;
    case "too_big":
      if (issue.origin === "array" || issue.origin === "set") {
        return `must have at most ${issue.maximum} entries`;
      }
      if (issue.origin === "string") return `must be at most ${issue.maximum} characters`;
      return `must be ${issue.inclusive ? "at most" : "less than"} ${issue.maximum}`;
    case "invalid_format":
      return issue.format === "regex" && issue.pattern
        ? `must match the pattern ${issue.pattern}`
        : `is not a valid ${issue.format}`;
    case "invalid_union":
      return "does not match any allowed form";
    default:
      return undefined;
  }
}

function expectedType(expected: string, input: unknown): string {
  switch (expected) {
    case "string":
      // YAML reads unquoted 8080 or true as a number or a boolean, a classic env mistake.
      return typeof input === "number" || typeof input === "boolean"
        ? `expected a string; quote the value, e.g. "${String(input)}"`
        : "expected a string";
    case "number":
    case "int":
      return "expected a number";
    case "boolean":
      return "expected true or false";
    case "object":
    case "record":
      return `expected a mapping, got ${describeValue(input)}`;
    case "array":
      return `expected a list, got ${describeValue(input)}`;
    default:
      return `expected ${expected}`;
  }
}

function formatChoice(value: unknown): string {
  return value === "" ? '""' : String(value);
}

function describeValue(value: unknown): string {
  if (value === null || value === undefined) return "nothing";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string") return "a string";
  if (typeof value === "number") return "a number";
  if (typeof value === "boolean") return "a boolean";
  return typeof value;
}

// ---------------------------------------------------------------------------------------------
// Paths

const identifierPattern = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** `spec.ports[1].containerPort`; keys that are not identifiers are quoted: `env["1X"]`. */
export function formatPath(segments: readonly PathSegment[]): string {
  if (segments.length === 0) return documentPath;
  let path = "";
  for (const segment of segments) {
    if (typeof segment === "number") path += `[${segment}]`;
    else if (identifierPattern.test(segment)) path += path === "" ? segment : `.${segment}`;
    else path += `[${JSON.stringify(segment)}]`;
  }
  return path;
}

function valueAt(root: unknown, segments: readonly PathSegment[]): unknown {
  let value = root;
  for (const segment of segments) {
    if (typeof value !== "object" || value === null) return undefined;
    value = (value as Record<PathSegment, unknown>)[segment];
  }
  return value;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function sortErrors(errors: readonly SpecError[]): SpecError[] {
  const unique = new Map<string, SpecError>();
  for (const error of errors) unique.set(`${error.path}\u0000${error.message}`, error);
  return [...unique.values()].sort(
    (a, b) => comparePaths(a.path, b.path) || compareText(a.message, b.message),
  );
}

/** Orders by path segments so `ports[2]` sorts before `ports[10]`; the document comes first. */
function comparePaths(a: string, b: string): number {
  if (a === b) return 0;
  if (a === documentPath) return -1;
  if (b === documentPath) return 1;
  const left = splitPath(a);
  const right = splitPath(b);
  for (let i = 0; i < Math.min(left.length, right.length); i++) {
    const x = left[i] as PathSegment;
    const y = right[i] as PathSegment;
    if (x === y) continue;
    if (typeof x === "number" && typeof y === "number") return x - y;
    if (typeof x === "number") return -1;
    if (typeof y === "number") return 1;
    return compareText(x, y);
  }
  return left.length - right.length;
}

function splitPath(path: string): PathSegment[] {
  const segments: PathSegment[] = [];
  for (const match of path.matchAll(/\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|([^.[\]]+)/g)) {
    if (match[1] !== undefined) segments.push(Number(match[1]));
    else if (match[2] !== undefined) segments.push(JSON.parse(match[2]) as string);
    else if (match[3] !== undefined) segments.push(match[3]);
  }
  return segments;
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// "Did you mean"

interface SchemaDef {
  type: string;
  shape?: Record<string, { _zod: { def: SchemaDef } }>;
  innerType?: { _zod: { def: SchemaDef } };
  in?: { _zod: { def: SchemaDef } };
  element?: { _zod: { def: SchemaDef } };
  valueType?: { _zod: { def: SchemaDef } };
}

/** The field names the schema allows at a path, found by walking the schema itself. */
function knownKeysAt(segments: readonly PathSegment[]): string[] {
  let def: SchemaDef | undefined = unwrap(workloadSchema._zod.def as SchemaDef);
  for (const segment of segments) {
    if (def === undefined) return [];
    if (def.type === "object") def = def.shape?.[String(segment)]?._zod.def;
    else if (def.type === "array") def = def.element?._zod.def;
    else if (def.type === "record") def = def.valueType?._zod.def;
    else return [];
    def = def === undefined ? undefined : unwrap(def);
  }
  return def?.type === "object" && def.shape ? Object.keys(def.shape) : [];
}

function unwrap(def: SchemaDef): SchemaDef {
  let current = def;
  for (;;) {
    const next = current.type === "pipe" ? current.in : current.innerType;
    if (next === undefined) return current;
    current = next._zod.def;
  }
}

/**
 * The known key a typo most likely meant: a small edit distance ("replica", "iamge"), a different
 * case ("ContainerPort"), or a prefix of a unit-suffixed name ("memory" for "memoryMiB").
 */
export function closestKey(key: string, known: readonly string[]): string | undefined {
  const lower = key.toLowerCase();
  let best: { key: string; distance: number } | undefined;
  for (const candidate of known) {
    const candidateLower = candidate.toLowerCase();
    let distance = editDistance(lower, candidateLower);
    const allowed = candidate.length <= 4 ? 1 : 2;
    if (distance > allowed) {
      if (lower.length >= 3 && candidateLower.startsWith(lower)) distance = allowed;
      else continue;
    }
    if (best === undefined || distance < best.distance) best = { key: candidate, distance };
  }
  return best?.key;
}

/** Optimal string alignment distance: insertions, deletions, substitutions, transpositions. */
function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[] = new Array(rows * cols).fill(0);
  const at = (i: number, j: number): number => d[i * cols + j] ?? 0;
  for (let i = 0; i < rows; i++) d[i * cols] = i;
  for (let j = 0; j < cols; j++) d[j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let value = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        value = Math.min(value, at(i - 2, j - 2) + 1);
      }
      d[i * cols + j] = value;
    }
  }
  return at(rows - 1, cols - 1);
}

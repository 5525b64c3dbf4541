#!/usr/bin/env node
/**
 * Traceability matrix (`npm run trace`).
 *
 * Reads the requirement IDs from docs/requirements.md (lines such as
 * "- **REQ-001** `foundation (issue 2)` — text"), finds every test and suite name in
 * the test files under src/ and test/, and prints which tests name each ID, then the
 * IDs no test names yet. PRODUCT.md asks that a test proving a requirement carry its
 * ID in its name; this script is the "grep" that turns that into a matrix.
 *
 * Test files are *.test.ts (and .tsx/.mts/.cts/.js/.mjs/.cjs variants) plus shared
 * suites: any other source file under src/ or test/ that imports "vitest" (for example
 * the store contract suite, whose tests run once per backend).
 *
 * Names are read with a small tokenizer, not a regex, so `it.each([...])("…")`,
 * multi-line calls, template literals and quotes inside regexes are handled.
 * Plain Node, no dependencies. Exit code 0 unless docs/requirements.md is missing.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const requirementsPath = path.join(repoRoot, "docs", "requirements.md");
const scanRoots = ["src", "test"];
const skipDirectories = new Set(["node_modules", "dist", ".git", "gen", "coverage"]);
const testFilePattern = /\.test\.(?:[cm]?[jt]s|tsx)$/;
const sourceFilePattern = /\.(?:[cm]?[jt]s|tsx)$/;
const testFunctions = new Set(["it", "test", "describe"]);
/** Modifiers that take their own argument list before the test call: it.each([...])("name", …). */
const modifiersWithArguments = new Set(["each", "for", "skipIf", "runIf"]);
/** After one of these a "/" is a division; after other punctuation it starts a regex. */
const closers = new Set([")", "]", "}"]);
/** After these keywords a "/" starts a regular expression, not a division. */
const keywordsBeforeExpression = new Set([
  "return",
  "typeof",
  "instanceof",
  "in",
  "of",
  "new",
  "delete",
  "void",
  "throw",
  "case",
  "do",
  "else",
  "yield",
  "await",
]);

// --- requirements ------------------------------------------------------------------

/** @returns {{ id: string, status: string, text: string, group: string, line: number }[]} */
function readRequirements(file) {
  const requirements = [];
  const seen = new Set();
  let group = "";
  const lines = readFileSync(file, "utf8").split("\n");
  for (const [index, line] of lines.entries()) {
    const heading = /^#{2,3}\s+(.*)$/.exec(line);
    if (heading) {
      group = heading[1].trim();
      continue;
    }
    const match = /^\s*[-*]\s+\*\*([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*)\*\*\s*(.*)$/.exec(line);
    if (!match) continue;
    const [, id, rest] = match;
    if (seen.has(id)) {
      process.stderr.write(`warning: ${id} is listed twice in docs/requirements.md\n`);
      continue;
    }
    seen.add(id);
    const status = /^`([^`]*)`/.exec(rest)?.[1] ?? "";
    const text = rest
      .replace(/^`[^`]*`\s*/, "")
      .replace(/^[—–-]\s*/, "")
      .trim();
    requirements.push({ id, status, text, group, line: index + 1 });
  }
  return requirements;
}

// --- files ---------------------------------------------------------------------------

function listFiles(directory) {
  let names;
  try {
    names = readdirSync(directory);
  } catch {
    return [];
  }
  const files = [];
  for (const name of names.sort()) {
    if (skipDirectories.has(name)) continue;
    const full = path.join(directory, name);
    const stats = statSync(full);
    if (stats.isDirectory()) files.push(...listFiles(full));
    else if (stats.isFile() && sourceFilePattern.test(name) && !name.endsWith(".d.ts")) {
      files.push(full);
    }
  }
  return files;
}

const importsVitest = /\bfrom\s*["']vitest["']|\bimport\s*\(\s*["']vitest["']\s*\)/;

/** Test files, and shared suites that define tests without being test files themselves. */
function findTestFiles() {
  const found = [];
  for (const root of scanRoots) {
    for (const file of listFiles(path.join(repoRoot, root))) {
      const source = readFileSync(file, "utf8");
      if (testFilePattern.test(file) || importsVitest.test(source)) found.push({ file, source });
    }
  }
  return found;
}

// --- tokenizer -----------------------------------------------------------------------

/**
 * @typedef {{ type: "ident" | "string" | "template" | "punct" | "number" | "regex",
 *   value: string, line: number }} Token
 */

/** Splits JavaScript/TypeScript source into the tokens the name finder needs. */
function tokenize(source) {
  /** @type {Token[]} */
  const tokens = [];
  let i = 0;
  let line = 1;
  const length = source.length;
  const countLines = (from, to) => {
    for (let k = from; k < to; k++) if (source.charCodeAt(k) === 10) line++;
  };
  const previous = () => tokens[tokens.length - 1];
  const regexAllowed = () => {
    const last = previous();
    if (!last) return true;
    if (last.type === "ident") return keywordsBeforeExpression.has(last.value);
    if (last.type === "punct") return !closers.has(last.value);
    return false;
  };

  /** Index just past a quoted string starting at `start` (the quote). */
  const skipQuoted = (start) => {
    const quote = source[start];
    let k = start + 1;
    while (k < length) {
      const c = source[k];
      if (c === "\\") k += 2;
      else if (c === quote) return k + 1;
      // An unterminated string stops at the line end.
      else if (c === "\n") return k;
      else k++;
    }
    return length;
  };

  /** Index just past a template literal starting at `start` (the backtick). */
  const skipTemplate = (start) => {
    let k = start + 1;
    while (k < length) {
      const c = source[k];
      if (c === "\\") k += 2;
      else if (c === "`") return k + 1;
      else if (c === "$" && source[k + 1] === "{") k = skipExpression(k + 2);
      else k++;
    }
    return length;
  };

  /** Index just past the "}" that closes a template substitution opened before `start`. */
  const skipExpression = (start) => {
    let depth = 1;
    let k = start;
    while (k < length) {
      const c = source[k];
      if (c === "'" || c === '"') k = skipQuoted(k);
      else if (c === "`") k = skipTemplate(k);
      else if (c === "/" && source[k + 1] === "/") {
        while (k < length && source[k] !== "\n") k++;
      } else if (c === "/" && source[k + 1] === "*") {
        const end = source.indexOf("*/", k + 2);
        k = end < 0 ? length : end + 2;
      } else if (c === "{") {
        depth++;
        k++;
      } else if (c === "}") {
        depth--;
        k++;
        if (depth === 0) return k;
      } else k++;
    }
    return length;
  };

  /** Index just past a regex literal at `start`, or -1 when it is not one. */
  const skipRegex = (start) => {
    let k = start + 1;
    let inClass = false;
    while (k < length) {
      const c = source[k];
      if (c === "\n") return -1;
      if (c === "\\") k += 2;
      else if (c === "[") {
        inClass = true;
        k++;
      } else if (c === "]") {
        inClass = false;
        k++;
      } else if (c === "/" && !inClass) {
        k++;
        while (k < length && /[a-z]/i.test(source[k])) k++;
        return k;
      } else k++;
    }
    return -1;
  };

  while (i < length) {
    const c = source[i];
    if (c === "\n") {
      line++;
      i++;
    } else if (c === " " || c === "\t" || c === "\r") {
      i++;
    } else if (c === "/" && source[i + 1] === "/") {
      while (i < length && source[i] !== "\n") i++;
    } else if (c === "/" && source[i + 1] === "*") {
      const end = source.indexOf("*/", i + 2);
      const stop = end < 0 ? length : end + 2;
      countLines(i, stop);
      i = stop;
    } else if (c === "'" || c === '"') {
      const end = skipQuoted(i);
      const raw = source.slice(i + 1, source[end - 1] === c && end - 1 > i ? end - 1 : end);
      tokens.push({ type: "string", value: literalText(raw), line });
      i = end;
    } else if (c === "`") {
      const end = skipTemplate(i);
      const raw = source.slice(i + 1, Math.max(i + 1, end - 1));
      tokens.push({ type: "template", value: literalText(raw), line });
      countLines(i, end);
      i = end;
    } else if (/[A-Za-z_$]/.test(c)) {
      let k = i + 1;
      while (k < length && /[\w$]/.test(source[k])) k++;
      tokens.push({ type: "ident", value: source.slice(i, k), line });
      i = k;
    } else if (/[0-9]/.test(c)) {
      let k = i + 1;
      while (k < length && /[\w.]/.test(source[k])) k++;
      tokens.push({ type: "number", value: source.slice(i, k), line });
      i = k;
    } else if (c === "/" && regexAllowed()) {
      const end = skipRegex(i);
      if (end < 0) {
        tokens.push({ type: "punct", value: c, line });
        i++;
      } else {
        tokens.push({ type: "regex", value: source.slice(i, end), line });
        i = end;
      }
    } else {
      tokens.push({ type: "punct", value: c, line });
      i++;
    }
  }
  return tokens;
}

/** Readable text of a string literal's body: escapes resolved the simple way. */
function literalText(raw) {
  return raw
    .replace(/\\n/g, " ")
    .replace(/\\t/g, " ")
    .replace(/\\(.)/g, "$1")
    .replace(/\s*\n\s*/g, " ");
}

// --- test names --------------------------------------------------------------------

/**
 * @typedef {{ kind: "test" | "suite", name: string, path: string[], line: number }} TestEntry
 */

/** Every it/test/describe call whose first argument is a string, with its enclosing suites. */
function findTests(source) {
  const tokens = tokenize(source);
  // Matching parentheses, so a call's extent is known (for nesting and it.each(...)).
  const closing = new Array(tokens.length).fill(-1);
  const stack = [];
  for (const [index, token] of tokens.entries()) {
    if (token.type !== "punct") continue;
    if (token.value === "(") stack.push(index);
    else if (token.value === ")" && stack.length > 0) closing[stack.pop()] = index;
  }

  const calls = [];
  for (let k = 0; k < tokens.length; k++) {
    const token = tokens[k];
    if (token.type !== "ident" || !testFunctions.has(token.value)) continue;
    const before = tokens[k - 1];
    if (before?.type === "punct" && before.value === ".") continue; // something.it(…)
    if (before?.type === "ident" && ["function", "const", "let", "var"].includes(before.value)) {
      continue; // a declaration named it/test/describe
    }
    let j = k + 1;
    let argumentsPending = false;
    let open = -1;
    while (j < tokens.length) {
      const next = tokens[j];
      if (next.type === "punct" && next.value === "." && tokens[j + 1]?.type === "ident") {
        argumentsPending = modifiersWithArguments.has(tokens[j + 1].value);
        j += 2;
      } else if (next.type === "template" && argumentsPending) {
        argumentsPending = false; // it.each`table`
        j++;
      } else if (next.type === "punct" && next.value === "(") {
        if (argumentsPending) {
          if (closing[j] < 0) break;
          argumentsPending = false;
          j = closing[j] + 1;
        } else {
          open = j;
          break;
        }
      } else break;
    }
    if (open < 0) continue;
    const name = tokens[open + 1];
    if (!name || (name.type !== "string" && name.type !== "template")) continue;
    const close = closing[open] < 0 ? tokens.length : closing[open];
    calls.push({
      kind: token.value === "describe" ? "suite" : "test",
      name: name.value,
      line: token.line,
      open,
      close,
    });
  }

  /** @type {TestEntry[]} */
  const entries = [];
  const enclosing = [];
  for (const call of calls) {
    while (enclosing.length > 0 && enclosing[enclosing.length - 1].close < call.open) {
      enclosing.pop();
    }
    entries.push({
      kind: call.kind,
      name: call.name,
      path: enclosing.filter((c) => c.kind === "suite").map((c) => c.name),
      line: call.line,
    });
    enclosing.push(call);
  }
  return entries;
}

// --- report ----------------------------------------------------------------------

function idPattern(id) {
  const escaped = id.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(?<![A-Za-z0-9])${escaped}(?![A-Za-z0-9])`);
}

const anyIdPattern = /(?<![A-Za-z0-9-])(REQ-\d{3}|NFR-[A-Z]\d+|F\d+)(?![A-Za-z0-9])/g;

function main() {
  let requirements;
  try {
    requirements = readRequirements(requirementsPath);
  } catch (error) {
    process.stderr.write(
      `error: cannot read ${path.relative(process.cwd(), requirementsPath)} (${error.message}); it lists the requirement IDs\n`,
    );
    process.exit(1);
  }

  const files = findTestFiles();
  /** @type {(TestEntry & { file: string })[]} */
  const entries = [];
  for (const { file, source } of files) {
    const relative = path.relative(repoRoot, file).split(path.sep).join("/");
    for (const entry of findTests(source)) entries.push({ ...entry, file: relative });
  }
  const testCount = entries.filter((e) => e.kind === "test").length;

  const out = [];
  out.push(
    `Traceability: ${requirements.length} requirement IDs (docs/requirements.md), ` +
      `${testCount} tests and ${entries.length - testCount} suites in ${files.length} files`,
  );

  const missing = [];
  let group;
  for (const requirement of requirements) {
    if (requirement.group !== group) {
      group = requirement.group;
      out.push("", `== ${group} ==`);
    }
    const pattern = idPattern(requirement.id);
    const matches = entries.filter((e) => pattern.test(e.name));
    const status = requirement.status ? `  [${requirement.status}]` : "";
    const noun = matches.length === 1 ? "test" : "tests";
    const count = matches.length === 0 ? "no test" : `${matches.length} ${noun}`;
    out.push(`${requirement.id}${status}  ${count}`);
    if (matches.length === 0) missing.push(requirement);
    for (const match of matches) {
      const where = `${match.file}:${match.line}`;
      const suites = match.path.length > 0 ? `${match.path.join(" > ")} > ` : "";
      const kind = match.kind === "suite" ? "(suite) " : "";
      out.push(`  ${where}  ${kind}${suites}${match.name}`);
    }
  }

  const known = new Set(requirements.map((r) => r.id));
  const unknown = new Map();
  for (const entry of entries) {
    for (const [id] of entry.name.matchAll(anyIdPattern)) {
      if (known.has(id)) continue;
      if (!unknown.has(id)) unknown.set(id, []);
      unknown.get(id).push(`${entry.file}:${entry.line}`);
    }
  }
  if (unknown.size > 0) {
    out.push("", "== IDs named in tests but not listed in docs/requirements.md ==");
    for (const [id, places] of [...unknown].sort()) {
      out.push(`${id}  ${places.slice(0, 5).join(", ")}${places.length > 5 ? ", …" : ""}`);
    }
  }

  out.push("", `== IDs with no test (${missing.length} of ${requirements.length}) ==`);
  if (missing.length === 0) out.push("(none)");
  const width = Math.max(0, ...missing.map((r) => r.id.length));
  for (const requirement of missing) {
    out.push(`${requirement.id.padEnd(width)}  ${requirement.status || "(no status)"}`);
  }
  const builtWithoutTest = missing.filter((r) => r.status.startsWith("foundation"));
  if (builtWithoutTest.length > 0) {
    out.push(
      "",
      `note: ${builtWithoutTest.map((r) => r.id).join(", ")} ` +
        `${builtWithoutTest.length === 1 ? "is" : "are"} marked as built but no test names ` +
        `${builtWithoutTest.length === 1 ? "it" : "them"}`,
    );
  }
  process.stdout.write(`${out.join("\n")}\n`);
}

main();

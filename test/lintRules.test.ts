import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot } from "./helpers/processes.js";

/**
 * Lints probe files with the repository's own Biome configuration (copied into a temp
 * directory, so no probe ever lands in src/) and returns "path:line" per diagnostic.
 */
function lintProbes(dir: string, probes: Record<string, string>): string[] {
  for (const [file, text] of Object.entries(probes)) {
    mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    writeFileSync(path.join(dir, file), text);
  }
  const result = spawnSync(
    path.join(repoRoot, "node_modules", ".bin", "biome"),
    ["lint", "--reporter=json", "--max-diagnostics=none", ...Object.keys(probes)],
    { cwd: dir, encoding: "utf8", timeout: 60_000 },
  );
  const json = result.stdout.slice(result.stdout.indexOf("{"));
  const report = JSON.parse(json) as {
    diagnostics: { category: string; location: { path: string; start?: { line: number } } }[];
  };
  return report.diagnostics
    .filter((d) => d.category === "plugin" || d.category.startsWith("lint/style/noRestricted"))
    .map((d) => `${d.location.path}:${d.location.start?.line ?? 0}`)
    .sort();
}

describe("REQ-021 REQ-031 time and randomness come from the injected Clock and Rng (ADR 0041)", () => {
  let dir = "";

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), "cloudless-lint-"));
    const config = JSON.parse(readFileSync(path.join(repoRoot, "biome.json"), "utf8")) as Record<
      string,
      unknown
    >;
    // The probes are not in a git work tree; everything else is the repository's config.
    delete config.vcs;
    delete config.$schema;
    writeFileSync(path.join(dir, "biome.json"), JSON.stringify(config));
    cpSync(path.join(repoRoot, "lint"), path.join(dir, "lint"), { recursive: true });
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("contract: the lint refuses ambient time and randomness in the control plane and the agent, and takes a reasoned exception", () => {
    const ambient = [
      "export const a = Date.now();",
      "export const b = new Date();",
      "export const c = performance.now();",
      "export const d = Math.random();",
      "export const e = globalThis.crypto.randomUUID();",
    ].join("\n");
    const found = lintProbes(dir, {
      "src/control/x/ambient.ts": ambient,
      "src/agent/y/ambient.ts": ambient,
      "src/control/x/imports.ts":
        'import { randomBytes } from "node:crypto";\nexport { randomBytes };\n',
      "src/agent/y/namespace.ts":
        'import * as c from "node:crypto";\nexport const id = c.randomBytes(4);\n',
      "src/control/x/fine.ts": [
        'import { createHash } from "node:crypto";',
        "export const at = (ms: number) => new Date(ms).toISOString();",
        'export const hash = createHash("sha256").digest("hex");',
        "// biome-ignore lint/plugin/clockAndRng: compared with a file mtime, on the real clock",
        "export const now = Date.now();",
      ].join("\n"),
      // Tests, test harnesses and the rest of the program are not held to the rule.
      "src/control/x/ambient.test.ts": ambient,
      "src/control/x/testing/harness.ts": ambient,
      "src/cli/ambient.ts": ambient,
    });
    const lines = (file: string) => [1, 2, 3, 4, 5].map((line) => `${file}:${line}`);
    expect(found).toEqual(
      [
        ...lines("src/agent/y/ambient.ts"),
        "src/agent/y/namespace.ts:2",
        ...lines("src/control/x/ambient.ts"),
        "src/control/x/imports.ts:1",
      ].sort(),
    );
  });
});

/**
 * The folder rules (ADR 0038) as the lint enforces them: biome.json's noRestrictedImports
 * overrides, run by `npm run lint` (and so by `npm test`). This test runs the real Biome
 * over probe files, one per folder and depth, each importing every other folder, and
 * checks that exactly the imports the table forbids fail; and that every folder under src/
 * has a row, so a new folder cannot slip past the rules.
 */
import { execFile } from "node:child_process";
import { copyFile, cp, mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot } from "./helpers/processes.js";

/** What each folder may import besides itself and packages: the table of ADR 0038. */
const allowed: Record<string, readonly string[] | "anything"> = {
  api: ["lib"],
  lib: [],
  observe: ["api", "lib"],
  client: ["api", "lib", "observe"],
  agent: ["api", "client", "lib", "observe"],
  cli: ["api", "client", "lib", "observe"],
  control: ["api", "lib", "observe"],
  // The composition root starts every plane; sim is test and bench infrastructure.
  cmd: "anything",
  sim: "anything",
};
const folders = Object.keys(allowed).sort();

const biomeTimeoutMs = 60_000;

interface Diagnostic {
  category: string;
  location: { path: string; start: { line: number } };
}

describe("REQ-080 contract: the folder rules", () => {
  let dir: string;
  /** "src/agent/probe.ts:3" for every import the lint refused. */
  let refused: Set<string>;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-folder-rules-"));
    await copyFile(path.join(repoRoot, "biome.json"), path.join(dir, "biome.json"));
    // biome.json names its GritQL plugins by relative path.
    await cp(path.join(repoRoot, "lint"), path.join(dir, "lint"), { recursive: true });
    for (const folder of folders) {
      // A file at the top of the folder and one a level down: the rules must not depend on
      // how deep a file sits.
      for (const [sub, up] of [
        ["", "../"],
        ["deeper/", "../../"],
      ] as const) {
        const lines = folders.map(
          (other, index) => `import { x${index} } from "${up}${other}/module.js";`,
        );
        lines.push(`export const all = [${folders.map((_, index) => `x${index}`).join(", ")}];`);
        await mkdir(path.join(dir, "src", folder, sub), { recursive: true });
        await writeFile(path.join(dir, "src", folder, sub, "probe.ts"), `${lines.join("\n")}\n`);
      }
    }
    // The scheduler core keeps its own purity rules besides control/'s folder rules.
    await mkdir(path.join(dir, "src", "control", "scheduler"), { recursive: true });
    await writeFile(
      path.join(dir, "src", "control", "scheduler", "pure.ts"),
      'import { readFileSync } from "node:fs";\nimport { x } from "../../agent/module.js";\nexport const all = [readFileSync, x];\n',
    );
    // So do the supervisor's pure deciders, besides agent/'s folder rules. (An override that
    // sets noRestrictedImports replaces an earlier one's options: each repeats its folder's
    // patterns, and these probes fail if one forgets.)
    await mkdir(path.join(dir, "src", "agent", "supervisor"), { recursive: true });
    await writeFile(
      path.join(dir, "src", "agent", "supervisor", "restartPolicy.ts"),
      'import { readFileSync } from "node:fs";\nimport { x } from "../../control/module.js";\nexport const all = [readFileSync, x];\n',
    );
    const biome = path.join(repoRoot, "node_modules", ".bin", "biome");
    const { stdout } = await promisify(execFile)(
      biome,
      ["lint", "--vcs-enabled=false", "--reporter=json", "--max-diagnostics=none", "src"],
      { cwd: dir, timeout: biomeTimeoutMs, maxBuffer: 16 * 1024 * 1024 },
    ).catch((error: { stdout?: string }) => ({ stdout: error.stdout ?? "" }));
    const report = JSON.parse(stdout) as { diagnostics: Diagnostic[] };
    refused = new Set(
      report.diagnostics
        .filter((d) => d.category === "lint/style/noRestrictedImports")
        .map((d) => `${d.location.path}:${d.location.start.line}`),
    );
  }, biomeTimeoutMs);

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("every folder under src/ has a row in the table", async () => {
    const entries = await readdir(path.join(repoRoot, "src"), { withFileTypes: true });
    const present: string[] = [];
    for (const entry of entries.filter((e) => e.isDirectory())) {
      // A folder git left empty after a move holds no code and needs no row.
      const files = await readdir(path.join(repoRoot, "src", entry.name), { recursive: true });
      if (files.some((file) => file.endsWith(".ts"))) present.push(entry.name);
    }
    expect(present.sort()).toEqual(folders);
  });

  it.each(folders)("src/%s/ may import exactly what the table says, at any depth", (folder) => {
    const rule = allowed[folder]!;
    for (const sub of ["", "deeper/"]) {
      const file = `src/${folder}/${sub}probe.ts`;
      const refusedHere = folders.filter((_, index) => refused.has(`${file}:${index + 1}`));
      const expected =
        rule === "anything"
          ? []
          : folders.filter((other) => other !== folder && !rule.includes(other));
      expect(refusedHere, file).toEqual(expected);
    }
  });

  it("the scheduler core refuses I/O modules and, like all of control/, the agent", () => {
    expect(refused.has("src/control/scheduler/pure.ts:1")).toBe(true);
    expect(refused.has("src/control/scheduler/pure.ts:2")).toBe(true);
  });

  it("the supervisor's deciders refuse I/O modules and, like all of agent/, the control plane", () => {
    expect(refused.has("src/agent/supervisor/restartPolicy.ts:1")).toBe(true);
    expect(refused.has("src/agent/supervisor/restartPolicy.ts:2")).toBe(true);
  });
});

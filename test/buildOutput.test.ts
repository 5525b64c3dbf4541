import { readFileSync } from "node:fs";
import * as path from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { repoRoot } from "./helpers/processes.js";

/** The source files `npm run build` compiles into dist/, as tsc itself resolves them. */
function buildInputs(): string[] {
  const configPath = path.join(repoRoot, "tsconfig.build.json");
  const config = ts.readConfigFile(configPath, ts.sys.readFile);
  if (config.error)
    throw new Error(ts.flattenDiagnosticMessageText(config.error.messageText, "\n"));
  const parsed = ts.parseJsonConfigFileContent(config.config, ts.sys, repoRoot);
  return parsed.fileNames.map((file) => path.relative(repoRoot, file));
}

const importsVitest = /(?:from\s*|import\s*\(\s*|import\s+)["']vitest(?:\/[^"']*)?["']/;

describe("NFR-U1 the build ships the program and nothing else", () => {
  const inputs = buildInputs();

  it("compiles the program entry point", () => {
    expect(inputs).toContain(path.join("src", "cmd", "main.ts"));
  });

  it("contract: leaves out tests, test harnesses and anything that imports vitest", () => {
    const testOnly = inputs.filter(
      (file) =>
        file.endsWith(".test.ts") ||
        file.split(path.sep).includes("testing") ||
        importsVitest.test(readFileSync(path.join(repoRoot, file), "utf8")),
    );
    expect(testOnly).toEqual([]);
  });

  it("contract: package.json names no entry point the build does not produce", () => {
    const manifest = JSON.parse(readFileSync(path.join(repoRoot, "package.json"), "utf8")) as {
      main?: string;
      exports?: unknown;
      bin?: Record<string, string>;
    };
    const built = new Set(
      inputs.map((file) =>
        path
          .join("dist", path.relative("src", file))
          .replace(/\.ts$/, ".js")
          .split(path.sep)
          .join("/"),
      ),
    );
    const entries = [
      ...(manifest.main === undefined ? [] : [manifest.main]),
      ...(JSON.stringify(manifest.exports ?? null).match(/"\.\/[^"]+"/g) ?? []),
    ].map((entry) => entry.replace(/^"|"$/g, "").replace(/^\.\//, ""));
    expect(entries.filter((entry) => !built.has(entry))).toEqual([]);
    // The program itself is the bin script, which loads the built CLI.
    expect(readFileSync(path.join(repoRoot, manifest.bin?.cloudless ?? ""), "utf8")).toContain(
      "../dist/cmd/main.js",
    );
    expect(built.has("dist/cmd/main.js")).toBe(true);
  });
});

/**
 * Writes the published workload JSON Schema (REQ-081) from the zod schema, its single source of
 * truth: `npx tsx scripts/generate-schema.ts`. With `--check` it writes nothing and exits 1 when
 * schemas/workload.schema.json is stale (the unit test
 * "REQ-081 the published JSON Schema matches the zod schema" checks the same).
 *
 * The text goes through Biome so the committed file already satisfies `npm run lint`.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { workloadJsonSchema } from "../src/api/workload/jsonSchema.js";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");
const relativeTarget = path.join("schemas", "workload.schema.json");
const target = path.join(root, relativeTarget);

const fresh = execFileSync(
  path.join(root, "node_modules", ".bin", "biome"),
  ["format", `--stdin-file-path=${relativeTarget}`],
  { cwd: root, input: JSON.stringify(workloadJsonSchema(), null, 2), encoding: "utf8" },
);

if (process.argv.includes("--check")) {
  let current = "";
  try {
    current = readFileSync(target, "utf8");
  } catch {
    // A missing file is simply stale.
  }
  if (current !== fresh) {
    console.error(`${relativeTarget} is stale; run: npx tsx scripts/generate-schema.ts`);
    process.exit(1);
  }
  console.log(`${relativeTarget} is up to date`);
} else {
  writeFileSync(target, fresh);
  console.log(`wrote ${relativeTarget}`);
}

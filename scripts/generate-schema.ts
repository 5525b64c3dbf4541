/**
 * Writes the published JSON Schemas — workloads (REQ-081) and policies (REQ-061) — from their
 * zod schemas, the single source of truth: `npx tsx scripts/generate-schema.ts`. With `--check`
 * it writes nothing and exits 1 when a file under schemas/ is stale (the unit tests
 * "REQ-081 the published JSON Schema matches the zod schema" and its policy twin check the same).
 *
 * The text goes through Biome so the committed file already satisfies `npm run lint`.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { policyJsonSchema } from "../src/api/policy/policy.js";
import { workloadJsonSchema } from "../src/api/workload/jsonSchema.js";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");
const schemas: [string, Record<string, unknown>][] = [
  [path.join("schemas", "workload.schema.json"), workloadJsonSchema()],
  [path.join("schemas", "policy.schema.json"), policyJsonSchema()],
];

let stale = false;
for (const [relativeTarget, schema] of schemas) {
  const target = path.join(root, relativeTarget);
  const fresh = execFileSync(
    path.join(root, "node_modules", ".bin", "biome"),
    ["format", `--stdin-file-path=${relativeTarget}`],
    { cwd: root, input: JSON.stringify(schema, null, 2), encoding: "utf8" },
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
      stale = true;
    } else console.log(`${relativeTarget} is up to date`);
  } else {
    writeFileSync(target, fresh);
    console.log(`wrote ${relativeTarget}`);
  }
}
if (stale) process.exit(1);

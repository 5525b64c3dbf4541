/**
 * onChange: restart (issue 15, ADR 0056), the decision. A workload's record carries, per
 * config its spec mounts with `onChange: restart`, the version and store revision of the
 * config record its current revision was made for (its "stamps"). When a config's record
 * has another store revision than the stamp — it was updated, or deleted and created again —
 * the workload gets a new revision with the same template, which the rollout controller
 * rolls like any other (never below minAvailable). Comparing store revisions rather than
 * versions catches a config deleted and recreated at version 1. Pure but for the read.
 */
import { z } from "zod";
import type { ConfigStamps, WorkloadRecord } from "../controllers/records.js";
import type { Store } from "../store/store.js";
import { configRecordSchema, configStoreKey } from "./configRegistry.js";

/** The only part of an applied document this reads. */
const restartRefsSchema = z.looseObject({
  spec: z.looseObject({
    configs: z
      .array(z.looseObject({ name: z.string(), onChange: z.string().optional() }))
      .optional(),
  }),
});

/** The configs an applied document mounts with `onChange: restart`. */
export function restartConfigNames(document: unknown): string[] {
  const parsed = restartRefsSchema.safeParse(document);
  if (!parsed.success) return [];
  return (parsed.data.spec.configs ?? [])
    .filter((ref) => ref.onChange === "restart")
    .map((ref) => ref.name);
}

/** Every config an applied document mounts, whatever its onChange. */
export function mountedConfigNames(document: unknown): string[] {
  const parsed = restartRefsSchema.safeParse(document);
  if (!parsed.success) return [];
  return (parsed.data.spec.configs ?? []).map((ref) => ref.name);
}

/**
 * The stamps of the named configs as the store holds them now; a missing config is
 * version 0, store revision 0. At most configsPerWorkload reads (the spec's bound).
 */
export async function readConfigStamps(
  store: Store,
  namespace: string,
  names: readonly string[],
): Promise<ConfigStamps> {
  const stamps: ConfigStamps = {};
  for (const name of names) {
    const kv = await store.get(configStoreKey(namespace, name));
    stamps[name] = kv
      ? {
          version: configRecordSchema.parse(JSON.parse(kv.value)).version,
          modRevision: kv.modRevision,
        }
      : { version: 0, modRevision: 0 };
  }
  return stamps;
}

export interface ConfigRestart {
  /** The stamps the new revision carries: every restart config as it is now. */
  stamps: ConfigStamps;
  /** The configs that changed, "app v3" style, for the event and the revision's cause. */
  changed: string[];
}

/**
 * Whether a workload must roll because a config it mounts with `onChange: restart`
 * changed, given those configs as they are now (`current`, from readConfigStamps). A
 * config that is missing now does not roll anything (the replicas keep their files); a
 * workload with no stamp for a config (applied before stamps existed) rolls once.
 */
export function decideConfigRestart(
  workload: Pick<WorkloadRecord, "spec" | "configVersions">,
  current: ConfigStamps,
): ConfigRestart | undefined {
  const names = restartConfigNames(workload.spec);
  const stamps: ConfigStamps = {};
  const changed: string[] = [];
  for (const name of names) {
    const now = current[name] ?? { version: 0, modRevision: 0 };
    stamps[name] = now;
    const stamped = workload.configVersions?.[name];
    if (now.modRevision !== 0 && stamped?.modRevision !== now.modRevision) {
      changed.push(`${name} v${now.version}`);
    }
  }
  return changed.length > 0 ? { stamps, changed } : undefined;
}

import { create } from "@bufbuild/protobuf";
import {
  HeartbeatResponseSchema,
  type ObjectVersion,
  ObjectVersionSchema,
} from "../../api/gen/cloudless/v1/node_pb.js";
import type { ModuleDefinition } from "../modules/module.js";
import { heartbeatHooksKey } from "../nodes/nodesModule.js";
import { secretKeyPrefix } from "../secrets/secretRegistry.js";
import type { KeyValue, Watch } from "../store/store.js";

/**
 * Where config records live (the configs work of issue 15 owns them; the record holds
 * `namespace`, `name` and `version` in the clear like a secret's).
 */
export const configKeyPrefix = "/configs/";

/**
 * Versions of every secret and config down every node's heartbeat stream (REQ-063, ADR
 * 0055): all of them when a stream opens, then each one that changes, so an agent swaps
 * the files of running replicas in place soon after an update. Names and versions only:
 * values travel only in ReadReplicaSecret / ReadReplicaConfig, which check the replica.
 */
export const objectVersionsModule: ModuleDefinition = {
  name: "object versions",
  start(context) {
    const hooks = context.use(heartbeatHooksKey);
    const logger = context.logger.child({ component: "object versions" });
    const sources = [
      { kind: "secret", prefix: secretKeyPrefix },
      { kind: "config", prefix: configKeyPrefix },
    ] as const;
    const streams = new Set<(objects: ObjectVersion[]) => void>();
    /** kind + store key → version; the whole set a new stream gets. */
    const known = new Map<string, ObjectVersion>();
    let loaded: Promise<void> | undefined;

    const load = async (): Promise<void> => {
      for (const { kind, prefix } of sources) {
        let fromKey: string | undefined;
        // Paged: a page per round trip, and a bound on the rounds (maxObjects / page).
        for (let page = 0; page < maxObjects / pageSize; page += 1) {
          const result = await context.store.range(prefix, {
            limit: pageSize,
            ...(fromKey ? { fromKey } : {}),
          });
          for (const kv of result.kvs) {
            if (kv.key === fromKey) continue;
            remember(kind, kv);
          }
          const last = result.kvs.at(-1);
          if (!result.more || !last) break;
          fromKey = last.key;
        }
      }
    };
    const remember = (kind: "secret" | "config", kv: KeyValue): ObjectVersion | undefined => {
      const version = versionOf(kv);
      if (!version) return undefined;
      const entry = create(ObjectVersionSchema, { kind, ...version });
      const id = `${kind}\u0000${kv.key}`;
      if (!known.has(id) && known.size >= maxObjects) return undefined;
      known.set(id, entry);
      return entry;
    };
    const whenLoaded = (): Promise<void> => {
      loaded ??= load().catch((error: unknown) => {
        loaded = undefined;
        throw error;
      });
      return loaded;
    };

    const detachStreams = hooks.onStream((_node, push) => {
      const deliver = (objects: ObjectVersion[]) => {
        for (let start = 0; start < objects.length; start += maxPerMessage) {
          push(
            create(HeartbeatResponseSchema, {
              objectVersions: { objects: objects.slice(start, start + maxPerMessage) },
            }),
          );
        }
      };
      streams.add(deliver);
      whenLoaded()
        .then(() => {
          if (streams.has(deliver) && known.size > 0) deliver([...known.values()]);
        })
        .catch((error: unknown) =>
          logger.warn({ err: error }, "cannot read secret and config versions for a node stream"),
        );
      return () => streams.delete(deliver);
    });

    const watches: Watch[] = [];
    let stopped = false;
    const startWatch = (kind: "secret" | "config", prefix: string) => {
      if (stopped) return;
      try {
        const watch = context.store.watch(
          prefix,
          {},
          {
            onEvents: (events) => {
              const changed: ObjectVersion[] = [];
              for (const event of events) {
                if (event.type === "delete") {
                  known.delete(`${kind}\u0000${event.kv.key}`);
                  continue;
                }
                const entry = remember(kind, event.kv);
                if (entry) changed.push(entry);
              }
              if (changed.length === 0) return;
              for (const deliver of streams) deliver(changed);
            },
            // History compacted or the watch broke: load afresh, send all, watch again.
            onEnd: () => {
              if (stopped) return;
              known.clear();
              loaded = undefined;
              whenLoaded()
                .then(() => {
                  for (const deliver of streams) deliver([...known.values()]);
                })
                .catch((error: unknown) =>
                  logger.warn({ err: error }, "cannot read secret and config versions"),
                );
              startWatch(kind, prefix);
            },
          },
        );
        watches.push(watch);
      } catch (error) {
        logger.warn(
          { err: error, kind },
          "cannot watch versions; replicas get updated files at their next start",
        );
      }
    };
    for (const { kind, prefix } of sources) startWatch(kind, prefix);
    return {
      async stop() {
        stopped = true;
        detachStreams();
        for (const watch of watches) watch.cancel();
        streams.clear();
      },
    };
  },
};

/**
 * Versions kept per coordinator: 1,000 secrets per namespace (limits.ts) in many
 * namespaces plus configs stays well under this; beyond it new ones are not announced
 * (their replicas get them at the next start) rather than growing without bound.
 */
const maxObjects = 100_000;
const pageSize = 1_000;
/** Entries per heartbeat message: ~100 bytes each keeps a message far below 4 MiB. */
const maxPerMessage = 5_000;

/** namespace, name, version of a record; undefined for anything unreadable. */
function versionOf(kv: KeyValue): { namespace: string; name: string; version: bigint } | undefined {
  try {
    const record = JSON.parse(kv.value) as Record<string, unknown>;
    const { namespace, name, version } = record;
    if (typeof namespace !== "string" || typeof name !== "string") return undefined;
    if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 1) {
      return undefined;
    }
    return { namespace, name, version: BigInt(version) };
  } catch {
    return undefined;
  }
}

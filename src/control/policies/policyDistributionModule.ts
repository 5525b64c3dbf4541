import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  HeartbeatResponseSchema,
  type PolicySnapshot,
  PolicySnapshotSchema,
} from "../../api/gen/cloudless/v1/node_pb.js";
import type { ModuleDefinition } from "../modules/module.js";
import { heartbeatHooksKey } from "../nodes/nodesModule.js";
import type { Watch } from "../store/store.js";
import { policiesKey } from "./policiesModule.js";
import { policyKeyPrefix } from "./policyRegistry.js";

/**
 * Sends the cluster's policies down every node's heartbeat stream (ADR 0053): the whole set
 * on a new stream and again whenever a policy changes, on whichever coordinator the node
 * is connected to (each one watches the store), so the agent can refuse a replica no
 * policy allows even when its record reached the store without an apply.
 */
export const policyDistributionModule: ModuleDefinition = {
  name: "policy distribution",
  start(context) {
    const policies = context.use(policiesKey);
    const hooks = context.use(heartbeatHooksKey);
    const logger = context.logger.child({ component: "policies" });
    const streams = new Set<(snapshot: PolicySnapshot) => void>();
    let current: PolicySnapshot | undefined;
    let loading: Promise<PolicySnapshot> | undefined;

    const load = async (): Promise<PolicySnapshot> => {
      const records = await policies.list();
      const hash = createHash("sha256");
      for (const record of records) hash.update(`${record.name}\u0000${record.document}\u0001`);
      return create(PolicySnapshotSchema, {
        fingerprint: hash.digest("hex"),
        documents: records.map((record) => record.document),
      });
    };
    const snapshot = (): Promise<PolicySnapshot> => {
      if (current) return Promise.resolve(current);
      loading ??= load()
        .then((loaded) => {
          current = loaded;
          return loaded;
        })
        .finally(() => {
          loading = undefined;
        });
      return loading;
    };
    const send =
      (push: (message: ReturnType<typeof create<typeof HeartbeatResponseSchema>>) => void) =>
      (policies: PolicySnapshot) =>
        push(create(HeartbeatResponseSchema, { policies }));

    const detachStreams = hooks.onStream((_node, push) => {
      const deliver = send(push);
      streams.add(deliver);
      snapshot()
        .then((loaded) => {
          if (streams.has(deliver)) deliver(loaded);
        })
        .catch((error: unknown) =>
          logger.warn({ err: error }, "cannot read the policies for a node stream"),
        );
      return () => streams.delete(deliver);
    });

    let watch: Watch | undefined;
    let stopped = false;
    const refresh = () => {
      current = undefined;
      snapshot()
        .then((loaded) => {
          for (const deliver of streams) deliver(loaded);
        })
        .catch((error: unknown) => logger.warn({ err: error }, "cannot read the changed policies"));
    };
    const startWatch = () => {
      if (stopped) return;
      try {
        watch = context.store.watch(
          policyKeyPrefix,
          {},
          {
            onEvents: () => refresh(),
            // History compacted or the store's watch broke: read afresh and watch again
            // (once per end; a closed store ends the module first).
            onEnd: () => {
              if (stopped) return;
              refresh();
              startWatch();
            },
          },
        );
      } catch (error) {
        logger.warn(
          { err: error },
          "cannot watch the policies; nodes get them on their next stream",
        );
      }
    };
    startWatch();
    return {
      async stop() {
        stopped = true;
        detachStreams();
        watch?.cancel();
        streams.clear();
      },
    };
  },
};

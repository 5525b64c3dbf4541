import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type ClusterService,
  CoordinatorInfoSchema,
} from "../../api/gen/cloudless/v1/cluster_pb.js";
import type { Clock } from "../../lib/clock.js";
import { listCoordinators } from "../leader/coordinatorRegistry.js";
import type { Store } from "../store/store.js";
import { requireAdmin } from "./context.js";

export interface ClusterServiceDeps {
  store: Store;
  clock: Clock;
  /** Who answers: this coordinator's id. */
  coordinatorId: string;
}

export function clusterServiceImpl(
  services: ClusterServiceDeps,
): ServiceImpl<typeof ClusterService> {
  return {
    async listCoordinators(_request, context) {
      requireAdmin(context);
      const coordinators = await listCoordinators(services.store, services.clock.nowMs());
      return {
        coordinators: coordinators.map((c) =>
          create(CoordinatorInfoSchema, {
            id: c.id,
            url: c.url,
            leader: c.leader,
            alive: c.alive,
            startedAt: timestampFromMs(c.startedAtMs),
            lastSeen: timestampFromMs(c.lastSeenMs),
          }),
        ),
        store: services.store.backend,
        answeredBy: services.coordinatorId,
      };
    },
  };
}

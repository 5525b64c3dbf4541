import { ClusterService } from "../../api/gen/cloudless/v1/cluster_pb.js";
import { clusterServiceImpl } from "../api/clusterService.js";
import type { ModuleDefinition } from "../modules/module.js";

/** The cluster API: which coordinators there are and which one leads (issue 4). */
export const clusterModule: ModuleDefinition = {
  name: "cluster",
  start(context) {
    return {
      routes: (router) => {
        router.service(
          ClusterService,
          clusterServiceImpl({
            store: context.store,
            clock: context.clock,
            coordinatorId: context.coordinatorId,
          }),
        );
      },
    };
  },
};

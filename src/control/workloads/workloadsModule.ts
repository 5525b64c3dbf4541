import { WorkloadService } from "../../api/gen/cloudless/v1/workload_pb.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import { countBy } from "../../observe/metrics.js";
import { workloadServiceImpl } from "../api/workloadService.js";
import { AssignmentHub } from "../controllers/assignmentHub.js";
import { replicaPrefix, replicaRecordSchema } from "../controllers/records.js";
import { ReplicaStatusWriter } from "../controllers/replicaStatusWriter.js";
import { TunnelHub } from "../controllers/tunnelHub.js";
import { WorkloadController } from "../controllers/workloadController.js";
import { eventsKey } from "../events/eventsModule.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";
import { policiesKey } from "../policies/policiesModule.js";
import { workloadAuditTargets } from "./auditTargets.js";
import { WorkloadRegistry } from "./workloadRegistry.js";

/** What the node streams need of workloads: desired sets out, reports and tunnels in. */
export interface WorkloadPlane {
  /** The leader's controller: its cluster cache serves reads without a store round trip. */
  controller: WorkloadController;
  /** Per-node desired sets, pushed down each node's heartbeat stream. */
  assignments: AssignmentHub;
  /** Replica reports from the agents, written to the replica records. */
  replicaStatus: ReplicaStatusWriter;
  /** Logs and exec requests to agents and their answers. */
  tunnels: TunnelHub;
}

export const workloadPlaneKey = moduleKey<WorkloadPlane>("workload plane");

/** Workloads: their API, and the leader's controller that schedules and reconciles them. */
export const workloadsModule: ModuleDefinition = {
  name: "workloads",
  start(context) {
    const { clock, rng, options } = context;
    const events = context.use(eventsKey);
    const policies = context.use(policiesKey);
    const assignments = new AssignmentHub();
    // The controller and the report writer are the leader's: they write through the fence.
    const controller = new WorkloadController({
      store: context.leaderStore,
      clock,
      rng,
      logger: context.logger.child({ component: "controller" }),
      events,
      assignments,
      metrics: context.metrics,
      ...(options.rebalance ? { rebalance: options.rebalance } : {}),
    });
    const plane: WorkloadPlane = {
      controller,
      assignments,
      replicaStatus: new ReplicaStatusWriter(context.leaderStore, clock),
      tunnels: new TunnelHub(assignments, rng),
    };
    context.provide(workloadPlaneKey, plane);
    const { store } = context;
    // API writes go through the plain store: any coordinator accepts them.
    const registry = new WorkloadRegistry({ store, clock, rng, events, controller });
    return {
      routes: (router) => {
        router.service(
          WorkloadService,
          workloadServiceImpl({
            clock,
            events,
            registry,
            tunnels: plane.tunnels,
            leadership: context.leadership,
            admit: (doc) => policies.admit(doc),
          }),
        );
      },
      audited: workloadAuditTargets,
      onLeader: () => controller.start(),
      onFollower: () => controller.stop(),
      stop: () => controller.stop(),
      stateGauges: {
        replicasByPhase: async () =>
          countBy((await store.range(replicaPrefix)).kvs, (kv) => {
            const replica = decodeRecord(replicaRecordSchema, kv.key, kv.value);
            return replica.status?.phase ?? (replica.node === "" ? "Pending" : "Scheduled");
          }),
      },
    };
  },
};

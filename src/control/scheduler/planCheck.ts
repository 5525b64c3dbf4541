/**
 * The plan applier's re-check (after Nomad's plan_apply.go): a plan was made from a
 * snapshot, and by the time it is committed the nodes may have changed. Each placement is
 * checked again against the nodes as they are now, in plan order, counting what the
 * plan's earlier placements take, so no commit can overcommit a node; what passes is
 * committed (a partial commit) and what fails is left pending for the next plan. Pure:
 * shared by the coordinator's plan applier and the scheduler harness's.
 */
import type { Plan, PlannedPlacement, Resources, SchedNode } from "./types.js";

/**
 * Why a placement was not committed, a fixed set (a metric label): NodeChanged when the
 * re-check refused it (the node is gone, not ready, cordoned, or no longer has room; or the
 * replica is no longer pending), Conflict when the commit itself lost a race.
 */
export type PlanRejection = "NodeChanged" | "Conflict";

export interface RejectedPlacement {
  replicaId: string;
  node: string;
  reason: PlanRejection;
  /** One line for logs and events: what changed. */
  detail: string;
}

/** What a plan applier did with a plan: placements committed and placements refused. */
export interface PlanResult {
  placed: PlannedPlacement[];
  rejected: RejectedPlacement[];
  /** The revision the commit wrote at (0 when nothing was written). */
  revision: number;
}

/** Something a plan is submitted to: the coordinator's applier, or a harness's. */
export interface PlanSubmitter<Context extends unknown[] = []> {
  apply(plan: Plan, ...context: Context): Promise<PlanResult>;
}

export interface RecheckResult {
  accepted: PlannedPlacement[];
  rejected: RejectedPlacement[];
}

/**
 * Re-checks `plan`'s placements against `nodes` as they are now. `requestOf` gives a
 * replica's resource request, or undefined when the replica is no longer pending (placed,
 * stopped or deleted since the plan was made): such a placement is refused too.
 */
export function recheckPlan(
  nodes: Iterable<SchedNode>,
  plan: Pick<Plan, "placements">,
  requestOf: (replicaId: string) => Resources | undefined,
): RecheckResult {
  const allocated = new Map<string, { node: SchedNode; allocated: Resources }>();
  for (const node of nodes) allocated.set(node.name, { node, allocated: node.allocated });
  const accepted: PlannedPlacement[] = [];
  const rejected: RejectedPlacement[] = [];
  for (const placement of plan.placements) {
    const reject = (detail: string) =>
      rejected.push({
        replicaId: placement.replicaId,
        node: placement.node,
        reason: "NodeChanged",
        detail,
      });
    const request = requestOf(placement.replicaId);
    if (request === undefined) {
      reject(`replica ${placement.replicaId} is no longer pending`);
      continue;
    }
    const entry = allocated.get(placement.node);
    if (entry === undefined) {
      reject(`node ${placement.node} is gone`);
      continue;
    }
    const refusal = refusalOf(entry.node, entry.allocated, request);
    if (refusal !== undefined) {
      reject(`node ${placement.node} ${refusal}`);
      continue;
    }
    entry.allocated = addResources(entry.allocated, request);
    accepted.push(placement);
  }
  return { accepted, rejected };
}

/** Why `node`, with `allocated` taken, cannot take `request` now; undefined when it can. */
function refusalOf(node: SchedNode, allocated: Resources, request: Resources): string | undefined {
  if (node.status !== "Ready") return `is ${node.status}`;
  if (node.cordoned) return "is cordoned";
  const after = addResources(allocated, request);
  if (after.cpuMillicores > node.capacity.cpuMillicores) return "has no CPU left for it";
  if (after.memoryMiB > node.capacity.memoryMiB) return "has no memory left for it";
  if (after.storageGiB > node.capacity.storageGiB) return "has no storage left for it";
  // A replica asking no bandwidth fits whatever the link carries already.
  if (request.bandwidthMbps > 0 && after.bandwidthMbps > node.capacity.bandwidthMbps) {
    return "has no bandwidth left for it";
  }
  return undefined;
}

function addResources(a: Resources, b: Resources): Resources {
  return {
    cpuMillicores: a.cpuMillicores + b.cpuMillicores,
    memoryMiB: a.memoryMiB + b.memoryMiB,
    storageGiB: a.storageGiB + b.storageGiB,
    bandwidthMbps: a.bandwidthMbps + b.bandwidthMbps,
  };
}

/**
 * Filter plugins (REQ-021: resource fit, readiness, taints/tolerations, zone rules, policy).
 * Each answers "may this replica go on this node?" with a status; the reason text is what
 * `cloudless workload explain` counts and shows, so it is short and names the cause.
 * Rejections that do not depend on the node are built once per replica in preFilter so the
 * per-node path does not allocate.
 */
import { budgetApplies, nodeLossBudget as budgetOf, budgetText } from "./budget.js";
import {
  type FilterPlugin,
  type FilterRejection,
  type FilterStatus,
  filterOk,
  reject,
  type SchedulingContext,
} from "./plugin.js";
import type { NodeStatus, PendingReplica, Taint, Toleration } from "./types.js";

const notReady: Record<Exclude<NodeStatus, "Ready">, FilterRejection> = {
  NotReady: reject("node NotReady"),
  Lost: reject("node Lost"),
  Left: reject("node Left"),
};
const cordoned = reject("node cordoned");

export const nodeReady: FilterPlugin = {
  name: "NodeReady",
  kind: "policy",
  filter(_ctx, _replica, node) {
    if (node.status !== "Ready") return notReady[node.status] ?? notReady.NotReady;
    return node.cordoned ? cordoned : filterOk;
  },
};

export const driverAvailable: FilterPlugin = {
  name: "DriverAvailable",
  kind: "policy",
  preFilter(ctx, replica) {
    ctx.cycle.driverRejection = reject(`driver "${replica.driver}" not offered`);
    return "run";
  },
  filter(ctx, replica, node) {
    return node.drivers.includes(replica.driver) ? filterOk : ctx.cycle.driverRejection;
  },
};

const insufficient = {
  cpu: reject("Insufficient cpu"),
  memory: reject("Insufficient memory"),
  storage: reject("Insufficient storage"),
  bandwidth: reject("Insufficient bandwidth"),
};

/**
 * capacity − allocated − placed-by-this-plan ≥ request in every dimension. Written as
 * `!(request <= free)` so a NaN anywhere rejects instead of slipping through.
 */
export const fitsResources: FilterPlugin = {
  name: "FitsResources",
  kind: "occupancy",
  filter(ctx, replica, node, i) {
    const s = ctx.state;
    const req = replica.resources;
    const cap = node.capacity;
    const used = node.allocated;
    if (
      !(req.cpuMillicores <= cap.cpuMillicores - used.cpuMillicores - s.plannedCpuMillicores[i]!)
    ) {
      return insufficient.cpu;
    }
    if (!(req.memoryMiB <= cap.memoryMiB - used.memoryMiB - s.plannedMemoryMiB[i]!)) {
      return insufficient.memory;
    }
    if (!(req.storageGiB <= cap.storageGiB - used.storageGiB - s.plannedStorageGiB[i]!)) {
      return insufficient.storage;
    }
    if (
      !(req.bandwidthMbps <= cap.bandwidthMbps - used.bandwidthMbps - s.plannedBandwidthMbps[i]!)
    ) {
      return insufficient.bandwidth;
    }
    return filterOk;
  },
};

/** Kubernetes' ToleratesTaint: an empty key with Exists tolerates every taint. */
export function tolerates(toleration: Toleration, taint: Taint): boolean {
  if (toleration.effect && toleration.effect !== taint.effect) return false;
  if (toleration.key !== "" && toleration.key !== taint.key) return false;
  if (toleration.operator === "Exists") return true;
  return toleration.key === taint.key && (toleration.value ?? "") === taint.value;
}

export function isTolerated(tolerations: readonly Toleration[], taint: Taint): boolean {
  for (const toleration of tolerations) if (tolerates(toleration, taint)) return true;
  return false;
}

export const taintToleration: FilterPlugin = {
  name: "TaintToleration",
  kind: "policy",
  filter(_ctx, replica, node) {
    for (const taint of node.taints) {
      if (taint.effect !== "NoSchedule") continue;
      if (!isTolerated(replica.placement.tolerations, taint)) {
        // Tainted nodes are few, so building this text here is cheap enough.
        return reject(`untolerated taint ${taint.key}=${taint.value}:NoSchedule`);
      }
    }
    return filterOk;
  },
};

export const regionZoneRequired: FilterPlugin = {
  name: "RegionZoneRequired",
  kind: "policy",
  preFilter(ctx, replica) {
    const { regions, zones } = replica.placement;
    ctx.cycle.regionRejection = reject(`region not in required [${regions.required.join(", ")}]`);
    ctx.cycle.zoneRejection = reject(`zone not in required [${zones.required.join(", ")}]`);
    return regions.required.length > 0 || zones.required.length > 0 ? "run" : "skip";
  },
  filter(ctx, replica, node) {
    const { regions, zones } = replica.placement;
    if (regions.required.length > 0 && !regions.required.includes(node.region)) {
      return ctx.cycle.regionRejection;
    }
    if (zones.required.length > 0 && !zones.required.includes(node.zone)) {
      return ctx.cycle.zoneRejection;
    }
    return filterOk;
  },
};

export const nodeSelector: FilterPlugin = {
  name: "NodeSelector",
  kind: "policy",
  preFilter(ctx, replica) {
    const keys = Object.keys(replica.placement.nodeSelector).sort();
    const values = keys.map((key) => replica.placement.nodeSelector[key] ?? "");
    ctx.cycle.selectorKeys = keys;
    ctx.cycle.selectorValues = values;
    const text = keys.map((key, i) => `${key}=${values[i]}`).join(",");
    ctx.cycle.selectorRejection = reject(`node selector {${text}} not matched`);
    return keys.length > 0 ? "run" : "skip";
  },
  filter(ctx, _replica, node) {
    const { selectorKeys: keys, selectorValues: values } = ctx.cycle;
    for (let k = 0; k < keys.length; k++) {
      if (node.labels[keys[k]!] !== values[k]) return ctx.cycle.selectorRejection;
    }
    return filterOk;
  },
};

const alreadyOnNode = reject("anti-affinity: workload already on node");

export const antiAffinity: FilterPlugin = {
  name: "AntiAffinity",
  kind: "occupancy",
  preFilter(_ctx, replica) {
    return replica.placement.antiAffinity ? "run" : "skip";
  },
  filter(ctx, replica, _node, i) {
    if (!replica.placement.antiAffinity) return filterOk;
    const onNode = ctx.cycle.workload?.perNode.get(i) ?? 0;
    return onNode > 0 ? alreadyOnNode : filterOk;
  },
};

const spreadSkew = reject("zone spread: zone above the least-filled zone");

/**
 * The zone-spread guarantee, stated exactly. The domain of a workload is the set of zones
 * holding at least one node that passes its policy filters (Ready and not cordoned, driver
 * offered, NoSchedule taints tolerated, required region/zone, node selector); capacity and
 * anti-affinity do not shrink it, so a full zone holds the others back rather than being
 * silently dropped (Kubernetes' DoNotSchedule). Counts are live replicas of the workload on
 * nodes in the domain plus this plan's placements. A replica may only go to a zone whose
 * count is the domain's minimum. Hence a placement never raises max − min above
 * max(1, max − min before it): balanced stays within one, and skew left by earlier
 * failures only shrinks.
 */
export const zoneSpread: FilterPlugin = {
  name: "ZoneSpread",
  kind: "occupancy",
  preFilter(ctx, replica) {
    if (!replica.placement.spreadAcrossZones) return "skip";
    const domain = spreadDomain(ctx, replica);
    const perZone = ctx.cycle.workload?.perZone;
    let min = Number.POSITIVE_INFINITY;
    for (let z = 0; z < domain.length; z++) {
      if (domain[z] === 1) min = Math.min(min, perZone?.[z] ?? 0);
    }
    ctx.cycle.spreadDomain = domain;
    ctx.cycle.spreadMinCount = Number.isFinite(min) ? min : 0;
    return "run";
  },
  filter(ctx, replica, _node, i) {
    if (!replica.placement.spreadAcrossZones) return filterOk;
    const zone = ctx.state.zoneOf[i]!;
    // Outside the domain only when a caller ran this without the policy filters first.
    if (ctx.cycle.spreadDomain?.[zone] !== 1) return filterOk;
    const inZone = ctx.cycle.workload?.perZone[zone] ?? 0;
    return inZone > ctx.cycle.spreadMinCount ? spreadSkew : filterOk;
  },
};

/**
 * REQ-030: no node holds more of a workload's replicas than it can lose and keep
 * minAvailable ready — at most max(1, replicas − minAvailable), counting the replicas that
 * stay (ADR 0034). Soft: when every node that could take the replica is at its budget (too
 * few nodes), the replica still goes, to the least-stacked node, and the plan says so; a
 * replica is never left pending for the sake of a node loss that has not happened.
 */
export const nodeLossBudget: FilterPlugin = {
  name: "NodeLossBudget",
  kind: "occupancy",
  soft: true,
  preFilter(ctx, replica) {
    const availability = replica.availability;
    if (!budgetApplies(availability)) return "skip";
    ctx.cycle.nodeLossBudget = budgetOf(availability);
    ctx.cycle.budgetRejection = reject(`node-loss budget full (${budgetText(availability)})`);
    return "run";
  },
  filter(ctx, replica, _node, i) {
    if (!budgetApplies(replica.availability)) return filterOk;
    const onNode = ctx.cycle.workload?.stayingPerNode.get(i) ?? 0;
    return onNode < ctx.cycle.nodeLossBudget ? filterOk : ctx.cycle.budgetRejection;
  },
};

/**
 * Policy verdicts cannot change within a plan, so the domain is computed once per workload
 * and constraint set, and per zone stops at the first node that passes.
 */
function spreadDomain(ctx: SchedulingContext, replica: PendingReplica): Uint8Array {
  const p = replica.placement;
  const memoKey = JSON.stringify([
    replica.workloadKey,
    replica.driver,
    p.regions.required,
    p.zones.required,
    p.nodeSelector,
    p.tolerations,
  ]);
  const memo = ctx.state.spreadDomains.get(memoKey);
  if (memo !== undefined) return memo;
  const { nodesByZone } = ctx.state;
  const domain = new Uint8Array(nodesByZone.length);
  for (let z = 0; z < nodesByZone.length; z++) {
    for (const i of nodesByZone[z]!) {
      if (passesPolicy(ctx, replica, i)) {
        domain[z] = 1;
        break;
      }
    }
  }
  ctx.state.spreadDomains.set(memoKey, domain);
  return domain;
}

function passesPolicy(ctx: SchedulingContext, replica: PendingReplica, i: number): boolean {
  const node = ctx.state.nodes[i]!;
  for (const f of ctx.filters) {
    if (f.kind !== "policy") continue;
    const status: FilterStatus = f.filter(ctx, replica, node, i);
    if (!status.ok) return false;
  }
  return true;
}

/**
 * Policy filters first (see FilterPlugin.kind), cheapest first within each kind; the soft
 * one last, so a node it rejects has passed every hard filter.
 */
export const defaultFilters: readonly FilterPlugin[] = [
  nodeReady,
  driverAvailable,
  taintToleration,
  regionZoneRequired,
  nodeSelector,
  fitsResources,
  antiAffinity,
  zoneSpread,
  nodeLossBudget,
];

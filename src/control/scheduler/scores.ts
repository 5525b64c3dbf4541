/**
 * Score plugins (REQ-021). Each returns 0..100 for a node that already passed every
 * filter; the framework combines them as
 *   S = w_l·locality + w_r·reliability + w_c·cost + w_u·utilization_balance − w_n·penalty.
 * Every plugin clamps, so odd inputs (NaN, negative, out of range) cannot push a score out
 * of 0..100 or make two nodes incomparable.
 */
import { isTolerated } from "./filters.js";
import type { ScorePlugin } from "./plugin.js";
import type { ScoreWeights } from "./types.js";

/** Clamp to 0..1, NaN to 0. */
function unit(x: number): number {
  return x > 0 ? Math.min(x, 1) : 0;
}

/**
 * 100 when the node is in a preferred region/zone, 0 when not, averaged over the kinds of
 * preference given. With no preference every node is equally local (100).
 */
export const locality: ScorePlugin = {
  name: "Locality",
  score(_ctx, replica, node) {
    const { regions, zones } = replica.placement;
    let parts = 0;
    let sum = 0;
    if (regions.preferred.length > 0) {
      parts++;
      if (regions.preferred.includes(node.region)) sum += 100;
    }
    if (zones.preferred.length > 0) {
      parts++;
      if (zones.preferred.includes(node.zone)) sum += 100;
    }
    return parts === 0 ? 100 : sum / parts;
  },
};

export const reliability: ScorePlugin = {
  name: "Reliability",
  score(_ctx, _replica, node) {
    return 100 * unit(node.reliability);
  },
};

/** For a node whose price is not known: neither rewarded nor punished. */
export const unknownCostScore = 50;

function knownCost(costPerHour: number | undefined): costPerHour is number {
  return costPerHour !== undefined && Number.isFinite(costPerHour) && costPerHour >= 0;
}

/**
 * Cheaper is better, normalised across the feasible nodes: the cheapest priced candidate
 * scores 100, the dearest 0. When the priced candidates all cost the same there is nothing
 * to prefer, so they score like unknown ones.
 */
export const cost: ScorePlugin = {
  name: "Cost",
  preScore(ctx, _replica, candidates, count) {
    let min = Number.POSITIVE_INFINITY;
    let max = Number.NEGATIVE_INFINITY;
    const nodes = ctx.state.nodes;
    for (let k = 0; k < count; k++) {
      const c = nodes[candidates[k]!]!.costPerHour;
      if (!knownCost(c)) continue;
      if (c < min) min = c;
      if (c > max) max = c;
    }
    ctx.cycle.costMinPerHour = min;
    ctx.cycle.costMaxPerHour = max;
  },
  score(ctx, _replica, node) {
    const c = node.costPerHour;
    const { costMinPerHour: min, costMaxPerHour: max } = ctx.cycle;
    if (!knownCost(c) || !(max > min)) return unknownCostScore;
    return 100 * unit((max - c) / (max - min));
  },
};

/** used/capacity after placement; a dimension the node does not offer counts as full. */
function fraction(used: number, capacity: number): number {
  return capacity > 0 ? unit(used / capacity) : 1;
}

/**
 * REQ-022: bin-pack prefers nodes that end up MORE utilised (fill one node before the
 * next, leaving whole nodes free for big replicas); spread prefers LESS utilised ones.
 * Utilisation is the mean of the cpu and memory fractions after this replica lands.
 */
export const utilizationBalance: ScorePlugin = {
  name: "UtilizationBalance",
  score(ctx, replica, node, i) {
    const s = ctx.state;
    const req = replica.resources;
    const cap = node.capacity;
    const used = node.allocated;
    const cpu = fraction(
      used.cpuMillicores + s.plannedCpuMillicores[i]! + req.cpuMillicores,
      cap.cpuMillicores,
    );
    const mem = fraction(used.memoryMiB + s.plannedMemoryMiB[i]! + req.memoryMiB, cap.memoryMiB);
    const utilization = (cpu + mem) / 2;
    return replica.placement.strategy === "spread" ? 100 * (1 - utilization) : 100 * utilization;
  },
};

/** Penalty for a node whose egress was never measured: we cannot tell if the link copes. */
export const unknownEgressPenalty = 50;
/** Per PreferNoSchedule taint the replica does not tolerate: allowed, but discouraged. */
export const preferNoSchedulePenalty = 25;

/**
 * Higher is worse: the share of the node's egress the replica asks for (or a flat penalty
 * when egress is unknown), plus a penalty per untolerated PreferNoSchedule taint.
 */
export const networkPenalty: ScorePlugin = {
  name: "NetworkPenalty",
  score(_ctx, replica, node) {
    const egress = node.egressMbps;
    let penalty =
      egress > 0 ? 100 * unit(replica.resources.bandwidthMbps / egress) : unknownEgressPenalty;
    for (const taint of node.taints) {
      if (
        taint.effect === "PreferNoSchedule" &&
        !isTolerated(replica.placement.tolerations, taint)
      ) {
        penalty += preferNoSchedulePenalty;
      }
    }
    return Math.min(penalty, 100);
  },
};

export interface WeightedScore {
  readonly plugin: ScorePlugin;
  /** Signed: the penalty enters with a negative weight. */
  readonly weight: number;
}

/**
 * The REQ-021 formula as a list. A weight that is not a finite number counts as 0: a NaN
 * would make every comparison false and no node could ever win.
 */
export function weightedScores(weights: ScoreWeights): readonly WeightedScore[] {
  const w = (x: number) => (Number.isFinite(x) ? x : 0);
  return [
    { plugin: locality, weight: w(weights.locality) },
    { plugin: reliability, weight: w(weights.reliability) },
    { plugin: cost, weight: w(weights.cost) },
    { plugin: utilizationBalance, weight: w(weights.utilizationBalance) },
    { plugin: networkPenalty, weight: -w(weights.networkPenalty) },
  ];
}

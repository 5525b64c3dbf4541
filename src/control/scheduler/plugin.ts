/**
 * The plugin seams, shaped after the Kubernetes scheduling framework: tiny interfaces that
 * return values. "Does not fit" is a FilterStatus, never an exception; a throw from a
 * plugin is a bug and is left to surface as one.
 */
import type { SchedulingState, WorkloadCounts } from "./state.js";
import type { PendingReplica, SchedNode } from "./types.js";

export type FilterRejection = { readonly ok: false; readonly reason: string };
export type FilterStatus = { readonly ok: true } | FilterRejection;

/** Shared so a passing node costs no allocation. */
export const filterOk: FilterStatus = Object.freeze({ ok: true });

export function reject(reason: string): FilterRejection {
  return Object.freeze({ ok: false, reason });
}

export type PreFilterResult = "run" | "skip";

export interface FilterPlugin {
  readonly name: string;
  /**
   * "policy" filters depend only on the node and the replica's own constraints, so their
   * verdict cannot change within a plan; "occupancy" filters depend on what is placed.
   * Policy filters run first; zone spread uses them to decide which zones count.
   */
  readonly kind: "policy" | "occupancy";
  /**
   * A soft filter is a rule worth keeping while any node allows it, but not worth leaving
   * a replica pending for: when no node passes every filter, the nodes that failed only
   * soft filters still take the replica (the framework reports it went over). Soft
   * filters are occupancy filters and run after every hard one.
   */
  readonly soft?: boolean;
  /**
   * Once per replica before any node (Kubernetes' PreFilter); may write ctx.cycle.
   * "skip" when filter() would pass every node for this replica (no constraint of this
   * kind), so the per-node loop does not pay for it; filter() must stay correct anyway.
   */
  preFilter?(ctx: SchedulingContext, replica: PendingReplica): PreFilterResult;
  filter(
    ctx: SchedulingContext,
    replica: PendingReplica,
    node: SchedNode,
    nodeIndex: number,
  ): FilterStatus;
}

export interface ScorePlugin {
  readonly name: string;
  /** Once per replica over the feasible nodes (Kubernetes' PreScore), for normalisation. */
  preScore?(
    ctx: SchedulingContext,
    replica: PendingReplica,
    candidates: Int32Array,
    count: number,
  ): void;
  /** 0..100, higher is better for the node (for a penalty: higher is worse). */
  score(
    ctx: SchedulingContext,
    replica: PendingReplica,
    node: SchedNode,
    nodeIndex: number,
  ): number;
}

/**
 * Per-replica scratch (Kubernetes' CycleState): what pre-steps computed once so that the
 * per-node calls only read. Reset before each replica.
 */
export class CycleState {
  workload: WorkloadCounts | undefined = undefined;
  driverRejection: FilterRejection = reject("");
  regionRejection: FilterRejection = reject("");
  zoneRejection: FilterRejection = reject("");
  selectorRejection: FilterRejection = reject("");
  /** Node selector as parallel arrays, so matching does not allocate per node. */
  selectorKeys: string[] = [];
  selectorValues: string[] = [];
  /** Zone id → 1 when the zone is in the workload's spread domain. */
  spreadDomain: Uint8Array | undefined = undefined;
  /** Fewest replicas of the workload in any zone of the domain. */
  spreadMinCount = 0;
  /** Most replicas of the workload per node within its node-loss budget; ∞ when none. */
  nodeLossBudget = Number.POSITIVE_INFINITY;
  budgetRejection: FilterRejection = reject("");
  /**
   * Whether the workload's own replicas spread over nodes before they stack (ADR 0034):
   * the framework then prefers the nodes holding fewest of them, before the score.
   */
  spreadOverNodes = false;
  costMinPerHour = Number.NaN;
  costMaxPerHour = Number.NaN;

  reset(): void {
    this.workload = undefined;
    this.selectorKeys = [];
    this.selectorValues = [];
    this.spreadDomain = undefined;
    this.spreadMinCount = 0;
    this.nodeLossBudget = Number.POSITIVE_INFINITY;
    this.spreadOverNodes = false;
    this.costMinPerHour = Number.NaN;
    this.costMaxPerHour = Number.NaN;
  }
}

export interface SchedulingContext {
  readonly nowMs: number;
  readonly state: SchedulingState;
  readonly cycle: CycleState;
  /** The filters of the running framework, in order. */
  readonly filters: readonly FilterPlugin[];
}

/**
 * The rebalancer's part of a controller pass (ADR 0035): per workload with nothing for the
 * reconciler to fix, the decision of the pure rebalancer (rebalancer.ts), fed with the
 * probe "where would one more replica go?" — asked at most once a cool-down per workload
 * and a few times per pass, since it scans every node — and the cool-down's memory of
 * moves started (a move given up leaves no record behind).
 */
import { probePlacement } from "../scheduler/explain.js";
import type { ClusterSnapshot, ScoreWeights } from "../scheduler/types.js";
import type { ClusterState, Versioned } from "./clusterState.js";
import {
  decideRebalance,
  type RebalanceDecision,
  type RebalanceOptions,
  type RebalanceTarget,
} from "./rebalancer.js";
import type { ReplicaRecord, WorkloadRecord } from "./records.js";
import { availabilityOf, existingReplicas, toSchedNodes } from "./schedulerInput.js";
import { type AppliedSpecView, driverOfSpec, placementOf, rebalanceOf } from "./specView.js";
import { isReplicaReady } from "./workloadReconciler.js";

/**
 * Bounds on the rebalancer per pass (ADR 0035): "where would one more replica go?" costs a
 * scheduling cycle over every node, and moves are meant to trickle, not to flood.
 */
const rebalanceProbesPerPass = 8;
const rebalanceStartsPerPass = 4;

/** What one pass of the rebalancer may still do, and what it computed once for all. */
export class RebalancePass {
  starts = 0;
  probes = 0;
  /** Built on the first probe: the nodes and placed replicas as the scheduler sees them. */
  snapshot: ClusterSnapshot | undefined;
  readonly nowMs: number;
  readonly readyNodes: number;
  readonly readyZones: number;

  constructor(state: ClusterState, nowMs: number) {
    this.nowMs = nowMs;
    const zones = new Set<string>();
    let ready = 0;
    for (const node of state.nodes.values()) {
      if (node.status !== "Ready" || node.cordoned || node.draining) continue;
      ready++;
      zones.add(node.zone);
    }
    this.readyNodes = ready;
    this.readyZones = zones.size;
  }
}

export class RebalanceStep {
  /**
   * When a move of each workload last started, for the cool-down: a move given up leaves
   * no record behind, so the records alone would allow the next one at once.
   */
  private readonly moveStartedAtMs = new Map<string, number>();
  /** When each workload was last asked "where would one more go?" (at most once a cool-down). */
  private readonly probedAtMs = new Map<string, number>();

  constructor(
    /** Off with the coordinator's --no-rebalance; a workload can also turn it off. */
    private readonly enabled: boolean,
    private readonly options: RebalanceOptions,
    private readonly weights: ScoreWeights | undefined,
  ) {}

  /** The rebalancer's decision for one workload this pass, undefined for none (ADR 0035). */
  decide(
    state: ClusterState,
    key: string,
    workload: WorkloadRecord,
    spec: AppliedSpecView,
    replicas: Versioned<ReplicaRecord>[],
    pass: RebalancePass,
  ): RebalanceDecision | undefined {
    const live = replicas.map((r) => r.value).filter((r) => r.desired === "Running");
    const moving = live.some((r) => r.move !== undefined && r.move.finishedAtMs === undefined);
    const enabled = this.enabled && rebalanceOf(spec);
    // A move under way is always followed (to its end, or given up if turned off).
    if (!moving && (!enabled || pass.starts >= rebalanceStartsPerPass)) return undefined;
    let lastStartedAtMs = this.moveStartedAtMs.get(key);
    for (const replica of live) {
      if (replica.move !== undefined) {
        lastStartedAtMs = Math.max(lastStartedAtMs ?? 0, replica.move.startedAtMs);
      }
    }
    const nodeStatus = (name: string) => state.nodes.get(name)?.status;
    const decision = decideRebalance({
      workload: {
        revision: workload.revision,
        replicas: workload.replicas,
        minAvailable: workload.minAvailable,
        spreadAcrossZones: spec.spec.placement.spreadAcrossZones,
        enabled,
      },
      replicas: live.map((r) => ({
        id: r.id,
        node: r.node,
        zone: state.nodes.get(r.node)?.zone ?? "",
        revision: r.revision,
        ready: isReplicaReady(r, nodeStatus),
        ...(r.move ? { move: r.move } : {}),
      })),
      nowMs: pass.nowMs,
      lastMoveStartedAtMs: lastStartedAtMs,
      findTarget: () => this.findTarget(state, key, workload, spec, pass),
      readyNodes: pass.readyNodes,
      readyZones: pass.readyZones,
      options: this.options,
    });
    if (decision.type === "none") return undefined;
    if (decision.type === "start") {
      pass.starts++;
      this.moveStartedAtMs.set(key, pass.nowMs);
    }
    return decision;
  }

  /**
   * Where the scheduler would put one more replica of the workload now; asked at most once
   * a cool-down per workload and a few times per pass, since it scans every node.
   */
  private findTarget(
    state: ClusterState,
    key: string,
    workload: WorkloadRecord,
    spec: AppliedSpecView,
    pass: RebalancePass,
  ): RebalanceTarget | undefined {
    const last = this.probedAtMs.get(key);
    if (last !== undefined && pass.nowMs - last < this.options.cooldownMs) return undefined;
    if (pass.probes >= rebalanceProbesPerPass) return undefined;
    pass.probes++;
    this.probedAtMs.set(key, pass.nowMs);
    pass.snapshot ??= {
      revision: state.revision,
      nodes: toSchedNodes(state, pass.nowMs),
      replicas: existingReplicas(state),
    };
    const probe = probePlacement(
      pass.snapshot,
      {
        id: "rebalance-probe",
        workloadKey: key,
        driver: driverOfSpec(spec),
        resources: spec.spec.resources,
        placement: placementOf(spec),
        availability: availabilityOf(workload),
      },
      this.weights,
    );
    if (probe === undefined) return undefined;
    return { node: probe.node, zone: state.nodes.get(probe.node)?.zone ?? "" };
  }
}

/**
 * Plain values in and out of the scheduler core (DESIGN.md, decision 4). The core sees an
 * immutable snapshot and returns a Plan; the coordinator is the only thing that commits
 * plans, after re-checking them against the latest revision.
 */
import type { Rng } from "../../lib/rng.js";

export interface Resources {
  cpuMillicores: number;
  memoryMiB: number;
  storageGiB: number;
  bandwidthMbps: number;
}

/** The four dimensions by the name they carry in reasons ("Insufficient memory"). */
export type ResourceName = "cpu" | "memory" | "storage" | "bandwidth";

export type TaintEffect = "NoSchedule" | "PreferNoSchedule";

export interface Taint {
  key: string;
  value: string;
  effect: TaintEffect;
}

export interface Toleration {
  key: string;
  operator: "Equal" | "Exists";
  value?: string;
  /** Empty or absent tolerates every effect, as in Kubernetes. */
  effect?: TaintEffect | "";
}

export type NodeStatus = "Ready" | "NotReady" | "Lost" | "Left";

export interface SchedNode {
  name: string;
  status: NodeStatus;
  cordoned: boolean;
  region: string;
  zone: string;
  labels: Record<string, string>;
  taints: Taint[];
  /** Runtime drivers the agent offers, e.g. ["container", "process"]. */
  drivers: string[];
  /** What the node offers. */
  capacity: Resources;
  /** Sum of the fragments of replicas already placed on it. */
  allocated: Resources;
  /** Measured egress bandwidth; 0 or less means unknown. */
  egressMbps: number;
  /** 0..1, 1 = never flapped; computed by the coordinator. */
  reliability: number;
  /** From a node label; absent when unknown. */
  costPerHour?: number;
}

export interface Placement {
  strategy: "binpack" | "spread";
  regions: { required: string[]; preferred: string[] };
  zones: { required: string[]; preferred: string[] };
  /** No two replicas of the same workload on one node. */
  antiAffinity: boolean;
  /**
   * Keep per-zone counts of the workload balanced (max − min ≤ 1) among the zones that hold
   * a node passing the workload's policy filters; see ZoneSpread in filters.ts for the exact
   * guarantee.
   */
  spreadAcrossZones: boolean;
  nodeSelector: Record<string, string>;
  tolerations: Toleration[];
}

export type Driver = "container" | "process";

/**
 * A replica waiting for a node. Replicas of one workload are expected to share driver,
 * resources and placement; the scheduler does not rely on it for correctness, only for
 * caching the zone-spread domain per workload (keyed on the placement's content).
 */
export interface PendingReplica {
  id: string;
  workloadKey: string;
  driver: Driver;
  resources: Resources;
  placement: Placement;
  /**
   * The workload's availability ask, which sets its node-loss budget (ADR 0034): no node
   * should hold more of its replicas than it can lose and keep minAvailable ready. Absent
   * (or minAvailable 0): nothing is asked of a node loss and replicas bin-pack freely.
   */
  availability?: Availability;
}

export interface Availability {
  /** The workload's desired replica count (not counting a rollout's or a move's surge). */
  replicas: number;
  minAvailable: number;
}

/** A live replica already placed; counts for anti-affinity and zone spread. */
export interface ExistingReplica {
  id: string;
  workloadKey: string;
  node: string;
  /**
   * The replica is on its way out (its stop was asked for, or it belongs to a revision a
   * rollout replaces): it still holds its resources and counts for anti-affinity and zone
   * spread, but not against the node-loss budget, which is about the replicas that stay.
   */
  leaving?: boolean;
}

export interface ClusterSnapshot {
  revision: number;
  nodes: SchedNode[];
  replicas: ExistingReplica[];
  /**
   * Optional: node name → position in nodes, kept by the coordinator's snapshot cache so
   * the scheduler need not rebuild it per decision. Checked before use; a stale entry
   * only costs a scan.
   */
  nodeIndexByName?: ReadonlyMap<string, number>;
}

export interface ScoreWeights {
  locality: number;
  reliability: number;
  cost: number;
  utilizationBalance: number;
  networkPenalty: number;
}

/** REQ-021 defaults. */
export const defaultWeights: ScoreWeights = {
  locality: 0.3,
  reliability: 0.25,
  cost: 0.15,
  utilizationBalance: 0.2,
  networkPenalty: 0.1,
};

export interface PlannedPlacement {
  replicaId: string;
  node: string;
  /** The weighted total S (REQ-021). */
  score: number;
  /** Each score plugin's 0..100 value for the chosen node, by plugin name. */
  scores: Record<string, number>;
  /**
   * Set when every node that could take the replica already held its workload's node-loss
   * budget, so it went over budget on the least-stacked one (ADR 0034): says why, and how
   * many nodes the workload would need to survive the loss of any one.
   */
  overBudget?: string;
}

export interface ScoredNode {
  node: string;
  /** The weighted total S. */
  score: number;
  /** Per-plugin 0..100 values; filled by explain, where the user asks why. */
  scores?: Record<string, number>;
}

export interface Unschedulable {
  replicaId: string;
  workloadKey: string;
  /** Nodes that passed every filter (0 unless the request itself was invalid). */
  eligibleNodes: number;
  /** Filter name → nodes it rejected (each node counted once, by the first filter failing). */
  rejections: Record<string, number>;
  /** Reason text → nodes, the finer breakdown the message is built from. */
  reasons: Record<string, number>;
  /** "0/5 nodes available: 3 Insufficient memory, 2 zone not in required [a]" */
  message: string;
  /**
   * The best-scoring nodes that failed only on occupancy (resources, anti-affinity, zone
   * spread): where the replica would go if room were made. Highest first, at most 3.
   */
  bestScores: ScoredNode[];
}

export interface Plan {
  snapshotRevision: number;
  placements: PlannedPlacement[];
  unschedulable: Unschedulable[];
}

export interface ScheduleInput {
  snapshot: ClusterSnapshot;
  pending: PendingReplica[];
  weights?: ScoreWeights;
  /** Time as data: the core never reads a clock. */
  nowMs: number;
  /** Breaks ties between equally scored nodes; deterministic for a seed. */
  rng: Rng;
}

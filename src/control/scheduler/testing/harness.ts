/**
 * A scheduler harness in the repo, after Nomad's scheduler/tests/testing.go: in-memory
 * cluster state, a process() that runs the real scheduler and records every plan, an
 * applyPlan() that commits a plan as it is, so a second process() sees the first one's
 * placements, and a submitPlan() that commits like the coordinator's plan applier does:
 * it re-checks each placement against the nodes as they are now and commits only what
 * still fits (a partial commit). RejectingPlanner refuses plans, N times or always (as
 * Nomad's RejectPlan harness), in front of the harness's applier or the coordinator's, to
 * drive the retry path. Tests and the benchmark drive the scheduler through it.
 */
import { seededRng } from "../../../lib/rng.js";
import { defaultFilters } from "../filters.js";
import { prepareCycle } from "../framework.js";
import {
  type PlanRejection,
  type PlanResult,
  type PlanSubmitter,
  recheckPlan,
} from "../planCheck.js";
import {
  CycleState,
  type FilterPlugin,
  type FilterStatus,
  type SchedulingContext,
  type ScorePlugin,
} from "../plugin.js";
import { schedule } from "../schedule.js";
import { SchedulingState } from "../state.js";
import {
  type Availability,
  type ClusterSnapshot,
  type Driver,
  defaultWeights,
  type ExistingReplica,
  type PendingReplica,
  type Placement,
  type Plan,
  type Resources,
  type SchedNode,
  type ScoreWeights,
} from "../types.js";

/** A node description where the resource records may be given in part. */
export type NodeTemplate = Partial<Omit<SchedNode, "capacity" | "allocated">> & {
  capacity?: Partial<Resources>;
  allocated?: Partial<Resources>;
};

export interface WorkloadSpec {
  key: string;
  replicas: number;
  /**
   * As in a workload spec: replicas − 1 when absent, as the coordinator fills it in. 0 asks
   * nothing of a node loss (no node-loss budget: replicas bin-pack freely).
   */
  minAvailable?: number;
  /** The workload's whole replica count, when this call adds only some of them. */
  totalReplicas?: number;
  resources?: Partial<Resources>;
  placement?: Partial<Placement>;
  driver?: Driver;
}

export interface ExistingSpec {
  workloadKey: string;
  node: string;
  /** Added to the node's allocation, as a running replica would be. */
  resources?: Partial<Resources>;
  id?: string;
  /** On its way out: does not count against the node-loss budget. */
  leaving?: boolean;
}

export const zeroResources: Readonly<Resources> = Object.freeze({
  cpuMillicores: 0,
  memoryMiB: 0,
  storageGiB: 0,
  bandwidthMbps: 0,
});

/** A mid-sized edge machine: 4 cores, 8 GiB, 100 GiB disk, 1 Gbps. */
export const defaultCapacity: Readonly<Resources> = Object.freeze({
  cpuMillicores: 4000,
  memoryMiB: 8192,
  storageGiB: 100,
  bandwidthMbps: 1000,
});

export const defaultRequest: Readonly<Resources> = Object.freeze({
  cpuMillicores: 500,
  memoryMiB: 512,
  storageGiB: 1,
  bandwidthMbps: 10,
});

export function resources(partial: Partial<Resources> = {}, base = zeroResources): Resources {
  return { ...base, ...partial };
}

export function addResources(a: Resources, b: Resources): Resources {
  return {
    cpuMillicores: a.cpuMillicores + b.cpuMillicores,
    memoryMiB: a.memoryMiB + b.memoryMiB,
    storageGiB: a.storageGiB + b.storageGiB,
    bandwidthMbps: a.bandwidthMbps + b.bandwidthMbps,
  };
}

/** REQ-022 defaults: bin-pack, no constraints. */
export function makePlacement(partial: Partial<Placement> = {}): Placement {
  return {
    strategy: "binpack",
    regions: { required: [], preferred: [] },
    zones: { required: [], preferred: [] },
    antiAffinity: false,
    spreadAcrossZones: false,
    nodeSelector: {},
    tolerations: [],
    ...partial,
  };
}

export function makeNode(name: string, template: NodeTemplate = {}): SchedNode {
  const { capacity, allocated, ...rest } = template;
  return {
    name,
    status: "Ready",
    cordoned: false,
    region: "region-1",
    zone: "a",
    labels: {},
    taints: [],
    drivers: ["container", "process"],
    egressMbps: 1000,
    reliability: 1,
    ...rest,
    capacity: resources(capacity, defaultCapacity),
    allocated: resources(allocated),
  };
}

/** A single pending replica; without `availability` its workload has no node-loss budget. */
export function makeReplica(
  id: string,
  workloadKey: string,
  partial: {
    resources?: Partial<Resources>;
    placement?: Partial<Placement>;
    driver?: Driver;
    availability?: Availability;
  } = {},
): PendingReplica {
  return {
    id,
    workloadKey,
    driver: partial.driver ?? "container",
    resources: resources(partial.resources, defaultRequest),
    placement: makePlacement(partial.placement),
    ...(partial.availability ? { availability: { ...partial.availability } } : {}),
  };
}

export class SchedulerHarness {
  nodes: SchedNode[] = [];
  existing: ExistingReplica[] = [];
  pending: PendingReplica[] = [];
  /** Every plan process() produced, in order (Nomad's h.Plans). */
  readonly plans: Plan[] = [];
  revision = 1;
  weights: ScoreWeights = defaultWeights;
  nowMs = 1_700_000_000_000;

  private nodeSeq = 0;
  private replicaSeq = 0;
  private readonly indexByName = new Map<string, number>();

  /** Adds count nodes; the template may depend on the node's position in this batch. */
  addNodes(
    count: number,
    template: NodeTemplate | ((i: number) => NodeTemplate) = {},
  ): SchedNode[] {
    const added: SchedNode[] = [];
    for (let i = 0; i < count; i++) {
      const t = typeof template === "function" ? template(i) : template;
      const node = makeNode(t.name ?? `node-${String(this.nodeSeq++).padStart(5, "0")}`, t);
      this.indexByName.set(node.name, this.nodes.length);
      this.nodes.push(node);
      added.push(node);
    }
    this.revision++;
    return added;
  }

  /**
   * Queues the workload's replicas as pending, ids "<key>-<n>", with the availability ask
   * the coordinator would attach (minAvailable defaults to replicas − 1, as in a spec).
   */
  addWorkload(spec: WorkloadSpec): PendingReplica[] {
    const placement = makePlacement(spec.placement);
    const request = resources(spec.resources, defaultRequest);
    const total = spec.totalReplicas ?? spec.replicas;
    const availability: Availability = {
      replicas: total,
      minAvailable: spec.minAvailable ?? Math.max(0, total - 1),
    };
    const added: PendingReplica[] = [];
    for (let i = 0; i < spec.replicas; i++) {
      const replica: PendingReplica = {
        id: `${spec.key}-${this.replicaSeq++}`,
        workloadKey: spec.key,
        driver: spec.driver ?? "container",
        resources: { ...request },
        placement,
        availability,
      };
      this.pending.push(replica);
      added.push(replica);
    }
    return added;
  }

  /** A live replica already on a node; its resources are added to the node's allocation. */
  addExisting(spec: ExistingSpec): ExistingReplica {
    const replica: ExistingReplica = {
      id: spec.id ?? `${spec.workloadKey}-${this.replicaSeq++}`,
      workloadKey: spec.workloadKey,
      node: spec.node,
      ...(spec.leaving ? { leaving: true } : {}),
    };
    if (spec.resources !== undefined) this.allocate(spec.node, resources(spec.resources));
    this.existing.push(replica);
    this.revision++;
    return replica;
  }

  /**
   * The state as the coordinator would hand it over. Arrays are copied and nodes are
   * replaced, never edited, by applyPlan(), so an earlier snapshot stays as it was.
   */
  snapshot(): ClusterSnapshot {
    return { revision: this.revision, nodes: [...this.nodes], replicas: [...this.existing] };
  }

  /** Schedules everything pending with a seeded rng and records the plan. */
  process(seed = 1): Plan {
    const plan = schedule({
      snapshot: this.snapshot(),
      pending: [...this.pending],
      weights: this.weights,
      nowMs: this.nowMs,
      rng: seededRng(seed),
    });
    this.plans.push(plan);
    return plan;
  }

  /** Commits a plan's placements: allocations grow, placed replicas become existing. */
  applyPlan(plan: Plan): void {
    const byId = new Map(this.pending.map((replica) => [replica.id, replica]));
    const placed = new Set<string>();
    for (const placement of plan.placements) {
      const replica = byId.get(placement.replicaId);
      if (replica === undefined)
        throw new Error(`plan places unknown replica ${placement.replicaId}`);
      this.allocate(placement.node, replica.resources);
      this.existing.push({
        id: replica.id,
        workloadKey: replica.workloadKey,
        node: placement.node,
      });
      placed.add(replica.id);
    }
    this.pending = this.pending.filter((replica) => !placed.has(replica.id));
    this.revision++;
  }

  /**
   * Commits a plan like the coordinator's plan applier: each placement is re-checked
   * against the nodes as they are now (a node updated, cordoned or filled since process()
   * refuses it; so does a replica no longer pending) and only what passes is committed.
   */
  submitPlan(plan: Plan): PlanResult {
    const byId = new Map(this.pending.map((replica) => [replica.id, replica]));
    const { accepted, rejected } = recheckPlan(this.nodes, plan, (id) => byId.get(id)?.resources);
    if (accepted.length === 0) return { placed: [], rejected, revision: 0 };
    this.applyPlan({ ...plan, placements: accepted });
    return { placed: accepted, rejected, revision: this.revision };
  }

  /** The harness's re-checking applier as a PlanSubmitter, for a RejectingPlanner to wrap. */
  applier(): PlanSubmitter {
    return { apply: async (plan) => this.submitPlan(plan) };
  }

  node(name: string): SchedNode {
    const i = this.indexByName.get(name);
    if (i === undefined) throw new Error(`no node ${name}`);
    return this.nodes[i]!;
  }

  /** Replace a node (status change, cordon, labels…) the way a watch update would. */
  updateNode(name: string, change: NodeTemplate): SchedNode {
    const current = this.node(name);
    const next = makeNode(name, {
      ...current,
      ...change,
      capacity: { ...current.capacity, ...change.capacity },
      allocated: { ...current.allocated, ...change.allocated },
    });
    this.nodes[this.indexByName.get(name)!] = next;
    this.revision++;
    return next;
  }

  /** Live replicas of a workload per zone (zones without any are absent). */
  countsByZone(workloadKey: string): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const replica of this.existing) {
      if (replica.workloadKey !== workloadKey) continue;
      const zone = this.node(replica.node).zone;
      counts[zone] = (counts[zone] ?? 0) + 1;
    }
    return counts;
  }

  countsByNode(workloadKey: string): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const replica of this.existing) {
      if (replica.workloadKey !== workloadKey) continue;
      counts[replica.node] = (counts[replica.node] ?? 0) + 1;
    }
    return counts;
  }

  /** allocated / capacity per dimension (a dimension with no capacity reads as 1). */
  utilization(name: string): Record<"cpu" | "memory" | "storage" | "bandwidth", number> {
    const { capacity: c, allocated: a } = this.node(name);
    const f = (used: number, cap: number) => (cap > 0 ? used / cap : 1);
    return {
      cpu: f(a.cpuMillicores, c.cpuMillicores),
      memory: f(a.memoryMiB, c.memoryMiB),
      storage: f(a.storageGiB, c.storageGiB),
      bandwidth: f(a.bandwidthMbps, c.bandwidthMbps),
    };
  }

  private allocate(name: string, request: Resources): void {
    const i = this.indexByName.get(name);
    if (i === undefined) throw new Error(`no node ${name}`);
    const node = this.nodes[i]!;
    this.nodes[i] = { ...node, allocated: addResources(node.allocated, request) };
  }
}

export interface RejectingPlannerOptions {
  /** How many plans to refuse before passing them on, or "always". */
  rejections: number | "always";
  /** The reason each refused placement carries (default Conflict: the commit lost a race). */
  reason?: PlanRejection;
}

/**
 * A planner that refuses plans (after Nomad's RejectPlan harness): the first `rejections`
 * plans submitted (or all of them) are refused whole — nothing committed, every placement
 * rejected — and later ones go on to `inner`, the harness's applier or the coordinator's.
 */
export class RejectingPlanner<Context extends unknown[] = []> implements PlanSubmitter<Context> {
  /** Every plan submitted, refused or not, in order. */
  readonly plans: Plan[] = [];
  /** How many plans were refused so far. */
  refused = 0;

  constructor(
    private readonly inner: PlanSubmitter<Context>,
    private readonly options: RejectingPlannerOptions,
  ) {}

  async apply(plan: Plan, ...context: Context): Promise<PlanResult> {
    this.plans.push(plan);
    const { rejections, reason = "Conflict" } = this.options;
    if (rejections === "always" || this.refused < rejections) {
      this.refused++;
      return {
        placed: [],
        rejected: plan.placements.map((placement) => ({
          replicaId: placement.replicaId,
          node: placement.node,
          reason,
          detail: `plan ${this.plans.length} refused by the test planner`,
        })),
        revision: 0,
      };
    }
    return this.inner.apply(plan, ...context);
  }
}

/**
 * A context with one replica's cycle prepared exactly as the framework does (every default
 * filter's pre-step has run), for calling one plugin directly in a table test.
 */
export function cycleFor(
  replica: PendingReplica,
  nodes: SchedNode[],
  existing: ExistingReplica[] = [],
): SchedulingContext {
  const ctx: SchedulingContext = {
    nowMs: 0,
    state: new SchedulingState({ revision: 1, nodes, replicas: existing }, [replica]),
    cycle: new CycleState(),
    filters: defaultFilters,
  };
  prepareCycle(ctx, defaultFilters, replica);
  return ctx;
}

/** One filter's verdict on nodes[nodeIndex]. */
export function runFilter(
  filter: FilterPlugin,
  replica: PendingReplica,
  nodes: SchedNode[],
  nodeIndex = 0,
  existing: ExistingReplica[] = [],
): FilterStatus {
  const ctx = cycleFor(replica, nodes, existing);
  return filter.filter(ctx, replica, nodes[nodeIndex]!, nodeIndex);
}

/** One score plugin's value for nodes[nodeIndex], with every node as a candidate. */
export function runScore(
  plugin: ScorePlugin,
  replica: PendingReplica,
  nodes: SchedNode[],
  nodeIndex = 0,
): number {
  const ctx = cycleFor(replica, nodes);
  const candidates = Int32Array.from(nodes.keys());
  plugin.preScore?.(ctx, replica, candidates, candidates.length);
  return plugin.score(ctx, replica, nodes[nodeIndex]!, nodeIndex);
}

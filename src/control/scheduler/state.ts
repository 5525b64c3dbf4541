/**
 * The working copy of the cluster for one schedule() call. The snapshot is never written:
 * what this plan places is tracked here, in flat typed arrays indexed by node position, so
 * the inner loop reads numbers instead of allocating or walking objects. Setup is paid per
 * decision, so anything only some workloads need (zones, replica counts) is built lazily.
 */
import { budgetApplies } from "./budget.js";
import type { ClusterSnapshot, ExistingReplica, PendingReplica, SchedNode } from "./types.js";

/**
 * Read-only zeros standing in for the planned-resource arrays until the first placement,
 * so a one-replica decision allocates no per-node buffers for them. Never written; grown
 * (replaced) when a larger cluster shows up.
 */
let sharedZeros = new Float64Array(0);

function zeros(n: number): Float64Array {
  if (sharedZeros.length < n) sharedZeros = new Float64Array(n);
  return sharedZeros;
}

/** Replicas of one workload per node and per zone: existing live ones plus this plan's. */
export interface WorkloadCounts {
  /** Node index → replicas; sparse because a workload touches few nodes. */
  readonly perNode: Map<number, number>;
  /**
   * Node index → replicas that stay (not leaving; this plan's count): what the node-loss
   * budget and the spread of a workload's own replicas over nodes are about (ADR 0034).
   */
  readonly stayingPerNode: Map<number, number>;
  /** Zone id → replicas; empty unless the workload spreads across zones. */
  readonly perZone: Int32Array;
}

/** Whether a pending replica's workload needs its replicas counted per node and zone. */
export function needsCounts(replica: PendingReplica): boolean {
  return (
    replica.placement.antiAffinity ||
    replica.placement.spreadAcrossZones ||
    budgetApplies(replica.availability)
  );
}

interface ZoneIndex {
  readonly zoneOf: Int32Array;
  readonly zoneNames: readonly string[];
  readonly nodesByZone: readonly (readonly number[])[];
}

export class SchedulingState {
  readonly nodes: readonly SchedNode[];
  // What this plan has placed on each node, per dimension; node.allocated holds the rest.
  // Shared zeros until the first placement (see zeros()); only place() writes them.
  plannedCpuMillicores: Float64Array;
  plannedMemoryMiB: Float64Array;
  plannedStorageGiB: Float64Array;
  plannedBandwidthMbps: Float64Array;
  /** Scratch for one cycle: indices of nodes that passed every filter. */
  readonly feasible: Int32Array;
  /** Scratch for one cycle: indices of nodes rejected only by occupancy filters. */
  readonly nearMiss: Int32Array;
  /** Scratch for one cycle: indices of nodes rejected only by soft filters (see plugin.ts). */
  readonly softMiss: Int32Array;
  /** Zone-spread domains per workload (see ZoneSpread), memoised for the call. */
  readonly spreadDomains = new Map<string, Uint8Array>();

  private readonly snapshot: ClusterSnapshot;
  private readonly countedKeys: Set<string>;
  /** The counted workloads that spread across zones: only they need zones counted. */
  private readonly zoneCountedKeys: Set<string>;
  private ownsPlanned = false;
  private zoneIndex: ZoneIndex | undefined;
  private counts: Map<string, WorkloadCounts> | undefined;

  constructor(snapshot: ClusterSnapshot, pending: readonly PendingReplica[]) {
    const n = snapshot.nodes.length;
    this.snapshot = snapshot;
    this.nodes = snapshot.nodes;
    const none = zeros(n);
    this.plannedCpuMillicores = none;
    this.plannedMemoryMiB = none;
    this.plannedStorageGiB = none;
    this.plannedBandwidthMbps = none;
    this.feasible = new Int32Array(n);
    this.nearMiss = new Int32Array(n);
    this.softMiss = new Int32Array(n);
    // Only workloads asking for anti-affinity, zone spread or a node-loss budget need
    // replica counts.
    this.countedKeys = new Set();
    this.zoneCountedKeys = new Set();
    for (const replica of pending) {
      if (needsCounts(replica)) this.countedKeys.add(replica.workloadKey);
      if (replica.placement.spreadAcrossZones) this.zoneCountedKeys.add(replica.workloadKey);
    }
  }

  /** Node index → zone id (index into zoneNames). */
  get zoneOf(): Int32Array {
    return this.zones().zoneOf;
  }

  get zoneNames(): readonly string[] {
    return this.zones().zoneNames;
  }

  /** Zone id → node indices, so zone questions need not scan every node. */
  get nodesByZone(): readonly (readonly number[])[] {
    return this.zones().nodesByZone;
  }

  /** Counts of a workload; empty when it has no replicas anywhere. */
  workload(workloadKey: string): WorkloadCounts {
    const counts = this.allCounts();
    let entry = counts.get(workloadKey);
    if (entry === undefined) {
      entry = this.emptyCounts(workloadKey);
      counts.set(workloadKey, entry);
    }
    return entry;
  }

  /** Records a placement of this plan so later replicas in the same plan see it. */
  place(replica: PendingReplica, i: number): void {
    if (!this.ownsPlanned) {
      const n = this.nodes.length;
      this.plannedCpuMillicores = new Float64Array(n);
      this.plannedMemoryMiB = new Float64Array(n);
      this.plannedStorageGiB = new Float64Array(n);
      this.plannedBandwidthMbps = new Float64Array(n);
      this.ownsPlanned = true;
    }
    const r = replica.resources;
    this.plannedCpuMillicores[i] = this.plannedCpuMillicores[i]! + r.cpuMillicores;
    this.plannedMemoryMiB[i] = this.plannedMemoryMiB[i]! + r.memoryMiB;
    this.plannedStorageGiB[i] = this.plannedStorageGiB[i]! + r.storageGiB;
    this.plannedBandwidthMbps[i] = this.plannedBandwidthMbps[i]! + r.bandwidthMbps;
    // Only workloads with anti-affinity, spread or a budget ever read counts.
    if (this.countedKeys.has(replica.workloadKey)) {
      this.addReplica(this.workload(replica.workloadKey), i, false);
    }
  }

  private addReplica(counts: WorkloadCounts, i: number, leaving: boolean): void {
    counts.perNode.set(i, (counts.perNode.get(i) ?? 0) + 1);
    if (!leaving) counts.stayingPerNode.set(i, (counts.stayingPerNode.get(i) ?? 0) + 1);
    // A workload without zone spread has no per-zone array, and needs no zone index
    // (building it costs a walk over every node).
    if (counts.perZone.length === 0) return;
    const zone = this.zoneOf[i]!;
    counts.perZone[zone] = counts.perZone[zone]! + 1;
  }

  private emptyCounts(workloadKey: string): WorkloadCounts {
    return {
      perNode: new Map(),
      stayingPerNode: new Map(),
      perZone: new Int32Array(this.zoneCountedKeys.has(workloadKey) ? this.zoneNames.length : 0),
    };
  }

  private zones(): ZoneIndex {
    if (this.zoneIndex !== undefined) return this.zoneIndex;
    const n = this.nodes.length;
    const zoneOf = new Int32Array(n);
    const ids = new Map<string, number>();
    const zoneNames: string[] = [];
    const nodesByZone: number[][] = [];
    for (let i = 0; i < n; i++) {
      const name = this.nodes[i]!.zone;
      let zone = ids.get(name);
      if (zone === undefined) {
        zone = zoneNames.length;
        ids.set(name, zone);
        zoneNames.push(name);
        nodesByZone.push([]);
      }
      zoneOf[i] = zone;
      nodesByZone[zone]!.push(i);
    }
    this.zoneIndex = { zoneOf, zoneNames, nodesByZone };
    return this.zoneIndex;
  }

  /**
   * The live replicas are walked once per call, on first need, and only those of
   * workloads that are pending with anti-affinity, spread or a budget are counted.
   */
  private allCounts(): Map<string, WorkloadCounts> {
    if (this.counts !== undefined) return this.counts;
    const counts = new Map<string, WorkloadCounts>();
    this.counts = counts;
    // Usually a handful of the cluster's replicas belong to the workloads being placed.
    const relevant: ExistingReplica[] = [];
    for (const replica of this.snapshot.replicas) {
      if (this.countedKeys.has(replica.workloadKey)) relevant.push(replica);
    }
    if (relevant.length === 0) return counts;
    const indexOf = this.resolveNodes(relevant);
    for (const replica of relevant) {
      const i = indexOf.get(replica.node);
      // A replica on a node the snapshot no longer holds has no zone to count in.
      if (i === undefined) continue;
      let entry = counts.get(replica.workloadKey);
      if (entry === undefined) {
        entry = this.emptyCounts(replica.workloadKey);
        counts.set(replica.workloadKey, entry);
      }
      this.addReplica(entry, i, replica.leaving === true);
    }
    return counts;
  }

  /**
   * Node name → index for just the names asked for. The snapshot's own index is used where
   * it agrees with the node list; the rest are found in one pass over the nodes that looks
   * up the few wanted names instead of indexing every node.
   */
  private resolveNodes(replicas: readonly ExistingReplica[]): Map<string, number> {
    const hint = this.snapshot.nodeIndexByName;
    const wanted = new Map<string, number>();
    let missing = 0;
    for (const replica of replicas) {
      if (wanted.has(replica.node)) continue;
      const i = hint?.get(replica.node);
      if (i !== undefined && this.nodes[i]?.name === replica.node) {
        wanted.set(replica.node, i);
      } else {
        // Absent from the hint proves nothing (it may be stale): look for it.
        wanted.set(replica.node, -1);
        missing++;
      }
    }
    for (let i = 0; i < this.nodes.length && missing > 0; i++) {
      const name = this.nodes[i]!.name;
      if (wanted.get(name) === -1) {
        wanted.set(name, i);
        missing--;
      }
    }
    for (const [name, i] of wanted) if (i < 0) wanted.delete(name);
    return wanted;
  }
}

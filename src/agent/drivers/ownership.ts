/**
 * Which replicas on this host are this agent's (ADR 0030). Several agents may share a
 * host and a container engine — two clusters whose nodes both default to the host name,
 * or test hosts running many agents — so every replica carries its owner: the cluster id
 * (from the CA) and the node's uid (from its record), beside the node name. A driver
 * lists, adopts, stops and removes only replicas whose marks are this agent's.
 *
 * Replicas made before the marks existed (or while an agent enrolled before node uids
 * were sent had not yet learned its uid) carry no uid. Such a replica is this agent's
 * only if its node name matches and the agent's own state lists it: a replica id is
 * random per cluster, so another cluster's replica is never in this agent's state.
 */

/** Container label (and process-record field) with the cluster id. */
export const clusterLabel = "cloudless.cluster";
/** Container label (and process-record field) with the node record's uid. */
export const nodeUidLabel = "cloudless.node-uid";

/** The marks a replica carries; any may be missing on a replica made by an older agent. */
export interface OwnerMarks {
  cluster?: string;
  node?: string;
  nodeUid?: string;
}

/** "own": marked as this agent's; "listed": unmarked but in this agent's state; "foreign": leave it alone. */
export type Ownership = "own" | "listed" | "foreign";

export class ReplicaOwner {
  private uid: string | undefined;
  private listedInState: (replicaId: string) => boolean = () => false;

  constructor(
    /** The cluster id (clusterIdFromCaPem). */
    readonly clusterId: string,
    readonly nodeName: string,
    /** Undefined until the coordinator tells it (an agent enrolled before uids were sent). */
    nodeUid: string | undefined,
  ) {
    if (!/^[0-9a-f]{16}$/.test(clusterId)) throw new Error(`invalid cluster id "${clusterId}"`);
    this.uid = nodeUid || undefined;
  }

  get nodeUid(): string | undefined {
    return this.uid;
  }

  /** The coordinator told the node's uid (the hello's ack); replicas made from now on carry it. */
  learnNodeUid(uid: string): void {
    if (uid) this.uid = uid;
  }

  /**
   * How to ask whether this agent's own state (the supervisor's desired set and the
   * replicas it knows, as restored from agent-state.json) lists a replica.
   */
  setStateLookup(listed: (replicaId: string) => boolean): void {
    this.listedInState = listed;
  }

  /** The marks a new replica gets. */
  marks(): OwnerMarks {
    return {
      cluster: this.clusterId,
      node: this.nodeName,
      ...(this.uid ? { nodeUid: this.uid } : {}),
    };
  }

  /** Whose a replica with these marks is. */
  judge(marks: OwnerMarks, replicaId: string): Ownership {
    if (marks.cluster !== undefined && marks.cluster !== this.clusterId) return "foreign";
    if (marks.node !== undefined && marks.node !== this.nodeName) return "foreign";
    if (marks.nodeUid !== undefined && this.uid !== undefined) {
      // Another uid: an earlier enrollment of this node name, not provably ours.
      return marks.cluster === this.clusterId && marks.nodeUid === this.uid ? "own" : "foreign";
    }
    // No uid to compare (an older agent's replica, or this agent has not learned its
    // uid yet): ours only if our own state names it.
    return this.listedInState(replicaId) ? "listed" : "foreign";
  }
}

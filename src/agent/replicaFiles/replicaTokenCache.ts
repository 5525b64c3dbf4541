/**
 * The agent's replica tokens (REQ-063, ADR 0058): one per replica it runs, from
 * IssueReplicaToken, reused for that replica's secret and config reads until a minute
 * before it expires, dropped when the replica goes. Tokens are credentials: they live in
 * this map only, never in a log, an event, a trace or a state file.
 */
import type { Clock } from "../../lib/clock.js";

export interface ReplicaTokenRef {
  namespace: string;
  workload: string;
  replicaId: string;
}

export interface IssuedToken {
  token: string;
  expiresAtMs: number;
}

/** Asks the coordinator for a token for a replica; rejects with a one-line reason. */
export type IssueToken = (replica: ReplicaTokenRef, signal: AbortSignal) => Promise<IssuedToken>;

/** Renew this long before expiry: a read in flight, or a clock a little ahead, still passes. */
export const replicaTokenRenewBeforeMs = 60_000;
/** Replicas with a cached token: a node runs far fewer; a bound on a runaway desired set. */
const maxCachedTokens = 10_000;

interface Entry {
  subject: string;
  /** The issue in flight, or done: concurrent reads of one replica share one token. */
  issued: Promise<IssuedToken>;
}

function subjectOf(replica: ReplicaTokenRef): string {
  return `${replica.namespace}/${replica.workload}/${replica.replicaId}`;
}

export class ReplicaTokenCache {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly issue: IssueToken,
    private readonly clock: Clock,
  ) {}

  /** A token for the replica valid for at least `replicaTokenRenewBeforeMs` more (or a fresh one). */
  async token(replica: ReplicaTokenRef, signal: AbortSignal): Promise<string> {
    const subject = subjectOf(replica);
    const cached = this.entries.get(replica.replicaId);
    if (cached && cached.subject === subject) {
      const issued = await cached.issued.catch(() => undefined);
      if (issued && issued.expiresAtMs - replicaTokenRenewBeforeMs > this.clock.nowMs()) {
        return issued.token;
      }
      if (this.entries.get(replica.replicaId) !== cached) return this.token(replica, signal);
    }
    const entry: Entry = { subject, issued: this.issue(replica, signal) };
    this.makeRoom();
    this.entries.set(replica.replicaId, entry);
    try {
      return (await entry.issued).token;
    } catch (error) {
      // A refusal is not cached: the next read asks again (the replica may be assigned by then).
      if (this.entries.get(replica.replicaId) === entry) this.entries.delete(replica.replicaId);
      throw error;
    }
  }

  /** The replica is gone (or its token was refused): its token goes too. */
  forget(replicaId: string): void {
    this.entries.delete(replicaId);
  }

  /** Replicas with a token held (for tests and the bound). */
  get size(): number {
    return this.entries.size;
  }

  private makeRoom(): void {
    if (this.entries.size < maxCachedTokens) return;
    // The oldest entry goes: a Map iterates in insertion order.
    const oldest = this.entries.keys().next().value;
    if (oldest !== undefined) this.entries.delete(oldest);
  }
}

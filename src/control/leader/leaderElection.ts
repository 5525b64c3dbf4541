import { z } from "zod";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import type { Logger } from "../../observe/logger.js";
import { silentLogger } from "../../observe/logger.js";
import type { Compare, Store, Watch } from "../store/store.js";

export const leaderKey = "/leader";

export interface LeaderInfo {
  id: string;
  url: string;
  sinceMs: number;
}

/** The leader record as decoded where it leaves the store (lib/recordCodec.ts). */
export const leaderInfoSchema: z.ZodType<LeaderInfo> = z.looseObject({
  id: z.string().min(1),
  url: z.string(),
  sinceMs: z.number(),
});

export interface LeaderElectionOptions {
  store: Store;
  clock: Clock;
  /** This coordinator's identity and API URL (followers point clients to it). */
  id: string;
  url: string;
  /** Lease time-to-live: how long a dead leader keeps the role before another takes it. */
  ttlMs?: number;
  logger?: Logger;
  /** Called when this coordinator becomes leader; controllers start here. */
  onElected: (fence: Compare) => Promise<void>;
  /** Called when it stops being leader (lease lost or stop()); controllers stop here. */
  onDemoted: () => Promise<void>;
}

/**
 * Leader election on a store lease (DESIGN.md decision 2): the leader holds /leader
 * attached to its lease and renews the lease every third of its TTL. When the leader
 * dies the lease expires, /leader disappears, and the first follower to write it
 * wins. The leader's writes carry a fence — /leader must still be the key it created
 * — so a leader that was paused past its lease cannot overwrite its successor's work.
 */
export class LeaderElection {
  private readonly ttlMs: number;
  private readonly logger: Logger;
  private leaseId: number | undefined;
  private leading = false;
  private stopped = false;
  private current: LeaderInfo | undefined;
  private watch: Watch | undefined;
  private cancelTimer: (() => void) | undefined;
  private transition: Promise<void> = Promise.resolve();
  /** When the lease was last granted or renewed: past the TTL it may be gone. */
  private renewedAtMs = 0;

  constructor(private readonly options: LeaderElectionOptions) {
    this.ttlMs = options.ttlMs ?? 3_000;
    this.logger = options.logger ?? silentLogger;
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** The leader as last seen (this coordinator or another). */
  get leader(): LeaderInfo | undefined {
    return this.current;
  }

  async start(): Promise<void> {
    const existing = await this.options.store.get(leaderKey);
    this.current = existing
      ? decodeRecord(leaderInfoSchema, existing.key, existing.value)
      : undefined;
    this.watch = this.options.store.watch(
      leaderKey,
      {},
      {
        onEvents: (events) => {
          for (const event of events) {
            if (event.kv.key !== leaderKey) continue;
            if (event.type === "delete") {
              this.current = undefined;
              if (!this.leading) this.schedule(0);
            } else {
              this.current = decodeRecord(leaderInfoSchema, event.kv.key, event.kv.value);
            }
          }
        },
      },
    );
    await this.tryAcquire();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelTimer?.();
    this.watch?.cancel();
    await this.transition;
    if (this.leading) {
      const leaseId = this.leaseId;
      await this.demote("stopping");
      // Revoking hands the role over at once instead of after the TTL.
      if (leaseId !== undefined) {
        await this.options.store.revokeLease(leaseId).catch(() => undefined);
      }
    }
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.cancelTimer?.();
    this.cancelTimer = this.options.clock.setTimeout(() => {
      void this.tick();
    }, delayMs);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    if (this.leading) await this.renew();
    else await this.tryAcquire();
  }

  private async tryAcquire(): Promise<void> {
    if (this.stopped || this.leading) return;
    try {
      const lease = await this.options.store.grantLease(this.ttlMs);
      const info: LeaderInfo = {
        id: this.options.id,
        url: this.options.url,
        sinceMs: this.options.clock.nowMs(),
      };
      const result = await this.options.store.txn({
        compare: [{ key: leaderKey, target: "version", op: "==", version: 0 }],
        success: [
          { type: "put", key: leaderKey, value: JSON.stringify(info), lease: lease.id },
          { type: "get", key: leaderKey },
        ],
      });
      if (!result.succeeded) {
        await this.options.store.revokeLease(lease.id).catch(() => undefined);
        this.schedule(this.ttlMs / 3);
        return;
      }
      const created = result.results[1];
      const createRevision = created?.type === "get" ? (created.kv?.createRevision ?? 0) : 0;
      this.leaseId = lease.id;
      this.renewedAtMs = this.options.clock.nowMs();
      this.leading = true;
      this.current = info;
      this.logger.info({ id: this.options.id }, "became leader");
      const fence: Compare = {
        key: leaderKey,
        target: "createRevision",
        op: "==",
        createRevision,
      };
      this.transition = this.transition.then(() => this.options.onElected(fence));
      await this.transition;
      this.schedule(this.ttlMs / 3);
    } catch (error) {
      this.logger.warn({ err: error }, "leader election attempt failed; retrying");
      this.schedule(this.ttlMs / 3);
    }
  }

  private async renew(): Promise<void> {
    if (this.leaseId === undefined) return;
    const startedMs = this.options.clock.nowMs();
    try {
      await this.withDeadline(this.options.store.keepAlive(this.leaseId), this.ttlMs / 3);
      this.renewedAtMs = startedMs;
      this.schedule(this.ttlMs / 3);
    } catch (error) {
      // A renewal that failed or hung does not mean the lease is gone yet; it is
      // gone for sure once the TTL has passed since the last renewal, and a leader
      // must step down before then rather than act on a role it may have lost.
      if (this.options.clock.nowMs() - this.renewedAtMs < (this.ttlMs * 2) / 3) {
        this.logger.warn({ err: error }, "leader lease renewal failed; retrying");
        this.schedule(this.ttlMs / 6);
        return;
      }
      this.logger.warn({ err: error }, "leader lease lost");
      await this.demote("lease lost");
      this.schedule(0);
    }
  }

  private withDeadline<T>(promise: Promise<T>, deadlineMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const cancel = this.options.clock.setTimeout(
        () => reject(new Error(`lease renewal took longer than ${deadlineMs} ms`)),
        deadlineMs,
      );
      promise.then(
        (value) => {
          cancel();
          resolve(value);
        },
        (error: unknown) => {
          cancel();
          reject(error);
        },
      );
    });
  }

  private async demote(reason: string): Promise<void> {
    if (!this.leading) return;
    this.leading = false;
    this.leaseId = undefined;
    this.logger.info({ id: this.options.id, reason }, "no longer leader");
    this.transition = this.transition.then(() => this.options.onDemoted());
    await this.transition;
  }
}

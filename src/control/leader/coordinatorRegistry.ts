import { z } from "zod";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import type { Logger } from "../../observe/logger.js";
import type { Store } from "../store/store.js";
import { leaderInfoSchema, leaderKey } from "./leaderElection.js";

/** Coordinators sharing a store register here, so clients can list them and admin.conf name them. */
export const coordinatorsPrefix = "/coordinators/";
/** How often a coordinator refreshes its registration. */
export const registrationRefreshMs = 5_000;
/** A registration older than this belongs to a coordinator that is down or cut off. */
export const registrationStaleMs = 15_000;

export interface CoordinatorRegistration {
  id: string;
  url: string;
  startedAtMs: number;
  lastSeenMs: number;
}

/**
 * A registration as decoded where it leaves the store (lib/recordCodec.ts): every field
 * may be absent (listCoordinators fills them in), none may have the wrong type.
 */
export const registrationRecordSchema: z.ZodType<Partial<CoordinatorRegistration>> = z.looseObject({
  id: z.string().optional(),
  url: z.string().optional(),
  startedAtMs: z.number().optional(),
  lastSeenMs: z.number().optional(),
});

export interface CoordinatorView extends CoordinatorRegistration {
  leader: boolean;
  alive: boolean;
}

/**
 * Keeps this coordinator's entry under /coordinators/ fresh: written at start, then
 * every 5 s with the time it was last seen. Entries are never deleted by others; a
 * stale one shows as not alive (like `nomad server members` showing a failed server).
 */
export class CoordinatorRegistry {
  private cancel: (() => void) | undefined;
  private stopped = false;
  private readonly registration: CoordinatorRegistration;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly logger: Logger,
    self: { id: string; url: string },
  ) {
    const now = clock.nowMs();
    this.registration = { ...self, startedAtMs: now, lastSeenMs: now };
  }

  async start(): Promise<void> {
    await this.write();
    const refresh = () => {
      if (this.stopped) return;
      this.write()
        .catch((error: unknown) =>
          this.logger.warn({ err: error }, "could not refresh this coordinator's registration"),
        )
        .finally(() => {
          if (!this.stopped) this.cancel = this.clock.setTimeout(refresh, registrationRefreshMs);
        });
    };
    this.cancel = this.clock.setTimeout(refresh, registrationRefreshMs);
  }

  stop(): void {
    this.stopped = true;
    this.cancel?.();
  }

  private async write(): Promise<void> {
    this.registration.lastSeenMs = this.clock.nowMs();
    await this.store.put(
      `${coordinatorsPrefix}${this.registration.id}`,
      JSON.stringify(this.registration),
    );
  }
}

/** Every registered coordinator, the leader first, then by id. */
export async function listCoordinators(store: Store, nowMs: number): Promise<CoordinatorView[]> {
  const [registered, leader] = await Promise.all([
    store.range(coordinatorsPrefix),
    store.get(leaderKey),
  ]);
  const leaderId = leader ? decodeRecord(leaderInfoSchema, leader.key, leader.value).id : undefined;
  return registered.kvs
    .map((kv) => {
      const entry = decodeRecord(registrationRecordSchema, kv.key, kv.value);
      const lastSeenMs = entry.lastSeenMs ?? entry.startedAtMs ?? 0;
      return {
        id: entry.id ?? kv.key.slice(coordinatorsPrefix.length),
        url: entry.url ?? "",
        startedAtMs: entry.startedAtMs ?? 0,
        lastSeenMs,
        leader: entry.id === leaderId,
        alive: nowMs - lastSeenMs < registrationStaleMs,
      };
    })
    .sort((a, b) => Number(b.leader) - Number(a.leader) || a.id.localeCompare(b.id));
}

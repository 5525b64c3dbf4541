/**
 * The one compare-and-swap loop over the store (ADR 0043): read the key, let a pure-ish
 * `decide` say what to write, commit it only if the key's mod revision is still the one
 * read, and otherwise try again — a bounded number of times, with jittered back-off from
 * the injected clock and rng so that writers that collided do not collide again in
 * lockstep. After the last attempt it fails with CompareAndSwapConflict, a StoreError of
 * kind "conflict" naming the key, which the API edge answers as Conflict (gRPC Aborted).
 */
import type { Clock } from "../../lib/clock.js";
import type { Rng } from "../../lib/rng.js";
import { type Compare, type KeyValue, type Op, type Store, StoreError } from "./store.js";

/** Attempts in all (the first included) unless told otherwise. */
export const defaultCompareAndSwapAttempts = 8;
/** Back-off cap before the second attempt; it doubles per attempt up to the maximum. */
const defaultBaseDelayMs = 5;
const defaultMaxDelayMs = 200;
/** A loop that may run this often is a bug, not patience. */
const attemptsLimit = 100;

export interface CompareAndSwapOptions {
  clock: Clock;
  rng: Rng;
  /** Attempts in all, the first included (default 8, at most 100). */
  maxAttempts?: number;
  /** Back-off cap before the second attempt, doubled per attempt (default 5 ms). */
  baseDelayMs?: number;
  /** Largest back-off between two attempts (default 200 ms). */
  maxDelayMs?: number;
  /** The message of the error after the last attempt; by default one that names the key. */
  conflictMessage?: string;
}

/** A compare-and-swap lost its race on every attempt. */
export class CompareAndSwapConflict extends StoreError {
  constructor(
    /** The key (or, for retryOnConflict, what was written) that kept changing. */
    readonly key: string,
    readonly attempts: number,
    message?: string,
  ) {
    super(
      message ??
        `${key} was changed by another writer during each of ${attempts} attempts; try again`,
      "conflict",
    );
    this.name = "CompareAndSwapConflict";
  }
}

/** What `decide` wants done with the key it was shown. */
export type CompareAndSwapDecision<T> =
  /** Nothing to write (already as wanted, a dry run): `result` as things are. */
  | { write?: undefined; result: T }
  /**
   * Commit these operations (the key's own put or delete, and any others) if the key's
   * mod revision is still the one read and every extra `compare` holds; then `result`.
   */
  | { write: Op[]; compare?: Compare[]; result: T };

/**
 * Read `key`, decide, write if nobody wrote it in between; retried on a lost race. The
 * key absent is `current === undefined`, and the write then requires it still absent.
 * `decide` may throw (NotFound, InvalidArgument): that ends the loop at once.
 */
export function compareAndSwap<T>(
  store: Store,
  key: string,
  decide: (
    current: KeyValue | undefined,
    attempt: number,
  ) => CompareAndSwapDecision<T> | Promise<CompareAndSwapDecision<T>>,
  options: CompareAndSwapOptions,
): Promise<T> {
  return retryOnConflict<T>(
    JSON.stringify(key),
    async (attempt): Promise<ConflictAttempt<T>> => {
      const current = await store.get(key);
      const decision = await decide(current, attempt);
      if (!decision.write || decision.write.length === 0) {
        return { committed: true, result: decision.result };
      }
      const outcome = await store.txn({
        compare: [
          // The contract's mod revision 0 is "the key does not exist".
          { key, target: "modRevision", op: "==", modRevision: current?.modRevision ?? 0 },
          ...(decision.compare ?? []),
        ],
        success: decision.write,
      });
      return outcome.succeeded
        ? { committed: true, result: decision.result }
        : { committed: false };
    },
    options,
  );
}

/** One try of a read-decide-write: committed with its result, or lost the race. */
export type ConflictAttempt<T> = { committed: true; result: T } | { committed: false };

/**
 * The loop of compareAndSwap for writes that are not one key (a node's replica records,
 * committed in packed transactions): `attempt` reads, decides and commits with its own
 * compares, and says whether it won. `what` names it in the conflict error.
 */
export async function retryOnConflict<T>(
  what: string,
  attempt: (attempt: number) => Promise<ConflictAttempt<T>>,
  options: CompareAndSwapOptions,
): Promise<T> {
  const maxAttempts = options.maxAttempts ?? defaultCompareAndSwapAttempts;
  if (!Number.isSafeInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > attemptsLimit) {
    throw new StoreError(
      `compare-and-swap maxAttempts must be an integer from 1 to ${attemptsLimit}, got ${maxAttempts}`,
      "invalid",
    );
  }
  for (let n = 1; n <= maxAttempts; n++) {
    const outcome = await attempt(n);
    if (outcome.committed) return outcome.result;
    if (n < maxAttempts) {
      const delayMs = conflictBackoffMs(n, options.rng, options.baseDelayMs, options.maxDelayMs);
      await new Promise<void>((resolve) => options.clock.setTimeout(resolve, delayMs));
    }
  }
  throw new CompareAndSwapConflict(what, maxAttempts, options.conflictMessage);
}

/**
 * The wait after the `failures`-th lost race: "full jitter", uniform in [0, cap] where the
 * cap doubles per failure from baseDelayMs up to maxDelayMs. Writers that collided pick
 * different waits, so the next round rarely collides again.
 */
export function conflictBackoffMs(
  failures: number,
  rng: Rng,
  baseDelayMs = defaultBaseDelayMs,
  maxDelayMs = defaultMaxDelayMs,
): number {
  const capMs = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(Math.max(0, failures - 1), 20));
  return Math.round(capMs * rng.next());
}

import type { Rng } from "../../lib/rng.js";

export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
  /** A replica that ran this long without exiting starts its backoff again from the start. */
  resetAfterMs: number;
}

export const defaultBackoff: BackoffPolicy = {
  initialMs: 1000,
  maxMs: 60_000,
  resetAfterMs: 10_000,
};

/** Extra wait drawn from the RNG, as a fraction of the nominal delay. */
const jitterFraction = 0.1;

/**
 * The wait before the next attempt after `failures` consecutive failures (≥ 1):
 * initialMs doubling per failure up to maxMs. Jitter only ever adds (up to 10 %) and
 * the cap applies last, so the nominal delay is a floor: what the status message says
 * is never more than what actually happens, and many replicas failing together do not
 * restart in lockstep.
 */
export function backoffDelay(
  policy: BackoffPolicy,
  failures: number,
  rng: Rng,
): { nominalMs: number; delayMs: number } {
  const exponent = Math.min(Math.max(0, failures - 1), 30);
  const nominalMs = Math.min(policy.maxMs, policy.initialMs * 2 ** exponent);
  const delayMs = Math.min(policy.maxMs, Math.round(nominalMs * (1 + jitterFraction * rng.next())));
  return { nominalMs, delayMs: Math.max(nominalMs, delayMs) };
}

/** "4s", "1m30s", "500ms": how long a back-off is, for status messages. */
export function formatDelay(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const totalSeconds = Math.round(ms / 1000);
  if (totalSeconds < 60) return `${totalSeconds}s`;
  const minutes = Math.floor(totalSeconds / 60);
  const seconds = totalSeconds % 60;
  return `${minutes}m${seconds}s`;
}

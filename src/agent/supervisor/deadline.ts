import type { Clock } from "../../lib/clock.js";

/** A driver call did not answer in time; the call may still complete later. */
export class DeadlineExceededError extends Error {
  constructor(
    readonly operation: string,
    readonly timeoutMs: number,
  ) {
    super(`${operation} did not answer within ${timeoutMs} ms`);
    this.name = "DeadlineExceededError";
  }
}

/**
 * Waits for `promise` at most `timeoutMs` on the injected clock (so simulated time can
 * expire it). The underlying call cannot be cancelled; its late result is dropped,
 * which is safe because the supervisor re-reads the driver's state on every sync.
 */
export function withDeadline<T>(
  promise: Promise<T>,
  timeoutMs: number,
  clock: Clock,
  operation: string,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const cancel = clock.setTimeout(() => {
      if (settled) return;
      settled = true;
      reject(new DeadlineExceededError(operation, timeoutMs));
    }, timeoutMs);
    promise.then(
      (value) => {
        if (settled) return;
        settled = true;
        cancel();
        resolve(value);
      },
      (error: unknown) => {
        if (settled) return;
        settled = true;
        cancel();
        reject(error);
      },
    );
  });
}

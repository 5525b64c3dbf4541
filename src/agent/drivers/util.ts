import { DriverError, type DriverErrorKind } from "./driver.js";

/** A call ran out of time; a DriverError so it can go straight to a status line. */
export class DeadlineExceeded extends DriverError {}

/**
 * Runs `fn` with a deadline. The signal handed to `fn` aborts when the deadline passes
 * (so the underlying request is torn down, not just forgotten) and the returned promise
 * rejects with a DriverError even if `fn` ignores the signal.
 */
export async function withDeadline<T>(
  what: string,
  timeoutMs: number,
  fn: (signal: AbortSignal) => Promise<T>,
  kind: DriverErrorKind = "unavailable",
): Promise<T> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      controller.abort();
      reject(new DeadlineExceeded(kind, `${what} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    return await Promise.race([fn(controller.signal), expired]);
  } finally {
    clearTimeout(timer);
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

const replicaIdPattern = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/**
 * Replica ids become container names, directory names and cgroup names, so they are
 * held to the intersection of what all three accept (and can never contain "/" or "..").
 */
export function checkReplicaId(replicaId: string): void {
  if (!replicaIdPattern.test(replicaId)) {
    throw new DriverError(
      "invalid",
      `replica id "${replicaId}" is not usable as a name (letters, digits, "_", "." and "-", at most 128)`,
    );
  }
}

export function errnoCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}

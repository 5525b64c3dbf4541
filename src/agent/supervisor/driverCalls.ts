/**
 * How the supervisor talks to its runtime drivers: every call under a deadline on the
 * injected clock, failures turned into the reason words a report carries, and one health
 * check per driver in flight at a time.
 */
import type { Clock } from "../../lib/clock.js";
import type { Logger } from "../../observe/logger.js";
import { DriverError, type DriverName, type RuntimeDriver } from "../drivers/driver.js";
import { DeadlineExceededError, withDeadline } from "./deadline.js";

/** A call with a deadline; `timeoutMs` defaults to the supervisor's driver call timeout. */
export type DeadlineCall = <T>(
  fn: () => Promise<T>,
  operation: string,
  timeoutMs?: number,
) => Promise<T>;

/** A DeadlineCall on `clock`; synchronous throws of `fn` become rejections. */
export function deadlineCall(clock: Clock, defaultTimeoutMs: number): DeadlineCall {
  return <T>(fn: () => Promise<T>, operation: string, timeoutMs = defaultTimeoutMs) => {
    let promise: Promise<T>;
    try {
      promise = fn();
    } catch (error) {
      promise = Promise.reject(error);
    }
    return withDeadline(promise, timeoutMs, clock, operation);
  };
}

/** Reason words for driver failures; DriverError kinds map one to one. */
export function describeDriverFailure(error: unknown): { reason: string; message: string } {
  const message = errorMessage(error);
  if (error instanceof DeadlineExceededError) return { reason: "DriverTimeout", message };
  if (error instanceof DriverError) {
    switch (error.kind) {
      case "imageNotFound":
        return { reason: "ImageNotFound", message };
      case "invalid":
        return { reason: "InvalidSpec", message };
      case "unavailable":
        return { reason: "DriverUnavailable", message };
      case "failed":
        return { reason: "DriverError", message };
    }
  }
  return { reason: "DriverError", message };
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export type DriverHealth = { ok: true } | { ok: false; reason: string };

/** What a replica's driver problem reads when the driver is not on this node at all. */
export const notConfigured: DriverHealth = { ok: false, reason: "not configured on this node" };

export interface DriverHealthChecksOptions {
  call: DeadlineCall;
  /** Deadline on one check: an engine that cannot answer a ping is down. */
  timeoutMs: number;
  logger: Logger;
  /** The driver answered healthy after it had not (or for the first time). */
  onHealthy: (driver: DriverName) => void;
}

/**
 * Driver health checks: one in flight per driver (callers asking meanwhile share it),
 * and a log line when a driver goes away or comes back.
 */
export class DriverHealthChecks {
  private readonly last = new Map<DriverName, DriverHealth>();
  private readonly inFlight = new Map<DriverName, Promise<DriverHealth>>();

  constructor(private readonly options: DriverHealthChecksOptions) {}

  check(name: DriverName, driver: RuntimeDriver): Promise<DriverHealth> {
    const pending = this.inFlight.get(name);
    if (pending) return pending;
    const { call, timeoutMs, logger, onHealthy } = this.options;
    const check = call(() => driver.health(), `${name} health`, timeoutMs)
      .then(
        (result): DriverHealth => (result.ok ? { ok: true } : { ok: false, reason: result.reason }),
        (error: unknown): DriverHealth => ({ ok: false, reason: errorMessage(error) }),
      )
      .then((result) => {
        const previous = this.last.get(name);
        if (result.ok && previous?.ok !== true) onHealthy(name);
        if (previous !== undefined && previous.ok !== result.ok) {
          if (result.ok) logger.info({ driver: name }, "driver available again");
          else logger.warn({ driver: name, reason: result.reason }, "driver unavailable");
        }
        this.last.set(name, result);
        return result;
      })
      .finally(() => this.inFlight.delete(name));
    this.inFlight.set(name, check);
    return check;
  }
}

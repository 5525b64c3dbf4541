/**
 * Renewing the node certificate before it expires (REQ-060): when to look (a pure
 * decider), the timer that looks, and the renewal call itself. Moving the heartbeat
 * stream over to the new certificate is the caller's (heartbeatSession.ts replaceWith).
 */
import { fromConnectError } from "../api/errors.js";
import { generateKeyAndCsr } from "../api/identity.js";
import type { Clock } from "../lib/clock.js";
import type { Logger } from "../observe/logger.js";
import type { CoordinatorClients } from "./heartbeatSession.js";
import { type AgentIdentity, certificateWindow, renewalSchedule } from "./identity.js";

/** The longest wait between two looks at the certificate. */
export const renewCheckIntervalMs = 5_000;
/** The shortest wait between two looks (a certificate of seconds is polled no faster). */
const minRenewCheckMs = 500;

export interface RenewalSchedule {
  startMs: number;
  renewAtMs: number;
  notAfterMs: number;
}

/**
 * How long to wait before the next look: a twentieth of the lifetime, between 0.5 s and
 * 5 s, and exactly until renewal is due if that is sooner (not up to one poll later).
 */
export function nextRenewalCheckMs(schedule: RenewalSchedule, nowMs: number): number {
  const { startMs, renewAtMs, notAfterMs } = schedule;
  const pollMs = Math.max(
    minRenewCheckMs,
    Math.min(renewCheckIntervalMs, (notAfterMs - startMs) / 20),
  );
  const untilDueMs = renewAtMs - nowMs;
  return untilDueMs > 0 ? Math.min(pollMs, untilDueMs) : pollMs;
}

/** Whether the certificate is due for renewal now. */
export function renewalDue(schedule: RenewalSchedule, nowMs: number): boolean {
  return nowMs >= schedule.renewAtMs;
}

/**
 * The renewal schedule of the agent's current certificate, its validity parsed once per
 * certificate: a parse per check (two per check) was a sixth of a hollow process's CPU at
 * 1,000 nodes.
 */
export class RenewalScheduleCache {
  private parsed: { certPem: string; window: ReturnType<typeof certificateWindow> } | undefined;

  constructor(private readonly renewAtFraction: number) {}

  of(identity: Pick<AgentIdentity, "certPem" | "certReceivedAtMs">): RenewalSchedule {
    if (this.parsed?.certPem !== identity.certPem) {
      this.parsed = { certPem: identity.certPem, window: certificateWindow(identity.certPem) };
    }
    return renewalSchedule(identity, this.renewAtFraction, this.parsed.window);
  }
}

export interface RenewalTimerOptions {
  clock: Clock;
  logger: Logger;
  /** The schedule of the certificate in use now. */
  schedule(): RenewalSchedule;
  /** Renews; a rejection is logged and retried at the next look. */
  renew(): Promise<void>;
}

/** Looks at the certificate on a timer and renews it when due; stop() ends it. */
export class RenewalTimer {
  private cancel: (() => void) | undefined;
  private stopped = false;

  constructor(private readonly options: RenewalTimerOptions) {}

  start(): void {
    this.arm();
  }

  stop(): void {
    this.stopped = true;
    this.cancel?.();
  }

  private arm(): void {
    if (this.stopped) return;
    const { clock } = this.options;
    const delayMs = nextRenewalCheckMs(this.options.schedule(), clock.nowMs());
    this.cancel = clock.setTimeout(() => void this.check(), delayMs);
  }

  private async check(): Promise<void> {
    if (this.stopped) return;
    try {
      if (renewalDue(this.options.schedule(), this.options.clock.nowMs())) {
        await this.options.renew();
      }
    } catch (error) {
      this.options.logger.warn(
        { err: fromConnectError(error).message },
        "certificate renewal failed; will retry",
      );
    }
    this.arm();
  }
}

/** Asks the coordinator for a new certificate on a new key; the identity that results. */
export async function requestRenewedIdentity(
  identity: AgentIdentity,
  clients: CoordinatorClients,
  clock: Clock,
): Promise<AgentIdentity> {
  const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: identity.nodeName });
  const response = await clients.nodes.renewCertificate({ csrPem });
  return {
    ...identity,
    certPem: response.certificatePem,
    caPem: response.caPem || identity.caPem,
    keyPem,
    certReceivedAtMs: clock.nowMs(),
  };
}

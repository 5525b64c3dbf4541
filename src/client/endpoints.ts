/**
 * Which coordinator an agent dials next (issue 4, item 3). Agents know several
 * coordinator URLs; any of them may be down, and only the leader accepts heartbeats. A
 * coordinator that is not the leader ends the stream at once with `Unavailable` and,
 * when it knows one, names the leader (message and `cloudless-leader-url` metadata).
 * Pure: time only enters as durations passed in, randomness through the injected Rng.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { fromConnectError } from "../api/errors.js";
import type { Rng } from "../lib/rng.js";

/** How one attempt on the current URL ended. */
export type SessionOutcome =
  /** The stream was established (acknowledged) and later ended. */
  | { kind: "ended"; connectedForMs: number }
  /** Never established: refused, timed out, TLS failed, or closed before the first answer. */
  | { kind: "failed" }
  /** Answered by a coordinator that is not the leader; leaderUrl when it knows the leader. */
  | { kind: "notLeader"; leaderUrl?: string };

export interface NextAttempt {
  url: string;
  /** How long to wait before dialling it. */
  delayMs: number;
  /** A leader URL the agent did not know before (to remember in its identity). */
  learned?: string;
}

export interface EndpointRotationOptions {
  rng: Rng;
  /** Back-off of the first round of failures; doubles per full round over all URLs. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** A stream that stayed up this long resets the back-off. */
  stableAfterMs?: number;
  /**
   * Redirects followed at once in a row. Two followers that name each other (an election
   * in progress, stale knowledge) would otherwise be dialled in a tight loop.
   */
  maxImmediateRedirects?: number;
  /** Bound on remembered URLs, however many redirects name new ones. */
  maxUrls?: number;
}

/**
 * The agent's list of coordinator URLs and where it is in it. After a failure it moves
 * to the next URL, waiting with back-off and jitter that grow per full round (so one
 * dead coordinator among live ones costs only a short wait); after a redirect it dials
 * the named leader at once, adding it to the list.
 */
export class EndpointRotation {
  private readonly urls: string[] = [];
  private index = 0;
  private failures = 0;
  private redirectsInARow = 0;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly stableAfterMs: number;
  private readonly maxImmediateRedirects: number;
  private readonly maxUrls: number;

  constructor(
    urls: readonly string[],
    private readonly options: EndpointRotationOptions,
  ) {
    for (const url of urls) this.add(url);
    if (this.urls.length === 0) throw new Error("EndpointRotation needs at least one URL");
    this.baseDelayMs = options.baseDelayMs ?? 200;
    this.maxDelayMs = options.maxDelayMs ?? 5_000;
    this.stableAfterMs = options.stableAfterMs ?? 10_000;
    this.maxImmediateRedirects = options.maxImmediateRedirects ?? 2;
    this.maxUrls = options.maxUrls ?? 16;
  }

  /** The URL to dial now. */
  get current(): string {
    return this.urls[this.index] as string;
  }

  /** Every known URL, in rotation order. */
  get all(): readonly string[] {
    return this.urls;
  }

  /** Where to go after an attempt on `current` ended, and after how long. */
  next(outcome: SessionOutcome): NextAttempt {
    if (outcome.kind === "notLeader" && outcome.leaderUrl !== undefined) {
      const leader = normalizeUrl(outcome.leaderUrl);
      if (leader && this.redirectsInARow < this.maxImmediateRedirects) {
        this.redirectsInARow += 1;
        let position = this.urls.indexOf(leader);
        let learned: string | undefined;
        if (position < 0 && this.urls.length < this.maxUrls) {
          this.urls.push(leader);
          position = this.urls.length - 1;
          learned = leader;
        }
        if (position >= 0 && position !== this.index) {
          this.index = position;
          // Trusted without a wait: TLS still checks that it is a coordinator of this cluster.
          return { url: this.current, delayMs: 0, ...(learned ? { learned } : {}) };
        }
      }
    }
    if (outcome.kind === "ended") {
      this.redirectsInARow = 0;
      if (outcome.connectedForMs >= this.stableAfterMs) this.failures = 0;
    }
    this.failures += 1;
    this.index = (this.index + 1) % this.urls.length;
    return { url: this.current, delayMs: this.delayMs() };
  }

  /** The stream is established: redirects start counting again from zero. */
  connected(): void {
    this.redirectsInARow = 0;
  }

  /** Half the cap plus jitter up to the other half: never a tight loop, never lockstep. */
  private delayMs(): number {
    const round = Math.floor((this.failures - 1) / this.urls.length);
    const capMs = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.min(round, 20));
    return Math.round(capMs / 2 + (capMs / 2) * this.options.rng.next());
  }

  private add(url: string): void {
    const normalized = normalizeUrl(url);
    if (normalized && !this.urls.includes(normalized)) this.urls.push(normalized);
  }
}

/** `https://host:port` (origin only), or undefined for anything else. */
export function normalizeUrl(url: string): string | undefined {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" ? parsed.origin : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Reads a "not the leader" answer (CloudlessError.notLeader on the coordinator):
 * `Unavailable` with `not the leader; the leader is <url>` or `no leader elected yet`,
 * the leader URL also in the cloudless-leader-url metadata. Undefined for any other error.
 */
export function leaderHint(error: unknown): { leaderUrl?: string } | undefined {
  if (error instanceof ConnectError && error.code !== Code.Unavailable) return undefined;
  const normalized = fromConnectError(error);
  if (normalized.code !== "Unavailable") return undefined;
  const notLeader = /not the leader|no leader elected/i.test(normalized.message);
  if (!notLeader && normalized.leaderUrl === undefined) return undefined;
  const fromMessage = /the leader is (\S+)/i.exec(normalized.message)?.[1];
  const leaderUrl = normalizeUrl(normalized.leaderUrl ?? fromMessage ?? "");
  return leaderUrl ? { leaderUrl } : {};
}

/**
 * The agent's endpoint picker (REQ-042, ADR 0046): which endpoint of one service port a
 * new connection goes to. Pure: time comes in as `nowMs`, randomness from the injected
 * Rng, so tests and the simulator replay the same choices. It runs entirely on the agent
 * from the last endpoint set it received, so it keeps picking through a coordinator
 * outage (NFR-A1).
 *
 * The rules, in order:
 * 1. Readiness-gated: a not-ready endpoint, or one of weight 0, gets no new connection.
 * 2. Outlier ejection: an endpoint whose connects failed `consecutiveFailuresToEject`
 *    times in a row is ejected for a back-off that doubles per re-ejection (1 s … 30 s)
 *    and resets after a successful connect; the last eligible endpoint of the whole set
 *    is never ejected.
 * 3. Locality: same node, then same zone, then same region, then anywhere. The first
 *    tier with an eligible endpoint takes all new connections. Envoy's locality priority
 *    also spills part of the traffic early when a closer tier is only partly healthy
 *    (its overprovisioning factor); we spill all or nothing, to keep the rule one line
 *    long and the tests exact. A tier holds one ready endpoint as well as a hundred.
 * 4. Weighted random within the tier: an endpoint's share of new connections converges
 *    to its weight over the tier's total.
 * 5. `exclude` lets a caller retry a failed connect on another endpoint.
 */
import { CloudlessError } from "../../api/errors.js";
import type { Rng } from "../../lib/rng.js";

/** One endpoint of a service port, as the agent learns it from the coordinator. */
export interface ServiceEndpoint {
  /** Unique within the service port (e.g. the replica id). */
  readonly id: string;
  readonly node: string;
  /** "" when unknown: an unknown zone or region matches nothing. */
  readonly zone: string;
  readonly region: string;
  /** The replica's readiness as its probes last reported it. */
  readonly ready: boolean;
  /** Per-workload weight × per-revision weight; 0 drains the endpoint. */
  readonly weight: number;
}

/** Where the picking agent runs. */
export interface PickerLocality {
  readonly node: string;
  readonly zone: string;
  readonly region: string;
}

export type LocalityTier = "node" | "zone" | "region" | "any";

export interface Pick {
  readonly endpoint: ServiceEndpoint;
  readonly tier: LocalityTier;
}

/**
 * Three consecutive failures: one refused connect is often a replica restarting or a
 * race with a readiness change the agent has not heard of yet, and a retry (`exclude`)
 * already hides it from the client; three in a row is a pattern. Envoy's
 * consecutive_5xx default is 5, but it counts requests; we count connects, which are
 * rarer, so we act sooner.
 */
export const consecutiveFailuresToEject = 3;
/** The first ejection: long enough to stop a hot loop of refused connects. */
export const firstEjectionMs = 1_000;
/**
 * The longest ejection: an endpoint that keeps failing is retried twice a minute, so it
 * comes back within 30 s of recovering even when no success resets its back-off first.
 */
export const maxEjectionMs = 30_000;
/**
 * Endpoints one service port may have: a workload may have 10,000 replicas
 * (limits.replicasPerWorkload); the picker's memory and a pick's time are linear in it.
 */
export const maxEndpointsPerServicePort = 10_000;
/** The product of a per-workload and a per-revision weight, each at most 1,000. */
export const maxEndpointWeight = 1_000_000;

export interface EndpointPickerOptions {
  readonly locality: PickerLocality;
  readonly rng: Rng;
  readonly consecutiveFailuresToEject?: number;
  readonly firstEjectionMs?: number;
  readonly maxEjectionMs?: number;
}

/** The outlier state of one endpoint; the entry exists only while the endpoint does. */
interface OutlierState {
  consecutiveFailures: number;
  /** Ejections since the last successful connect; the back-off doubles with each. */
  ejections: number;
  /** Ejected while nowMs < ejectedUntilMs. */
  ejectedUntilMs: number;
}

export class EndpointPicker {
  private readonly locality: PickerLocality;
  private readonly rng: Rng;
  private readonly failuresToEject: number;
  private readonly firstEjectionMs: number;
  private readonly maxEjectionMs: number;
  private endpoints: readonly ServiceEndpoint[] = [];
  /** The ids of `endpoints`. */
  private ids: ReadonlySet<string> = new Set();
  /**
   * `endpoints` by the closest tier each is in, in `tiers` order; computed once per set,
   * since an endpoint's tier changes only with the set.
   */
  private byTier: readonly (readonly ServiceEndpoint[])[] = tiers.map(() => []);
  /** Keyed by the ids of `endpoints` only (setEndpoints drops the rest). */
  private readonly outliers = new Map<string, OutlierState>();

  constructor(options: EndpointPickerOptions) {
    this.locality = options.locality;
    this.rng = options.rng;
    this.failuresToEject = options.consecutiveFailuresToEject ?? consecutiveFailuresToEject;
    this.firstEjectionMs = options.firstEjectionMs ?? firstEjectionMs;
    this.maxEjectionMs = options.maxEjectionMs ?? maxEjectionMs;
    if (!Number.isInteger(this.failuresToEject) || this.failuresToEject < 1) {
      throw new CloudlessError(
        "InvalidArgument",
        `consecutiveFailuresToEject must be a whole number ≥ 1, got ${this.failuresToEject}`,
      );
    }
    if (!(this.firstEjectionMs > 0 && this.maxEjectionMs >= this.firstEjectionMs)) {
      throw new CloudlessError(
        "InvalidArgument",
        `ejection back-off must satisfy 0 < firstEjectionMs ≤ maxEjectionMs, got ${this.firstEjectionMs} and ${this.maxEjectionMs}`,
      );
    }
  }

  /**
   * Replaces the endpoint set. Outlier state stays for endpoints that stay (an update
   * that only flips another endpoint's readiness must not forgive a failing one) and is
   * dropped for endpoints that left. Checks the whole set before changing anything.
   */
  setEndpoints(endpoints: readonly ServiceEndpoint[]): void {
    if (endpoints.length > maxEndpointsPerServicePort) {
      throw new CloudlessError(
        "InvalidArgument",
        `a service port has ${endpoints.length} endpoints, more than ${maxEndpointsPerServicePort} (limit maxEndpointsPerServicePort); split the service`,
      );
    }
    const ids = new Set<string>();
    for (const endpoint of endpoints) {
      if (endpoint.id === "") {
        throw new CloudlessError("InvalidArgument", "an endpoint has an empty id; give it one");
      }
      if (ids.has(endpoint.id)) {
        throw new CloudlessError(
          "InvalidArgument",
          `endpoint id ${JSON.stringify(endpoint.id)} appears twice; ids must be unique per service port`,
        );
      }
      ids.add(endpoint.id);
      if (
        !Number.isFinite(endpoint.weight) ||
        endpoint.weight < 0 ||
        endpoint.weight > maxEndpointWeight
      ) {
        throw new CloudlessError(
          "InvalidArgument",
          `endpoint ${JSON.stringify(endpoint.id)} has weight ${endpoint.weight}; use a number from 0 to ${maxEndpointWeight} (limit maxEndpointWeight)`,
        );
      }
    }
    this.endpoints = endpoints.map((endpoint) => ({ ...endpoint }));
    this.ids = ids;
    this.byTier = tiers.map((tier) => this.endpoints.filter((e) => this.closestTier(e) === tier));
    for (const id of this.outliers.keys()) {
      if (!ids.has(id)) this.outliers.delete(id);
    }
  }

  /**
   * The endpoint for a new connection, or undefined when no ready endpoint outside
   * `exclude` is left. When every ready endpoint is ejected (they failed one after the
   * other, or the last healthy one turned not ready), ejection is ignored rather than
   * refusing every connection: the same "panic" Envoy falls into below its healthy
   * threshold, and the ejection rule's own promise that one endpoint always stays.
   */
  pick(nowMs: number, exclude: ReadonlySet<string> = new Set()): Pick | undefined {
    const open = (e: ServiceEndpoint) => isReady(e) && !exclude.has(e.id);
    return this.pickFrom((e) => open(e) && !this.isEjected(e.id, nowMs)) ?? this.pickFrom(open);
  }

  /**
   * A connect to `id` failed. Counts towards ejection; failures reported while the
   * endpoint is ejected are of connects started before it was, and do not count again.
   * An id not in the set is ignored, so the state stays bounded by the set.
   */
  reportConnectFailure(id: string, nowMs: number): void {
    if (!this.ids.has(id)) return;
    const state = this.outlier(id);
    if (nowMs < state.ejectedUntilMs) return;
    state.consecutiveFailures++;
    if (state.consecutiveFailures < this.failuresToEject) return;
    // Never eject the last eligible endpoint of the whole set (Envoy's
    // max_ejection_percent, taken to its limit: every endpoint but one may go). The count
    // stays at the threshold, so the next failure ejects it once another one is back.
    if (!this.othersEligible(id, nowMs)) return;
    state.ejections++;
    const backoffMs = Math.min(
      this.firstEjectionMs * 2 ** (state.ejections - 1),
      this.maxEjectionMs,
    );
    state.ejectedUntilMs = nowMs + backoffMs;
    state.consecutiveFailures = 0;
  }

  /** A connect to `id` succeeded: its failures and back-off are forgiven. */
  reportConnectSuccess(id: string): void {
    // Deleting, not zeroing, keeps the map holding only endpoints with a history.
    this.outliers.delete(id);
  }

  /** When `id`'s ejection ends, or undefined when it is not ejected at `nowMs`. */
  ejectedUntilMs(id: string, nowMs: number): number | undefined {
    const until = this.outliers.get(id)?.ejectedUntilMs;
    return until !== undefined && nowMs < until ? until : undefined;
  }

  /** How many endpoints have outlier state (for tests and metrics; ≤ the set's size). */
  get trackedEndpoints(): number {
    return this.outliers.size;
  }

  private outlier(id: string): OutlierState {
    let state = this.outliers.get(id);
    if (!state) {
      state = { consecutiveFailures: 0, ejections: 0, ejectedUntilMs: 0 };
      this.outliers.set(id, state);
    }
    return state;
  }

  private isEjected(id: string, nowMs: number): boolean {
    return this.ejectedUntilMs(id, nowMs) !== undefined;
  }

  private othersEligible(id: string, nowMs: number): boolean {
    return this.endpoints.some((e) => e.id !== id && isReady(e) && !this.isEjected(e.id, nowMs));
  }

  /** The closest tier with an eligible endpoint, and a weighted pick in it. */
  private pickFrom(eligible: (endpoint: ServiceEndpoint) => boolean): Pick | undefined {
    for (const [index, tier] of tiers.entries()) {
      const inTier = (this.byTier[index] ?? []).filter(eligible);
      if (inTier.length > 0) return { endpoint: this.weightedPick(inTier), tier };
    }
    return undefined;
  }

  private closestTier(endpoint: ServiceEndpoint): LocalityTier {
    const here = this.locality;
    if (endpoint.node === here.node) return "node";
    if (!known(here.region) || endpoint.region !== here.region) return "any";
    // Zone names are unique within a region, not across regions.
    return known(here.zone) && endpoint.zone === here.zone ? "zone" : "region";
  }

  /** Weighted random: one draw, then the endpoint whose cumulative range holds it. */
  private weightedPick(endpoints: readonly ServiceEndpoint[]): ServiceEndpoint {
    let total = 0;
    for (const e of endpoints) total += e.weight;
    let draw = this.rng.next() * total;
    for (const e of endpoints) {
      draw -= e.weight;
      if (draw < 0) return e;
    }
    // Rounding can leave draw at a hair above 0 after the last endpoint.
    return endpoints[endpoints.length - 1]!;
  }
}

const tiers: readonly LocalityTier[] = ["node", "zone", "region", "any"];

/** Eligible for new connections before ejection is considered. */
function isReady(endpoint: ServiceEndpoint): boolean {
  return endpoint.ready && endpoint.weight > 0;
}

function known(name: string): boolean {
  return name !== "";
}

/**
 * The orphan scan: which of the replicas a driver lists nobody wants (they are stopped
 * and removed), when each driver's list is due, and which replicas this agent's own
 * state names (the drivers adopt a replica without owner marks only then, ADR 0030).
 * Pure: time comes in as `nowMs`; the supervisor does the listing and the removals.
 */
import type { DriverName } from "../drivers/driver.js";
import type { DesiredReplica, SupervisorSnapshot } from "./supervisorTypes.js";

/**
 * When each driver's replicas are listed again: at the first chance, every
 * `intervalMs`, and as soon as something may have changed what is unwanted (a desired
 * set arrived, the driver came back, a list or a removal failed). One scan per driver
 * at a time.
 */
export class OrphanScanSchedule {
  private readonly requested = new Set<DriverName>();
  private readonly lastScanAtMs = new Map<DriverName, number>();
  private readonly inFlight = new Set<DriverName>();

  constructor(private readonly intervalMs: number) {}

  /** Scan this driver at the next chance, whenever its last scan was. */
  request(driver: DriverName): void {
    this.requested.add(driver);
  }

  isDue(driver: DriverName, nowMs: number): boolean {
    if (this.inFlight.has(driver)) return false;
    const lastMs = this.lastScanAtMs.get(driver);
    return this.requested.has(driver) || lastMs === undefined || nowMs - lastMs >= this.intervalMs;
  }

  /** A scan of `driver` starts now; end() must follow. */
  begin(driver: DriverName, nowMs: number): void {
    this.inFlight.add(driver);
    this.requested.delete(driver);
    this.lastScanAtMs.set(driver, nowMs);
  }

  end(driver: DriverName): void {
    this.inFlight.delete(driver);
  }
}

/**
 * Whether a replica `driver` lists is unwanted: neither the desired set nor a replica
 * the supervisor works on puts it on that driver. A replica wanted on another driver
 * is an orphan on this one (its spec moved between drivers).
 */
export function isOrphan(
  driver: DriverName,
  wanted: { desiredDriver: DriverName | undefined; supervisedDriver: DriverName | undefined },
): boolean {
  return wanted.desiredDriver !== driver && wanted.supervisedDriver !== driver;
}

/** The agent's own state, as far as ownership is concerned. */
export interface KnownReplicas {
  desired: ReadonlyMap<string, DesiredReplica> | null;
  supervised: ReadonlyMap<string, unknown>;
  restored: SupervisorSnapshot["replicas"];
}

/**
 * Whether this agent's own state names the replica: the desired set, a replica it
 * supervises, or one a restored snapshot knew (ADR 0030).
 */
export function agentKnows(id: string, state: KnownReplicas): boolean {
  return (
    state.desired?.has(id) === true || state.supervised.has(id) || Object.hasOwn(state.restored, id)
  );
}

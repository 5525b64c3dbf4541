/**
 * The supervisor's host ports (REQ-030, ADR 0032): which ports a replica keeps, gets
 * or gives back, one assignment at a time, through the host-wide reservations. The
 * choice of a port is assignHostPorts' (replicaPorts.ts); the reservations are
 * hostPortReservations.ts'. What is here is the bookkeeping between them and the
 * supervisor's replicas.
 */
import type { Logger } from "../../observe/logger.js";
import type { DriverName, PortMapping } from "../drivers/driver.js";
import { type DeadlineCall, errorMessage } from "./driverCalls.js";
import type { HostPortAllocator } from "./hostPortReservations.js";
import {
  type AllocatePort,
  allocateFreePort,
  allocatorFrom,
  assignHostPorts,
  droppedPorts,
} from "./replicaPorts.js";
import type { DesiredReplica, SupervisorSnapshot } from "./supervisorTypes.js";

/** Ports remembered per replica as held by others; the oldest is forgotten first. */
export const maxForeignPorts = 16;

/** The allocator the supervisor's options ask for. */
export function allocatorFor(options: {
  hostPorts?: HostPortAllocator;
  allocatePort?: AllocatePort;
}): HostPortAllocator {
  return (
    options.hostPorts ??
    (options.allocatePort
      ? allocatorFrom(options.allocatePort)
      : allocatorFrom(allocateFreePort, true))
  );
}

/**
 * Host ports known without allocating: those the spec pins. Every other port is
 * allocated at start — for the process driver too, which only prefers the declared
 * port, since several replicas on one node cannot all listen on it. Adopted replicas
 * without a restored snapshot have only these.
 */
export function knownHostPorts(desired: DesiredReplica): Record<string, number> {
  const known: Record<string, number> = {};
  for (const port of desired.spec.ports) {
    if (port.hostPort > 0) known[port.name] = port.hostPort;
  }
  return known;
}

/** Host ports of every replica but `id`: the supervised ones and those a snapshot knew. */
export function portsOfOthers(
  id: string,
  supervised: Iterable<[string, { hostPorts: Record<string, number> }]>,
  restored: SupervisorSnapshot["replicas"],
): Set<number> {
  const taken = new Set<number>();
  for (const [otherId, replica] of supervised) {
    if (otherId === id) continue;
    for (const port of Object.values(replica.hostPorts)) taken.add(port);
  }
  for (const [otherId, replica] of Object.entries(restored)) {
    if (otherId === id) continue;
    for (const port of Object.values(replica.hostPorts)) taken.add(port);
  }
  return taken;
}

/** `foreign` with `port` added, at most maxForeignPorts, the oldest dropped first. */
export function rememberForeignPort(foreign: readonly number[], port: number): number[] {
  return [...foreign, port].slice(-maxForeignPorts);
}

/** The name under which `hostPorts` holds `port`, if it does. */
export function portNameOf(hostPorts: Record<string, number>, port: number): string | undefined {
  return Object.keys(hostPorts).find((key) => hostPorts[key] === port);
}

/** A replica as the assigner sees it: its id, its ports (replaced), the ports it must not get. */
export interface PortHolder {
  readonly id: string;
  hostPorts: Record<string, number>;
  /**
   * Ports a probe found held by something else: never given to this replica again,
   * whatever a bind check says (a foreign IPv6-only listener does not stop an IPv4 bind).
   */
  readonly foreignPorts: readonly number[];
}

export interface HostPortAssignerOptions {
  allocator: HostPortAllocator;
  /** Bounds each assignment ("allocating host ports"). */
  call: DeadlineCall;
  logger: Logger;
}

export class HostPortAssigner {
  /** The assignment in flight; the next one waits for it (see assign). */
  private inFlight: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: HostPortAssignerOptions) {}

  /**
   * Gives `holder` its host ports for `ports` and gives up the reservations of those it
   * no longer has; `saved` runs once the new ports are in place, before this resolves
   * (they must be on disk before the replica listens on them). Assignments run one at a
   * time: replicas starting together would otherwise not see each other's ports
   * (`portsOfOthers` is read when this one's turn comes), and two process replicas
   * (which prefer the declared port) would both get it.
   */
  assign(
    holder: PortHolder,
    driver: DriverName,
    ports: readonly PortMapping[],
    portsOfOthers: () => Iterable<number>,
    saved: () => void,
  ): Promise<void> {
    const { call, allocator, logger } = this.options;
    const run = this.inFlight.then(async () => {
      const before = holder.hostPorts;
      holder.hostPorts = await call(
        () =>
          assignHostPorts(
            driver,
            ports,
            before,
            new Set([...portsOfOthers(), ...holder.foreignPorts]),
            allocator,
            holder.id,
          ),
        "allocating host ports",
      );
      const dropped = droppedPorts(before, holder.hostPorts);
      if (dropped.length > 0) {
        logger.info(
          { replica: holder.id, dropped, hostPorts: holder.hostPorts },
          "host ports changed: the old ones are taken or no longer declared",
        );
        await this.release(holder.id, Object.fromEntries(dropped.map((p) => [String(p), p])));
      }
      saved();
    });
    this.inFlight = run.catch(() => undefined);
    return run;
  }

  /** Gives up the reservations of a replica's ports; failures only cost a stale file. */
  async release(id: string, hostPorts: Record<string, number>): Promise<void> {
    for (const port of new Set(Object.values(hostPorts))) {
      await this.options.allocator.release(port, id).catch((error: unknown) => {
        this.options.logger.warn(
          { replica: id, port, err: errorMessage(error) },
          "cannot release port",
        );
      });
    }
  }

  /**
   * Re-asserts the reservations of the host ports a previous agent gave its replicas
   * (their processes may still listen on them), before anything is allocated.
   */
  async claimRestored(restored: SupervisorSnapshot["replicas"]): Promise<void> {
    const { allocator, logger } = this.options;
    for (const [id, replica] of Object.entries(restored)) {
      for (const port of new Set(Object.values(replica.hostPorts))) {
        const claimed = await allocator.claim(port, id).catch((error: unknown) => {
          logger.warn({ replica: id, port, err: errorMessage(error) }, "cannot reserve port");
          return true;
        });
        if (!claimed) {
          // Kept for now: a running replica still listens there; its probes and its next
          // start find out whether the port is really someone else's.
          logger.warn({ replica: id, port }, "host port reserved by another agent");
        }
      }
    }
  }
}

import type { DriverName, PortMapping, ReplicaRunSpec } from "../drivers/driver.js";
import type { ProbeAction } from "../probes/probeTypes.js";
import { canBind, type HostPortAllocator, withKernelChosenPort } from "./hostPortReservations.js";

/** Finds a free host port, preferring `preferred` when it is non-zero and free. */
export type AllocatePort = (preferred: number) => Promise<number>;

/**
 * An allocator without host-wide reservations: `preferred` if it can be bound now,
 * else a port the kernel chooses. Enough for one agent alone on its host (and for
 * tests); agents sharing a host use the file reservations (ADR 0032).
 */
export const allocateFreePort: AllocatePort = async (preferred) => {
  if (preferred > 0 && (await canBind(preferred))) return preferred;
  return withKernelChosenPort(async (port) => port);
};

/**
 * A HostPortAllocator from a plain function: no reservations, and a kept port is
 * reused as it is (`checkReuse` binds it first). Tests inject their own function.
 */
export function allocatorFrom(allocate: AllocatePort, checkReuse = false): HostPortAllocator {
  return {
    allocate: (preferred) => allocate(preferred),
    reuse: (port) => (checkReuse ? canBind(port) : Promise.resolve(true)),
    claim: async () => true,
    release: async () => undefined,
  };
}

/**
 * What service networking gives a replica when it starts (issue 14): the
 * CLOUDLESS_SERVICE_* variables, and for a container the name server to use.
 */
export interface ReplicaNetworkingSettings {
  env: Record<string, string>;
  dns?: { servers: string[]; search: string[]; options: string[] };
}

/** Environment variable name for a named port: "http-alt" → "PORT_HTTP_ALT". */
export function portEnvName(portName: string): string {
  return `PORT_${portName.toUpperCase().replace(/[^A-Z0-9]/g, "_")}`;
}

/**
 * The spec the driver receives: host ports filled in, and PORT / PORT_<NAME> set to the
 * port the workload must listen on. Variables the workload sets itself win, because the
 * operator asked for them explicitly.
 */
export function buildRunSpec(
  spec: ReplicaRunSpec,
  hostPorts: Record<string, number>,
  networking?: ReplicaNetworkingSettings,
): ReplicaRunSpec {
  // A process shares the node's network: it must listen on the host port it was
  // given (Nomad-style dynamic ports), so two replicas on one node never collide.
  const ports: PortMapping[] = spec.ports.map((port) => {
    const hostPort = hostPorts[port.name] ?? port.hostPort;
    return spec.driver === "process"
      ? { ...port, containerPort: hostPort, hostPort }
      : { ...port, hostPort };
  });
  const portEnv: Record<string, string> = {};
  const first = ports[0];
  if (first) portEnv.PORT = String(first.containerPort);
  for (const port of ports) portEnv[portEnvName(port.name)] = String(port.containerPort);
  // Identity variables, as Nomad's NOMAD_ALLOC_ID: a replica can tell who it is.
  const identityEnv = {
    CLOUDLESS_REPLICA: spec.replicaId,
    CLOUDLESS_WORKLOAD: spec.workload,
    CLOUDLESS_NAMESPACE: spec.namespace,
  };
  return {
    ...spec,
    // Service variables below the workload's own, which the operator set on purpose.
    env: { ...identityEnv, ...portEnv, ...networking?.env, ...spec.env },
    ...(networking?.dns ? { dns: networking.dns } : {}),
    ports,
    ...(spec.command ? { command: [...spec.command] } : {}),
    ...(spec.args ? { args: [...spec.args] } : {}),
    resources: { ...spec.resources },
  };
}

/**
 * Host ports for a replica: kept from `previous` by name (stable across restarts and
 * spec changes) while the port is still the replica's to use (`allocator.reuse`: its
 * reservation holds and nothing else has bound it since — a replica that exited with
 * EADDRINUSE finds its port taken here), otherwise allocated, for the process driver
 * preferring the declared port, since it shares the host's network. `taken` holds
 * ports other replicas of this agent use; `owner` is the replica id.
 */
export async function assignHostPorts(
  driver: DriverName,
  ports: readonly PortMapping[],
  previous: Record<string, number>,
  taken: ReadonlySet<number>,
  allocator: HostPortAllocator,
  owner: string,
): Promise<Record<string, number>> {
  const assigned: Record<string, number> = {};
  const used = new Set(taken);
  const lost = new Set<number>();
  for (const port of ports) {
    const kept = previous[port.name];
    if (
      kept !== undefined &&
      (kept === port.hostPort || port.hostPort === 0) &&
      !used.has(kept) &&
      (await allocator.reuse(kept, owner))
    ) {
      assigned[port.name] = kept;
      used.add(kept);
      continue;
    }
    if (kept !== undefined) lost.add(kept);
    // The process driver prefers the declared port, so a single replica keeps it; a
    // port just found taken is not asked for again.
    const declared =
      driver === "process" && port.hostPort === 0 ? port.containerPort : port.hostPort;
    const preferred = lost.has(declared) ? 0 : declared;
    const chosen = await allocateUnused(preferred, used, allocator, owner);
    assigned[port.name] = chosen;
    used.add(chosen);
  }
  return assigned;
}

/** A bounded number of tries: the kernel rarely hands back a port we already gave out. */
const maxAllocationAttempts = 5;

async function allocateUnused(
  preferred: number,
  used: ReadonlySet<number>,
  allocator: HostPortAllocator,
  owner: string,
): Promise<number> {
  let candidatePreferred = used.has(preferred) ? 0 : preferred;
  for (let attempt = 0; attempt < maxAllocationAttempts; attempt++) {
    const port = await allocator.allocate(candidatePreferred, owner);
    if (!used.has(port)) return port;
    candidatePreferred = 0;
  }
  throw new Error(
    `no free host port after ${maxAllocationAttempts} attempts; free some ports and retry`,
  );
}

/** Ports in `before` that `after` no longer uses: their reservations can go. */
export function droppedPorts(
  before: Record<string, number>,
  after: Record<string, number>,
): number[] {
  const kept = new Set(Object.values(after));
  return [...new Set(Object.values(before))].filter((port) => !kept.has(port));
}

/**
 * Points a probe at the replica's host port: a port equal to one of the replica's
 * container ports is translated to its host port; any other number is taken as a
 * host port already.
 */
export function resolveProbeAction(
  action: ProbeAction,
  ports: readonly PortMapping[],
  hostPorts: Record<string, number>,
): ProbeAction {
  const toHostPort = (port: number) => {
    const match = ports.find((mapping) => mapping.containerPort === port);
    return match ? (hostPorts[match.name] ?? port) : port;
  };
  if ("http" in action) return { http: { ...action.http, port: toHostPort(action.http.port) } };
  if ("tcp" in action) return { tcp: { ...action.tcp, port: toHostPort(action.tcp.port) } };
  return { exec: { command: [...action.exec.command] } };
}

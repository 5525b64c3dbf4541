import net from "node:net";
import type { DriverName, PortMapping, ReplicaRunSpec } from "../drivers/driver.js";
import type { ProbeAction } from "../probes/probeTypes.js";

/** Finds a free host port, preferring `preferred` when it is non-zero and free. */
export type AllocatePort = (preferred: number) => Promise<number>;

/** How long binding a local port may take before we give up (it is normally instant). */
const bindTimeoutMs = 5000;

/**
 * Default allocator: binds `preferred` (or port 0, letting the kernel choose) on
 * 0.0.0.0, reads the port and releases it. Another process could take the port between
 * release and the replica's bind; the engine then fails the start and the supervisor
 * retries with back-off, so the race costs a retry, not a wrong mapping.
 */
export const allocateFreePort: AllocatePort = async (preferred) => {
  if (preferred > 0) {
    try {
      return await bindAndRelease(preferred);
    } catch {
      // Taken: fall through to any free port rather than failing the replica.
    }
  }
  return bindAndRelease(0);
};

function bindAndRelease(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    const timer = setTimeout(() => {
      server.close();
      reject(new Error(`binding port ${port} did not finish within ${bindTimeoutMs} ms`));
    }, bindTimeoutMs);
    server.unref();
    server.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    server.listen({ port, host: "0.0.0.0", exclusive: true }, () => {
      const address = server.address();
      const chosen = typeof address === "object" && address ? address.port : 0;
      server.close(() => {
        clearTimeout(timer);
        if (chosen > 0) resolve(chosen);
        else reject(new Error("the kernel did not report the bound port"));
      });
    });
  });
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
    env: { ...identityEnv, ...portEnv, ...spec.env },
    ports,
    ...(spec.command ? { command: [...spec.command] } : {}),
    ...(spec.args ? { args: [...spec.args] } : {}),
    resources: { ...spec.resources },
  };
}

/**
 * Host ports for a replica: kept from `previous` by name (stable across restarts and
 * spec changes), otherwise allocated — for the process driver preferring the declared
 * port, since it shares the host's network. `taken` holds ports other replicas use.
 */
export async function assignHostPorts(
  driver: DriverName,
  ports: readonly PortMapping[],
  previous: Record<string, number>,
  taken: ReadonlySet<number>,
  allocate: AllocatePort,
): Promise<Record<string, number>> {
  const assigned: Record<string, number> = {};
  const used = new Set(taken);
  for (const port of ports) {
    const kept = previous[port.name];
    if (kept !== undefined && (kept === port.hostPort || port.hostPort === 0)) {
      assigned[port.name] = kept;
      used.add(kept);
      continue;
    }
    // The process driver prefers the declared port, so a single replica keeps it.
    const preferred =
      driver === "process" && port.hostPort === 0 ? port.containerPort : port.hostPort;
    assigned[port.name] = await allocateUnused(preferred, used, allocate);
    used.add(assigned[port.name] as number);
  }
  return assigned;
}

/** A bounded number of tries: the kernel rarely hands back a port we already gave out. */
const maxAllocationAttempts = 5;

async function allocateUnused(
  preferred: number,
  used: ReadonlySet<number>,
  allocate: AllocatePort,
): Promise<number> {
  let candidatePreferred = used.has(preferred) ? 0 : preferred;
  for (let attempt = 0; attempt < maxAllocationAttempts; attempt++) {
    const port = await allocate(candidatePreferred);
    if (!used.has(port)) return port;
    candidatePreferred = 0;
  }
  throw new Error(
    `no free host port after ${maxAllocationAttempts} attempts; free some ports and retry`,
  );
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

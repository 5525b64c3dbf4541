/**
 * What a workload publishes as a service (REQ-041): read from its applied document, with
 * the defaults a spec applied before the `service` section existed needs. Pure.
 */
import { serviceWeightDefault } from "../../api/workload/spec.js";
import type { WorkloadRecord } from "../controllers/records.js";
import type { AppliedSpecView } from "../controllers/specView.js";

export interface PublishedPort {
  /** The workload port's name (SRV records and host ports use it). */
  name: string;
  /** The containerPort: the port on the service's VIP. */
  port: number;
}

export interface PublishedService {
  /** The service's name: `service.name`, else the workload's. */
  name: string;
  ports: PublishedPort[];
  /** 0..1000; 0 drains the workload's replicas. */
  weight: number;
}

/**
 * The service a workload document publishes, or undefined when it publishes no tcp
 * port (a workload with no tcp ports is no service).
 */
export function serviceOf(doc: AppliedSpecView): PublishedService | undefined {
  const section = doc.spec.service;
  // Stored documents may predate `protocol` defaults: absent means tcp.
  const tcp = (doc.spec.ports ?? []).filter((port) => (port.protocol ?? "tcp") === "tcp");
  const wanted = section?.ports;
  const ports = (wanted ? tcp.filter((port) => wanted.includes(port.name)) : tcp).map((port) => ({
    name: port.name,
    port: port.containerPort,
  }));
  if (ports.length === 0) return undefined;
  return {
    name: section?.name ?? doc.metadata.name,
    ports,
    weight: section?.weight ?? serviceWeightDefault,
  };
}

/**
 * Why `doc` may not join the service it names: another workload of that service in the
 * namespace publishes a port of the same name with another number (the VIP has one
 * port per name). Undefined when it may. `others` may include the workload itself.
 */
export function servicePortConflict(
  doc: AppliedSpecView,
  others: Iterable<WorkloadRecord>,
): string | undefined {
  const mine = serviceOf(doc);
  if (!mine) return undefined;
  const { name: workload, namespace } = doc.metadata;
  for (const other of others) {
    if (other.namespace !== namespace || other.name === workload) continue;
    const theirs = serviceOf(other.spec as AppliedSpecView);
    if (!theirs || theirs.name !== mine.name) continue;
    for (const port of mine.ports) {
      const clash = theirs.ports.find((p) => p.name === port.name && p.port !== port.port);
      if (clash) {
        return (
          `service "${mine.name}" port "${port.name}" is ${clash.port} in workload ` +
          `"${other.name}" but ${port.port} here; use the same number or another service.name`
        );
      }
    }
  }
  return undefined;
}

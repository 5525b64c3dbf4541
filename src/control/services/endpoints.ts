/**
 * The services of the cluster and their endpoints (REQ-041, REQ-042), computed from the
 * leader's cluster state. Pure: the same state and revision weights give the same
 * services, so tests and the simulator can check them in process.
 */
import type { ClusterState } from "../controllers/clusterState.js";
import { workloadId } from "../controllers/records.js";
import type { AppliedSpecView } from "../controllers/specView.js";
import { type PublishedPort, serviceOf } from "./serviceModel.js";

export interface EndpointView {
  replicaId: string;
  node: string;
  zone: string;
  region: string;
  /** The replica reports ready and its node is Ready (a NotReady or Lost node's are not). */
  ready: boolean;
  /** Workload weight × revision weight; 0 drains. */
  weight: number;
  /** Published port name → the port on the node where the replica listens. */
  hostPorts: Record<string, number>;
  revision: number;
  workload: string;
}

export interface ServiceView {
  namespace: string;
  name: string;
  ports: PublishedPort[];
  /** The workloads whose replicas are its endpoints, sorted. */
  workloads: string[];
  endpoints: EndpointView[];
}

/**
 * Weights per revision, "namespace/workload/revision" → factor (absent: 1). The canary
 * rollout will set it; until then every revision weighs 1.
 */
export type RevisionWeights = ReadonlyMap<string, number>;

/** The largest endpoint weight: 1000 (workload) × 1000 (revision), the picker's bound. */
export const maxEndpointWeight = 1_000_000;

/** "namespace/name" of a service. */
export function serviceId(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

/** Every service of the state, by "namespace/name", with its endpoints. */
export function buildServices(
  state: Pick<ClusterState, "nodes" | "workloads" | "replicasByWorkload">,
  revisionWeights: RevisionWeights = new Map(),
): Map<string, ServiceView> {
  const services = new Map<string, ServiceView>();
  // Sorted, so when two workloads disagree on a port the same one wins every time.
  const workloads = [...state.workloads.values()]
    .map((entry) => entry.value)
    .sort((a, b) => workloadId(a.namespace, a.name).localeCompare(workloadId(b.namespace, b.name)));
  for (const workload of workloads) {
    const published = serviceOf(workload.spec as AppliedSpecView);
    if (!published) continue;
    const id = serviceId(workload.namespace, published.name);
    let service = services.get(id);
    if (!service) {
      service = {
        namespace: workload.namespace,
        name: published.name,
        ports: [],
        workloads: [],
        endpoints: [],
      };
      services.set(id, service);
    }
    service.workloads.push(workload.name);
    // The ports this workload serves: those it agrees on with the service. A clash is
    // refused at apply; one that slipped in (two applies at once) is left out, not merged.
    const served: PublishedPort[] = [];
    for (const port of published.ports) {
      const known = service.ports.find((p) => p.name === port.name);
      if (!known) service.ports.push(port);
      if (!known || known.port === port.port) served.push(port);
    }
    const replicas = state.replicasByWorkload.get(workloadId(workload.namespace, workload.name));
    for (const { value: replica } of replicas ?? []) {
      if (replica.node === "" || replica.desired !== "Running" || !replica.status) continue;
      const hostPorts: Record<string, number> = {};
      for (const port of served) {
        const hostPort = replica.status.hostPorts[port.name];
        if (hostPort !== undefined) hostPorts[port.name] = hostPort;
      }
      if (Object.keys(hostPorts).length === 0) continue;
      const node = state.nodes.get(replica.node);
      const revisionWeight =
        revisionWeights.get(`${workload.namespace}/${workload.name}/${replica.revision}`) ?? 1;
      service.endpoints.push({
        replicaId: replica.id,
        node: replica.node,
        zone: node?.zone ?? "",
        region: node?.region ?? "",
        ready: replica.status.ready && node?.status === "Ready",
        weight: clampWeight(published.weight * revisionWeight),
        hostPorts,
        revision: replica.revision,
        workload: workload.name,
      });
    }
  }
  for (const service of services.values()) {
    service.ports.sort((a, b) => a.name.localeCompare(b.name));
    service.endpoints.sort((a, b) => a.replicaId.localeCompare(b.replicaId));
  }
  return services;
}

function clampWeight(weight: number): number {
  if (!Number.isFinite(weight) || weight <= 0) return 0;
  return Math.min(maxEndpointWeight, Math.round(weight));
}

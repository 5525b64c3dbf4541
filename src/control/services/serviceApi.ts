/**
 * The ServiceService API (REQ-041, REQ-042): services with their VIPs and endpoints, and
 * what the agents last reported of their mesh peers. Admin identities only, as the
 * workload API. Any coordinator answers: the leader from its controller's memory, a
 * follower from the store.
 */
import type { ServiceImpl } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import type { ServiceService } from "../../api/gen/cloudless/v1/service_pb.js";
import { validateNodeName } from "../../api/identity.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import { requireAdmin } from "../api/context.js";
import { type ClusterCache, readFreshClusterState } from "../controllers/clusterCache.js";
import type { Store } from "../store/store.js";
import { buildServices, type ServiceView, serviceId } from "./endpoints.js";
import { nodePeersToProto, serviceToProto } from "./serviceProto.js";
import {
  type MeshPeerRecord,
  meshPeerRecordPrefix,
  meshPeerRecordSchema,
  type ServiceRecord,
  serviceRecordPrefix,
  serviceRecordSchema,
} from "./serviceRecords.js";
import type { ServicesController } from "./servicesController.js";

/**
 * Services in one list answer: a namespace holds at most 1,000 workloads, so one
 * namespace always fits; a whole large cluster is listed per namespace.
 */
export const maxListedServices = 5_000;
/**
 * Endpoints in one list answer (~100 bytes each: 2 MB). A cluster sized for 50,000
 * replicas shows them per namespace or per service (`service get`).
 */
export const maxListedEndpoints = 20_000;

const dnsLabelPattern = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

function checkLabel(field: string, value: string): void {
  if (!dnsLabelPattern.test(value)) {
    throw CloudlessError.invalid(
      `${field} ${JSON.stringify(value.slice(0, 80))}${value.length > 80 ? "…" : ""} is not a ` +
        "DNS label: lowercase letters, digits and '-', at most 63 characters",
    );
  }
}

export interface ServiceApiDeps {
  store: Store;
  clusterDomain: string;
  serviceCidr: string;
  controller: ServicesController;
  cache: ClusterCache;
}

export function serviceServiceImpl(deps: ServiceApiDeps): ServiceImpl<typeof ServiceService> {
  async function services(): Promise<{
    views: ReadonlyMap<string, ServiceView>;
    records: ReadonlyMap<string, ServiceRecord>;
  }> {
    // The endpoints as fresh as a store read (the leader's cache serves it); the VIPs
    // from the leader's memory, else from the store (a new service's VIP may lag by the
    // snapshot debounce on the leader: it shows as "" until allocated).
    const state = await readFreshClusterState(deps.store, deps.cache);
    const leader = deps.controller.current();
    if (leader) return { views: buildServices(state), records: leader.records };
    const stored = await deps.store.range(serviceRecordPrefix);
    const records = new Map<string, ServiceRecord>();
    for (const kv of stored.kvs) {
      records.set(
        kv.key.slice(serviceRecordPrefix.length),
        decodeRecord(serviceRecordSchema, kv.key, kv.value),
      );
    }
    return { views: buildServices(state), records };
  }

  async function peerRecords(): Promise<MeshPeerRecord[]> {
    const reports = deps.controller.meshReports();
    if (reports) return reports.all();
    const stored = await deps.store.range(meshPeerRecordPrefix);
    return stored.kvs.map((kv) => decodeRecord(meshPeerRecordSchema, kv.key, kv.value));
  }

  return {
    async listServices(request, context) {
      requireAdmin(context);
      if (request.namespace !== "") checkLabel("namespace", request.namespace);
      const { views, records } = await services();
      const selected = [...views.entries()]
        .filter(([, view]) => request.namespace === "" || view.namespace === request.namespace)
        .sort(([a], [b]) => a.localeCompare(b));
      if (selected.length > maxListedServices) {
        throw CloudlessError.failedPrecondition(
          `more than ${maxListedServices} services; list one namespace at a time with -n`,
        );
      }
      const endpoints = selected.reduce((sum, [, view]) => sum + view.endpoints.length, 0);
      if (endpoints > maxListedEndpoints) {
        throw CloudlessError.failedPrecondition(
          `more than ${maxListedEndpoints} endpoints; list one namespace with -n or get one service`,
        );
      }
      return {
        services: selected.map(([id, view]) =>
          serviceToProto(view, records.get(id), deps.clusterDomain),
        ),
        clusterDomain: deps.clusterDomain,
        serviceCidr: deps.serviceCidr,
      };
    },

    async getService(request, context) {
      requireAdmin(context);
      if (request.name === "") throw CloudlessError.invalid("a service name is required");
      const namespace = request.namespace || "default";
      checkLabel("name", request.name);
      checkLabel("namespace", namespace);
      const { views, records } = await services();
      const id = serviceId(namespace, request.name);
      const view = views.get(id);
      if (!view) {
        throw CloudlessError.notFound(
          `service "${request.name}" not found in namespace "${namespace}"; run \`cloudless service list\` to see services`,
        );
      }
      return { service: serviceToProto(view, records.get(id), deps.clusterDomain) };
    },

    async listPeers(request, context) {
      requireAdmin(context);
      if (request.node !== "") {
        const check = validateNodeName(request.node);
        if (!check.ok) throw CloudlessError.invalid(`node: ${check.reason}`);
      }
      const records = (await peerRecords())
        .filter((record) => request.node === "" || record.node === request.node)
        .sort((a, b) => a.node.localeCompare(b.node));
      return { nodes: records.map(nodePeersToProto) };
    },
  };
}

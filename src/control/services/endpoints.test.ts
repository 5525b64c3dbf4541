import { describe, expect, it } from "vitest";
import type { ClusterState, Versioned } from "../controllers/clusterState.js";
import type { ReplicaRecord, WorkloadRecord } from "../controllers/records.js";
import type { NodeRecord } from "../nodes/nodeRecord.js";
import { testNodeRecord } from "../nodes/testing/nodeRecords.js";
import { buildServices } from "./endpoints.js";
import { servicePortConflict } from "./serviceModel.js";

function workload(
  name: string,
  ports: { name: string; containerPort: number; protocol?: string }[],
  service?: Record<string, unknown>,
): WorkloadRecord {
  return {
    uid: name,
    namespace: "default",
    name,
    revision: 1,
    templateHash: "x",
    spec: {
      apiVersion: "cloudless/v1",
      kind: "Workload",
      metadata: { name, namespace: "default", labels: {} },
      spec: { ports, ...(service ? { service } : {}) },
    },
    replicas: 1,
    minAvailable: 0,
    createdAtMs: 0,
    updatedAtMs: 0,
  };
}

function replica(
  id: string,
  of: string,
  node: string,
  status: { ready: boolean; hostPorts: Record<string, number> } | undefined,
  revision = 1,
): Versioned<ReplicaRecord> {
  return {
    modRevision: 1,
    value: {
      id,
      namespace: "default",
      workload: of,
      revision,
      node,
      desired: "Running",
      resources: { cpuMillicores: 1, memoryMiB: 1, storageGiB: 0, bandwidthMbps: 0 },
      createdAtMs: 0,
      ...(status
        ? {
            status: {
              phase: "Running",
              restarts: 0,
              reason: "",
              message: "",
              driver: "process",
              reportedAtMs: 0,
              ...status,
            },
          }
        : {}),
    },
  };
}

function node(name: string, zone: string, status: NodeRecord["status"] = "Ready"): NodeRecord {
  return { ...testNodeRecord(name), zone, region: "eu", status };
}

function state(
  workloads: WorkloadRecord[],
  replicas: Versioned<ReplicaRecord>[],
  nodes: NodeRecord[],
): Pick<ClusterState, "nodes" | "workloads" | "replicasByWorkload"> {
  const byWorkload = new Map<string, Versioned<ReplicaRecord>[]>();
  for (const r of replicas) {
    const key = `${r.value.namespace}/${r.value.workload}`;
    byWorkload.set(key, [...(byWorkload.get(key) ?? []), r]);
  }
  return {
    nodes: new Map(nodes.map((n) => [n.name, n])),
    workloads: new Map(workloads.map((w) => [`default/${w.name}`, { value: w, modRevision: 1 }])),
    replicasByWorkload: byWorkload,
  };
}

const http = { name: "http", containerPort: 8080 };

describe("REQ-042 endpoints of a service", () => {
  it("are the placed replicas with host ports, with node, zone, readiness and weight", () => {
    const services = buildServices(
      state(
        [workload("web", [http, { name: "dns", containerPort: 53, protocol: "udp" }])],
        [
          replica("web-a", "web", "n1", { ready: true, hostPorts: { http: 31001, dns: 31053 } }),
          replica("web-b", "web", "n2", { ready: false, hostPorts: { http: 31002 } }),
          replica("web-c", "web", "", undefined),
          replica("web-d", "web", "n1", { ready: false, hostPorts: {} }),
        ],
        [node("n1", "a"), node("n2", "b")],
      ),
    );
    const web = services.get("default/web");
    expect(web?.ports).toEqual([{ name: "http", port: 8080 }]);
    expect(web?.endpoints).toEqual([
      {
        replicaId: "web-a",
        node: "n1",
        zone: "a",
        region: "eu",
        ready: true,
        weight: 100,
        hostPorts: { http: 31001 },
        revision: 1,
        workload: "web",
      },
      expect.objectContaining({ replicaId: "web-b", node: "n2", zone: "b", ready: false }),
    ]);
  });

  it("a ready replica on a NotReady or Lost node is not ready", () => {
    const services = buildServices(
      state(
        [workload("web", [http])],
        [
          replica("web-a", "web", "n1", { ready: true, hostPorts: { http: 1 } }),
          replica("web-b", "web", "n2", { ready: true, hostPorts: { http: 2 } }),
        ],
        [node("n1", "a", "NotReady"), node("n2", "b", "Lost")],
      ),
    );
    expect(services.get("default/web")?.endpoints.map((e) => e.ready)).toEqual([false, false]);
  });

  it("weight is workload weight × revision weight; workloads join one service by name", () => {
    const services = buildServices(
      state(
        [
          workload("web-v1", [http], { name: "web", weight: 300 }),
          workload("web-v2", [http], { name: "web", weight: 0 }),
          workload("batch", []),
        ],
        [
          replica("a", "web-v1", "n1", { ready: true, hostPorts: { http: 1 } }, 1),
          replica("b", "web-v1", "n1", { ready: true, hostPorts: { http: 2 } }, 2),
          replica("c", "web-v2", "n1", { ready: true, hostPorts: { http: 3 } }),
        ],
        [node("n1", "a")],
      ),
      new Map([["default/web-v1/2", 0.5]]),
    );
    expect([...services.keys()]).toEqual(["default/web"]);
    const web = services.get("default/web");
    expect(web?.workloads).toEqual(["web-v1", "web-v2"]);
    expect(web?.endpoints.map((e) => [e.replicaId, e.weight])).toEqual([
      ["a", 300],
      ["b", 150],
      ["c", 0],
    ]);
  });

  it("service.ports publishes only the named ports; a workload with no tcp port is no service", () => {
    const services = buildServices(
      state(
        [
          workload("web", [http, { name: "admin", containerPort: 9000 }], { ports: ["http"] }),
          workload("dns", [{ name: "dns", containerPort: 53, protocol: "udp" }]),
        ],
        [],
        [],
      ),
    );
    expect([...services.keys()]).toEqual(["default/web"]);
    expect(services.get("default/web")?.ports).toEqual([{ name: "http", port: 8080 }]);
  });
});

describe("REQ-041 a port clash between workloads of one service", () => {
  it("names the other workload; the same number, or another service, is fine", () => {
    const v1 = workload("web-v1", [http], { name: "web" });
    const clash = workload("web-v2", [{ name: "http", containerPort: 9090 }], { name: "web" });
    const spec = clash.spec as Parameters<typeof servicePortConflict>[0];
    expect(servicePortConflict(spec, [v1])).toBe(
      'service "web" port "http" is 8080 in workload "web-v1" but 9090 here; use the same number or another service.name',
    );
    const same = workload("web-v2", [http], { name: "web" });
    expect(servicePortConflict(same.spec as typeof spec, [v1])).toBeUndefined();
    const other = workload("web-v2", [{ name: "http", containerPort: 9090 }], { name: "api" });
    expect(servicePortConflict(other.spec as typeof spec, [v1])).toBeUndefined();
  });
});

import { writeFile } from "node:fs/promises";
import * as path from "node:path";
import type { Workload } from "../../src/api/gen/cloudless/v1/workload_pb.js";
import { loadClientConfig } from "../../src/client/config.js";
import {
  type CoordinatorClients,
  createClients,
  createCoordinatorTransport,
} from "../../src/client/transport.js";
import { podman } from "./podman.js";
import { waitFor } from "./processes.js";

/** An in-process API client, for samplers that poll faster than a CLI process starts. */
export async function adminClients(configPath: string): Promise<CoordinatorClients> {
  const config = await loadClientConfig(configPath);
  return createClients(
    createCoordinatorTransport({
      baseUrl: config.servers[0] as string,
      clusterName: config.clusterName,
      caPem: config.caPem,
      certPem: config.certPem,
      keyPem: config.keyPem,
      timeoutMs: 10_000,
    }),
  );
}

export async function writeSpec(dir: string, name: string, spec: unknown): Promise<string> {
  const file = path.join(dir, `${name}.json`);
  await writeFile(file, JSON.stringify(spec, null, 2));
  return file;
}

/** A busybox httpd workload serving the test image's /www, with an HTTP readiness probe. */
export function webSpec(options: {
  name: string;
  namespace: string;
  image: string;
  replicas: number;
  minAvailable?: number;
  version?: string;
  spreadAcrossZones?: boolean;
  maxSurge?: number;
  maxUnavailable?: number;
}) {
  return {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: options.name, namespace: options.namespace },
    spec: {
      image: options.image,
      command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
      env: { VERSION: options.version ?? "v1" },
      ports: [{ name: "http", containerPort: 8080 }],
      resources: { cpuMillicores: 100, memoryMiB: 32 },
      replicas: options.replicas,
      ...(options.minAvailable !== undefined ? { minAvailable: options.minAvailable } : {}),
      placement: { spreadAcrossZones: options.spreadAcrossZones ?? false },
      rollout: { maxSurge: options.maxSurge ?? 1, maxUnavailable: options.maxUnavailable ?? 0 },
      readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
      terminationGracePeriodSeconds: 1,
    },
  };
}

export async function getWorkload(
  clients: CoordinatorClients,
  namespace: string,
  name: string,
): Promise<Workload> {
  const response = await clients.workloads.getWorkload({ name, namespace });
  return response.workload as Workload;
}

export async function waitForReady(
  clients: CoordinatorClients,
  namespace: string,
  name: string,
  replicas: number,
  timeoutMs = 60_000,
  extra: (w: Workload) => boolean = () => true,
): Promise<Workload> {
  return waitFor(
    `${replicas} ready replicas of ${namespace}/${name}`,
    async () => {
      const workload = await getWorkload(clients, namespace, name);
      const ready = workload.replicas.filter((r) => r.ready);
      return ready.length === replicas && workload.replicas.length === replicas && extra(workload)
        ? workload
        : undefined;
    },
    timeoutMs,
    200,
  );
}

/** Removes every container the test's namespace left behind (killed agents leave theirs). */
export async function removeNamespaceContainers(namespace: string): Promise<void> {
  const list = await podman([
    "ps",
    "-a",
    "--filter",
    `label=cloudless.namespace=${namespace}`,
    "--format",
    "{{.ID}}",
  ]);
  const ids = list.stdout.split("\n").filter(Boolean);
  if (ids.length > 0) await podman(["rm", "-f", "-t", "0", ...ids], 60_000);
}

export async function httpGet(port: number, timeoutMs = 2_000): Promise<number> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch(`http://127.0.0.1:${port}/`, { signal: controller.signal });
    await response.arrayBuffer();
    return response.status;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Workload behaviour with real processes: health probes in real containers (REQ-032),
 * idempotent apply, scaling and the JSON view (REQ-020, REQ-072), and the HTTP/JSON
 * face of the workload API (REQ-080).
 */
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { WorkloadService } from "../src/api/gen/cloudless/v1/workload_pb.js";
import { loadClientConfig } from "../src/client/config.js";
import {
  getWorkloadJson,
  removeProcessReplicas,
  startAgents,
  type WorkloadJson,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { ensurePodman, type PodmanAvailability, podman } from "./helpers/podman.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { httpsPost } from "./helpers/tlsProbe.js";
import {
  adminClients,
  httpGet,
  removeNamespaceContainers,
  writeSpec,
} from "./helpers/workloads.js";

const isRoot = process.getuid?.() === 0;
const node = "behaviour-node";

// Deadlines inside the tests bound every wait; the test timeout only has to exceed them.
describe.skipIf(!isRoot)(
  "workload behaviour with a real coordinator, agent and podman",
  { timeout: 180_000 },
  () => {
    let podmanService: PodmanAvailability;
    let resources: TestResources;
    let cluster: TestCluster;
    let namespace: string;
    let specDir: string;

    beforeAll(async () => {
      podmanService = await ensurePodman();
      if (!podmanService.available) throw new Error(`podman unavailable: ${podmanService.reason}`);
      resources = new TestResources();
      cluster = await TestCluster.start(resources);
      await startAgents(cluster, [
        { name: node, drivers: ["container", "process"], socket: podmanService.socketPath },
      ]);
    }, 300_000);

    afterAll(async () => {
      for (const agent of cluster?.agents.values() ?? []) await agent.stop(10_000);
      if (cluster) await removeProcessReplicas([await cluster.agentDir(node)]);
      await resources?.cleanup();
      if (podmanService?.available) await podmanService.stop();
    }, 60_000);

    beforeEach(async () => {
      namespace = `b-${randomBytes(3).toString("hex")}`;
      specDir = await resources.tempDir("cloudless-specs-");
    });

    afterEach(async () => {
      const left = await cluster.cliJson<WorkloadJson[]>(["workload", "list", "-n", namespace]);
      for (const workload of left) {
        await cluster.cli(["workload", "delete", workload.name, "-n", namespace]);
      }
      await removeNamespaceContainers(namespace);
    }, 60_000);

    function image(): string {
      if (!podmanService.available) throw new Error("podman unavailable");
      return podmanService.image;
    }

    /** busybox httpd serving /www on 8080, with a second declared port nothing listens on. */
    function httpd(extra: Record<string, unknown>): Record<string, unknown> {
      return {
        image: image(),
        command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
        ports: [
          { name: "http", containerPort: 8080 },
          { name: "closed", containerPort: 8081 },
        ],
        ...extra,
      };
    }

    async function apply(name: string, spec: Record<string, unknown>, file = name) {
      const written = await writeSpec(specDir, file, workloadDoc(name, namespace, spec));
      return cluster.cli(["workload", "apply", "-f", written]);
    }

    it("REQ-032 a failing liveness probe (HTTP 404) restarts the replica: restarts grow and the reason says LivenessProbeFailed", async () => {
      const applied = await apply(
        "live",
        httpd({
          livenessProbe: {
            http: { path: "/no-such-page", port: "http" },
            periodSeconds: 1,
            failureThreshold: 1,
          },
        }),
      );
      expect(applied.code, applied.stderr).toBe(0);
      const first = await waitForWorkload(cluster, namespace, "live", "the replica running", (w) =>
        w.replicas.some((r) => r.phase === "Running"),
      );
      const startedAt = first.replicas[0]?.startedAt;
      const restartsBefore = first.replicas[0]?.restarts ?? 0;
      const restarted = await waitForWorkload(
        cluster,
        namespace,
        "live",
        "a restart after the liveness probe failed",
        (w) => {
          const replica = w.replicas[0];
          return (
            replica !== undefined &&
            replica.restarts > restartsBefore &&
            replica.reason === "LivenessProbeFailed"
          );
        },
        90_000,
      );
      const replica = restarted.replicas[0];
      expect(replica?.id).toBe(first.replicas[0]?.id);
      // Usually "HTTP 404"; a probe racing httpd's start may have seen a refused connection.
      expect(replica?.message).toMatch(/liveness probe failed: \S/);
      expect(replica?.startedAt).not.toBe(startedAt);
      expect(replica?.driver).toBe("container");
    });

    it("REQ-032 a failing readiness probe (tcp, closed port) keeps the replica Running but not ready, and the workload at 0 ready", async () => {
      const applied = await apply(
        "unready",
        httpd({ readinessProbe: { tcp: { port: "closed" }, periodSeconds: 1 } }),
      );
      expect(applied.code, applied.stderr).toBe(0);
      const running = await waitForWorkload(
        cluster,
        namespace,
        "unready",
        "the replica running",
        (w) => w.replicas.some((r) => r.phase === "Running"),
      );
      const id = running.replicas[0]?.id;
      // Sample over several probe periods: always Running, never ready, never restarted.
      const phases = new Set<string>();
      for (let sample = 0; sample < 6; sample++) {
        const workload = await getWorkloadJson(cluster, namespace, "unready");
        const replica = workload.replicas[0];
        expect(replica?.id).toBe(id);
        expect(replica?.ready).toBe(false);
        expect(replica?.restarts).toBe(0);
        phases.add(replica?.phase ?? "");
        expect(workload.status.readyReplicas).toBe(0);
        expect(workload.status.availableReplicas).toBe(0);
      }
      expect([...phases]).toEqual(["Running"]);
      // It serves: only the probe keeps it out of rotation.
      const hostPort = running.replicas[0]?.hostPorts.http as number;
      expect(await httpGet(hostPort)).toBe(200);
    });

    it("REQ-020 REQ-072 applying an unchanged spec is a no-op, changing only replicas scales without a new revision, scale works, and -o json shows status and replicas", async () => {
      const spec = { command: ["/bin/sh", "-c", "exec sleep 600"], replicas: 2 };
      const created = await apply("steady", spec);
      expect(created.code, created.stderr).toBe(0);
      expect(created.stdout.trim()).toBe("workload/steady created");
      const ready = (count: number) => (w: WorkloadJson) =>
        w.replicas.length === count &&
        w.replicas.every((r) => r.ready) &&
        w.status.readyReplicas === count;
      const before = await waitForWorkload(cluster, namespace, "steady", "2 ready", ready(2));

      // REQ-072: the JSON view carries name, namespace, spec, status and every replica.
      expect(before).toMatchObject({
        name: "steady",
        namespace,
        spec: { metadata: { name: "steady", namespace }, spec: { replicas: 2 } },
        status: {
          replicas: 2,
          readyReplicas: 2,
          updatedReplicas: 2,
          phase: "Running",
          revision: "1",
        },
      });
      for (const replica of before.replicas) {
        expect(replica).toMatchObject({
          node,
          phase: "Running",
          ready: true,
          restarts: 0,
          driver: "process",
        });
        expect(replica.id).toMatch(/^steady-[0-9a-f]+$/);
      }
      const ids = before.replicas.map((r) => r.id).sort();
      const started = before.replicas.map((r) => [r.id, r.startedAt]).sort();
      const eventsOf = async (type: string) =>
        (await cluster.events()).filter(
          (e) => e.subject === `workload/${namespace}/steady` && e.type === type,
        );

      // The same spec again, and the same spec written differently (YAML, defaults spelled out).
      const again = await apply("steady", spec);
      expect(again.code, again.stderr).toBe(0);
      expect(again.stdout.trim()).toBe("workload/steady unchanged");
      const yamlFile = path.join(specDir, "steady.yaml");
      await writeFile(
        yamlFile,
        [
          "kind: Workload",
          "apiVersion: cloudless/v1",
          "metadata:",
          `  namespace: ${namespace}`,
          "  name: steady",
          "spec:",
          "  replicas: 2",
          "  restartPolicy: Always",
          "  command: [/bin/sh, -c, exec sleep 600]",
          "  terminationGracePeriodSeconds: 1",
          "  resources: {memoryMiB: 16, cpuMillicores: 50, storageGiB: 0}",
          "",
        ].join("\n"),
      );
      const yamlApply = await cluster.cli(["workload", "apply", "-f", yamlFile]);
      expect(yamlApply.code, yamlApply.stderr).toBe(0);
      expect(yamlApply.stdout.trim()).toBe("workload/steady unchanged");
      const unchanged = await getWorkloadJson(cluster, namespace, "steady");
      expect(unchanged.status.revision).toBe("1");
      expect(unchanged.replicas.map((r) => r.id).sort()).toEqual(ids);
      expect(unchanged.replicas.map((r) => [r.id, r.startedAt]).sort()).toEqual(started);
      expect(unchanged.replicas.every((r) => r.restarts === 0)).toBe(true);
      expect(await eventsOf("WorkloadUpdated")).toEqual([]);

      // Only the replica count changed: "scaled", same revision, the old replicas kept.
      const scaledUp = await apply("steady", { ...spec, replicas: 3 });
      expect(scaledUp.code, scaledUp.stderr).toBe(0);
      expect(scaledUp.stdout.trim()).toBe("workload/steady scaled");
      const three = await waitForWorkload(cluster, namespace, "steady", "3 ready", ready(3));
      expect(three.status.revision).toBe("1");
      expect(three.replicas.map((r) => r.id)).toEqual(expect.arrayContaining(ids));
      expect(three.replicas.every((r) => r.restarts === 0 && r.revision === "1")).toBe(true);
      expect(await eventsOf("WorkloadUpdated")).toEqual([]);
      expect((await eventsOf("WorkloadScaled")).length).toBeGreaterThanOrEqual(1);

      // `workload scale`.
      const scaled = await cluster.cli([
        "workload",
        "scale",
        "steady",
        "-n",
        namespace,
        "--replicas",
        "1",
      ]);
      expect(scaled.code, scaled.stderr).toBe(0);
      expect(scaled.stdout.trim()).toBe("workload/steady scaled to 1");
      const one = await waitForWorkload(cluster, namespace, "steady", "1 replica", ready(1));
      expect(one.status).toMatchObject({ desiredReplicas: 1, revision: "1", phase: "Running" });
      expect(ids.concat(three.replicas.map((r) => r.id))).toContain(one.replicas[0]?.id);
      expect(await eventsOf("WorkloadUpdated")).toEqual([]);
    });

    it("REQ-023 delete during a rollout: the workload is gone and so are all its containers", async () => {
      const spec = (version: string) => ({
        image: image(),
        command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
        env: { VERSION: version },
        ports: [{ name: "http", containerPort: 8080 }],
        replicas: 3,
        readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
      });
      const created = await apply("rolling", spec("v1"));
      expect(created.code, created.stderr).toBe(0);
      await waitForWorkload(
        cluster,
        namespace,
        "rolling",
        "3 ready",
        (w) => w.replicas.length === 3 && w.replicas.every((r) => r.ready),
      );
      const updated = await apply("rolling", spec("v2"));
      expect(updated.code, updated.stderr).toBe(0);
      expect(updated.stdout.trim()).toBe("workload/rolling updated");
      await waitForWorkload(
        cluster,
        namespace,
        "rolling",
        "the rollout under way",
        (w) => w.status.phase === "Progressing" || w.replicas.some((r) => r.revision === "2"),
      );
      const deleted = await cluster.cli(["workload", "delete", "rolling", "-n", namespace]);
      expect(deleted.code, deleted.stderr).toBe(0);
      expect(deleted.stdout.trim()).toBe("workload/rolling deleted");

      const gone = await cluster.cli(["workload", "get", "rolling", "-n", namespace]);
      expect(gone.code).toBe(3);
      expect(gone.stderr.trim()).toMatch(/^error: workload "rolling" not found in namespace/);
      await waitFor(
        "every container of the namespace to be removed",
        async () => {
          const listed = await podman([
            "ps",
            "-a",
            "--filter",
            `label=cloudless.namespace=${namespace}`,
            "--format",
            "{{.Names}}",
          ]);
          return listed.code === 0 && listed.stdout.trim() === "";
        },
        60_000,
        500,
      );
      // Deleting again is a clear "not found", not a crash.
      const again = await cluster.cli(["workload", "delete", "rolling", "-n", namespace]);
      expect(again.code).toBe(3);
      expect(cluster.coordinator.running).toBe(true);
    });

    it("REQ-080 REQ-081 ApplyWorkload over HTTP/JSON with the admin certificate works as over gRPC, reports field errors, and lists workloads with or without their replicas", async () => {
      const admin = await loadClientConfig(cluster.configPath);
      const post = (method: string, body: unknown, withCert = true) =>
        httpsPost({
          host: "127.0.0.1",
          port: cluster.port,
          path: `/${WorkloadService.typeName}/${method}`,
          body: JSON.stringify(body),
          caPem: admin.caPem,
          ...(withCert ? { certPem: admin.certPem, keyPem: admin.keyPem } : {}),
        });
      const doc = workloadDoc("viajson", namespace, {
        command: ["/bin/sh", "-c", "echo over-json; exec sleep 600"],
      });

      const created = await post("ApplyWorkload", { spec: doc });
      expect(created.status, created.body).toBe(200);
      const body = JSON.parse(created.body) as { action: string; workload: WorkloadJson };
      expect(body.action).toBe("created");
      expect(body.workload).toMatchObject({
        name: "viajson",
        namespace,
        spec: { spec: { command: ["/bin/sh", "-c", "echo over-json; exec sleep 600"] } },
      });
      const running = await waitForWorkload(
        cluster,
        namespace,
        "viajson",
        "1 ready",
        (w) => w.replicas.length === 1 && w.replicas.every((r) => r.ready),
      );

      // The same spec through gRPC, and again as JSON: the same workload, unchanged.
      const clients = await adminClients(cluster.configPath);
      const viaGrpc = await clients.workloads.applyWorkload({ spec: doc as never });
      expect(viaGrpc.action).toBe("unchanged");
      const again = await post("ApplyWorkload", { spec: doc });
      expect(again.status, again.body).toBe(200);
      expect((JSON.parse(again.body) as { action: string }).action).toBe("unchanged");
      const got = await post("GetWorkload", { name: "viajson", namespace });
      expect(got.status, got.body).toBe(200);
      const gotWorkload = (JSON.parse(got.body) as { workload: WorkloadJson }).workload;
      expect(gotWorkload.uid).toBe(running.uid);
      expect(gotWorkload.replicas.map((r) => r.id)).toEqual(running.replicas.map((r) => r.id));

      // Bad specs are refused with the field named; nothing is created.
      const invalid = await post("ApplyWorkload", {
        spec: workloadDoc("broken", namespace, {
          command: ["/bin/true"],
          resources: { cpuMillicores: 100, memoryMiB: -5 },
          replica: 2,
        }),
      });
      expect(invalid.status, invalid.body).toBe(400);
      const error = JSON.parse(invalid.body) as { code: string; message: string };
      expect(error.code).toBe("invalid_argument");
      expect(error.message).toContain("spec.resources.memoryMiB: expected a positive integer");
      expect(error.message).toContain('spec: unknown field "replica"; did you mean "replicas"?');
      const list = await cluster.cliJson<WorkloadJson[]>(["workload", "list", "-n", namespace]);
      expect(list.map((w) => w.name)).toEqual(["viajson"]);
      expect(list[0]?.replicas).toHaveLength(1);
      // A BASIC list leaves the replicas out and keeps the status; the table asks for it.
      const basic = await post("ListWorkloads", { namespace, view: "WORKLOAD_VIEW_BASIC" });
      expect(basic.status, basic.body).toBe(200);
      const [summary] = (JSON.parse(basic.body) as { workloads: Partial<WorkloadJson>[] })
        .workloads;
      expect(summary?.name).toBe("viajson");
      expect(summary?.replicas ?? []).toEqual([]);
      expect(summary?.status).toMatchObject({ readyReplicas: 1, desiredReplicas: 1 });
      const table = await cluster.cli(["workload", "list", "-n", namespace]);
      expect(table.code, table.stderr).toBe(0);
      expect(table.stdout).toMatch(/viajson\s+1\/1\s/);

      // No client certificate, no workload API.
      const anonymous = await post("ApplyWorkload", { spec: doc }, false);
      expect(anonymous.status, anonymous.body).toBe(401);
    });
  },
);

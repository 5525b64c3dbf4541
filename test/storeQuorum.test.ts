/**
 * A coordinator whose etcd lost its quorum tells its callers so (issue 13): the store's
 * failure reaches the API edge as Unavailable (gRPC 14) with a one-line message, not as
 * Internal (13), and the CLI exits with the Unavailable code. Once a majority of the
 * members is back, the same calls work again. Real etcd, real coordinator, real CLI.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ListWorkloadsRequestSchema,
  WorkloadService,
} from "../src/api/gen/cloudless/v1/workload_pb.js";
import { type ClientCredentials, loadClientConfig } from "../src/client/config.js";
import { TestCluster } from "./helpers/cluster.js";
import { type EtcdCluster, etcdUnavailableReason, startEtcd } from "./helpers/etcd.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { http2Post } from "./helpers/tlsProbe.js";
import { writeSpec } from "./helpers/workloads.js";

const etcdMissing = await etcdUnavailableReason();
/** The CLI's exit code for Unavailable (src/cli/run.ts). */
const unavailableExitCode = 6;
const storeUnavailable = /the cluster store is unavailable \(etcd: [^)]+\); retry when it is back/;

function grpcFrame(message: Uint8Array): Buffer {
  const envelope = Buffer.alloc(5);
  envelope.writeUInt32BE(message.length, 1);
  return Buffer.concat([envelope, Buffer.from(message)]);
}

function specOf(name: string) {
  return {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name, namespace: "quorum" },
    spec: {
      image: "docker.io/library/busybox:1.36",
      command: ["sleep", "3600"],
      resources: { cpuMillicores: 10, memoryMiB: 16 },
      replicas: 1,
    },
  };
}

describe.skipIf(etcdMissing !== undefined)(
  "a coordinator on etcd without quorum",
  { timeout: 180_000 },
  () => {
    const resources = new TestResources();
    let etcd: EtcdCluster | undefined;
    let cluster: TestCluster;
    let admin: ClientCredentials;
    let specDir: string;

    beforeAll(async () => {
      etcd = await startEtcd({ members: 3 });
      cluster = await TestCluster.start(resources, [
        "--store",
        `etcd://${etcd.endpoints.join(",")}/cloudless-quorum-${process.pid}`,
      ]);
      admin = await loadClientConfig(cluster.configPath);
      specDir = await resources.tempDir("cloudless-quorum-spec-");
    }, 90_000);

    afterAll(async () => {
      await resources.cleanup();
      await etcd?.stop();
    });

    /** ListWorkloads over raw gRPC: the status code and message exactly as sent. */
    async function listOverGrpc(): Promise<{ status: string; message: string }> {
      const answer = await http2Post({
        host: "127.0.0.1",
        port: cluster.port,
        path: `/${WorkloadService.typeName}/${WorkloadService.method.listWorkloads.name}`,
        body: grpcFrame(
          toBinary(ListWorkloadsRequestSchema, create(ListWorkloadsRequestSchema, {})),
        ),
        caPem: admin.caPem,
        certPem: admin.certPem,
        keyPem: admin.keyPem,
        contentType: "application/grpc",
        headers: { te: "trailers" },
      });
      const status = { ...answer.headers, ...answer.trailers };
      return {
        status: String(status["grpc-status"]),
        message: decodeURIComponent(String(status["grpc-message"] ?? "")),
      };
    }

    it("REQ-012 NFR-R1 contract: with two of three etcd members gone, list and apply answer Unavailable (gRPC 14, CLI exit 6) with one line naming the store; with quorum back they work again", async () => {
      if (!etcd) throw new Error("etcd did not start");
      const before = await cluster.cli(["workload", "list", "-o", "json"]);
      expect(before.code, before.stderr).toBe(0);
      expect((await listOverGrpc()).status).toBe("0");

      await etcd.killMember(1);
      await etcd.killMember(2);

      const grpc = await listOverGrpc();
      expect(grpc, JSON.stringify(grpc)).toMatchObject({ status: "14" });
      expect(grpc.message).toMatch(storeUnavailable);
      expect(grpc.message).not.toContain("\n");

      const list = await cluster.cli(["workload", "list"]);
      expect(list.code, list.stderr).toBe(unavailableExitCode);
      expect(list.stderr).toMatch(storeUnavailable);
      // The coordinator runs and said why it could not serve: not "cannot reach".
      expect(list.stderr).not.toMatch(/internal error|cannot reach|is it running|\n\s+at /);
      expect(list.stderr.trim().split("\n")).toHaveLength(1);

      const specFile = await writeSpec(specDir, "during", specOf("during"));
      const apply = await cluster.cli(["workload", "apply", "-f", specFile]);
      expect(apply.code, apply.stderr).toBe(unavailableExitCode);
      expect(apply.stderr).toMatch(storeUnavailable);
      expect(apply.stderr.trim().split("\n")).toHaveLength(1);

      // The operator finds the store's own words in the coordinator's log.
      expect(cluster.coordinator.stderr).toMatch(/store failure answered as Unavailable/);
      expect(cluster.coordinator.stderr).toMatch(/check that a majority of the etcd members/);

      // One member back is a majority again: the same calls succeed, with no restart.
      await etcd.restartMember(1);
      await waitFor(
        "workload list to work again",
        async () => (await cluster.cli(["workload", "list"])).code === 0,
        60_000,
        500,
      );
      const after = await cluster.cli([
        "workload",
        "apply",
        "-f",
        await writeSpec(specDir, "after", specOf("after")),
      ]);
      expect(after.code, after.stderr).toBe(0);
      expect((await listOverGrpc()).status).toBe("0");
      expect(cluster.coordinator.running).toBe(true);
    });
  },
);

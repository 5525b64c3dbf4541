import * as https from "node:https";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { generateKeyAndCsr } from "../src/api/identity.js";
import { loadClientConfig } from "../src/client/config.js";
import { TestCluster } from "./helpers/cluster.js";
import { TestResources } from "./helpers/processes.js";
import { clientsFor, foreignAdminCredentials } from "./helpers/tlsProbe.js";

function get(
  port: number,
  path: string,
  credentials: { caPem: string; certPem?: string; keyPem?: string },
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = https.request(
      {
        host: "127.0.0.1",
        port,
        path,
        method: "GET",
        agent: false,
        ca: credentials.caPem,
        ...(credentials.certPem ? { cert: credentials.certPem, key: credentials.keyPem } : {}),
        checkServerIdentity: () => undefined,
        timeout: 10_000,
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () =>
          resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString() }),
        );
      },
    );
    request.on("timeout", () => request.destroy(new Error("timed out")));
    request.on("error", reject);
    request.end();
  });
}

describe("health endpoints", () => {
  let resources: TestResources;
  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    await resources.cleanup();
  });

  it("NFR-S1 /healthz and /readyz answer only a cluster certificate, and reveal nothing", async () => {
    const cluster = await TestCluster.start(resources);
    const admin = await loadClientConfig(cluster.configPath);
    for (const path of ["/healthz", "/readyz"]) {
      const ok = await get(cluster.port, path, admin);
      expect(ok).toEqual({ status: 200, body: "ok\n" });
      const anonymous = await get(cluster.port, path, { caPem: admin.caPem });
      expect(anonymous.status).toBe(401);
      expect(anonymous.body).not.toContain("ok");
      const foreign = await foreignAdminCredentials(admin.clusterName);
      const stranger = await get(cluster.port, path, {
        caPem: admin.caPem,
        certPem: foreign.certPem,
        keyPem: foreign.keyPem,
      });
      expect(stranger.status).toBe(401);
    }
  });

  it("NFR-S1 hardening: a deleted node's certificate no longer gets an answer from /healthz or /readyz", async () => {
    const cluster = await TestCluster.start(resources);
    const admin = await loadClientConfig(cluster.configPath);
    // Enrolled straight through the API: the certificate is all this test needs.
    const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: "gone" });
    const enrolled = await clientsFor({ url: cluster.url, caPem: admin.caPem }).nodes.enroll({
      token: await cluster.createToken(),
      name: "gone",
      csrPem,
      labels: {},
    });
    const node = { caPem: admin.caPem, certPem: enrolled.certificatePem, keyPem };
    for (const path of ["/healthz", "/readyz"]) {
      expect(await get(cluster.port, path, node)).toEqual({ status: 200, body: "ok\n" });
    }

    const deleted = await cluster.cli(["node", "delete", "gone"]);
    expect(deleted.code, deleted.stderr).toBe(0);
    for (const path of ["/healthz", "/readyz"]) {
      const refused = await get(cluster.port, path, node);
      expect(refused.status, `${path}: ${refused.body}`).toBe(401);
      expect(refused.body).toMatch(/no longer belongs to a member/);
      // The admin certificate still gets its answer.
      expect(await get(cluster.port, path, admin)).toEqual({ status: 200, body: "ok\n" });
    }
  });
});

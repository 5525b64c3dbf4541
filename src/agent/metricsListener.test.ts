import * as https from "node:https";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { type Credentials, clusterCredentials } from "../../test/helpers/certificates.js";
import { silentLogger } from "../observe/logger.js";
import { createAgentMetrics } from "../observe/metrics.js";
import { type MetricsListener, startMetricsListener } from "./metricsListener.js";

/** GET over HTTPS, verifying the server as "n1"; an error string when the exchange fails. */
function get(
  port: number,
  path: string,
  trust: string,
  client?: Credentials,
  method = "GET",
): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const request = https.request(
      {
        host: "127.0.0.1",
        port,
        path,
        method,
        servername: "n1",
        ca: trust,
        ...(client ? { cert: client.certPem, key: client.keyPem } : {}),
        agent: false,
      },
      (response) => {
        let body = "";
        response.on("data", (chunk: Buffer) => {
          body += chunk.toString();
        });
        response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
        response.on("error", (error) => resolve({ error: error.message }));
      },
    );
    request.on("error", (error) => resolve({ error: error.message }));
    request.end();
  });
}

describe("agent metrics listener", () => {
  let cluster: Awaited<ReturnType<typeof clusterCredentials>>;
  let foreign: Awaited<ReturnType<typeof clusterCredentials>>;
  let listener: MetricsListener | undefined;

  beforeAll(async () => {
    cluster = await clusterCredentials("test");
    // Same cluster name and identities, another trust root.
    foreign = await clusterCredentials("test");
  });
  afterEach(async () => {
    await listener?.close();
    listener = undefined;
  });

  async function start(clusterName = "test") {
    const metrics = createAgentMetrics({ defaultMetrics: false });
    metrics.heartbeatsSent.inc(7);
    listener = await startMetricsListener({
      host: "127.0.0.1",
      port: 0,
      clusterName,
      registry: metrics.registry,
      logger: silentLogger,
      ...cluster.node,
    });
    return listener;
  }

  it("REQ-070 NFR-S1 serves /metrics to a cluster certificate, with the node certificate as server certificate", async () => {
    const { port, url } = await start();
    expect(url).toBe(`https://127.0.0.1:${port}/metrics`);
    const answer = await get(port, "/metrics", cluster.caPem, cluster.admin);
    expect(answer).toMatchObject({ status: 200 });
    expect("body" in answer && answer.body).toContain("cloudless_agent_heartbeats_sent_total 7");
    // Another node's certificate works too: any cluster identity may scrape.
    expect(await get(port, "/metrics", cluster.caPem, cluster.node)).toMatchObject({
      status: 200,
    });
    // Nothing else is served.
    expect(await get(port, "/", cluster.caPem, cluster.admin)).toMatchObject({ status: 404 });
    expect(await get(port, "/metrics", cluster.caPem, cluster.admin, "POST")).toMatchObject({
      status: 405,
    });
  });

  it("NFR-S1 without a client certificate, or with one from another CA, the TLS handshake fails", async () => {
    const { port } = await start();
    const anonymous = await get(port, "/metrics", cluster.caPem);
    expect(anonymous).toHaveProperty("error");
    const outsider = await get(port, "/metrics", cluster.caPem, foreign.admin);
    expect(outsider).toHaveProperty("error");
  });

  it("NFR-S1 a certificate without an identity of this cluster is refused", async () => {
    const { port } = await start("another-cluster");
    expect(await get(port, "/metrics", cluster.caPem, cluster.admin)).toMatchObject({
      status: 403,
    });
  });

  it("REQ-070 a renewed node certificate is presented from then on", async () => {
    const { port } = await start();
    const renewed = await clusterCredentials("test");
    listener?.updateCredentials(renewed.node);
    // The client trusting only the new CA now accepts the server (and vice versa).
    expect(await get(port, "/metrics", renewed.caPem, renewed.admin)).toMatchObject({
      status: 200,
    });
    expect(await get(port, "/metrics", cluster.caPem, cluster.admin)).toHaveProperty("error");
  });

  it("REQ-070 a port in use is a clear error", async () => {
    const { port } = await start();
    await expect(
      startMetricsListener({
        host: "127.0.0.1",
        port,
        clusterName: "test",
        registry: createAgentMetrics({ defaultMetrics: false }).registry,
        logger: silentLogger,
        ...cluster.node,
      }),
    ).rejects.toThrow(/already in use/);
  });
});

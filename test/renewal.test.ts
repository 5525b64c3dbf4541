import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { nodeJson } from "../src/cli/commands/nodeCommands.js";
import { loadClientConfig } from "../src/client/config.js";
import { createClients, createCoordinatorTransport } from "../src/client/transport.js";
import { type NodeJson, TestCluster } from "./helpers/cluster.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { certificateValidity } from "./helpers/system.js";

const nodeName = "rotating";
const certTtl = "6s";

describe("node certificate rotation", () => {
  let resources: TestResources;

  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    await resources.cleanup();
  });

  it("REQ-060 the agent renews its node certificate before it expires, without a restart and without leaving Ready", async () => {
    const cluster = await TestCluster.start(resources, ["--node-cert-ttl", certTtl]);
    const agentDir = await cluster.agentDir(nodeName);
    const agent = await cluster.startAgent(nodeName, { token: await cluster.createToken() });
    const agentPid = agent.pid;
    const first = await cluster.waitForStatus(nodeName, "Ready", 40_000);
    const firstCert = await certificateValidity(path.join(agentDir, "node.crt"));
    const caPem = await readFile(path.join(agentDir, "ca.crt"), "utf8");

    // Sample the node every ~200 ms for the whole wait, through the same GetNode call
    // `cloudless node get` makes (in-process: spawning the CLI takes longer than 200 ms).
    const credentials = await loadClientConfig(cluster.configPath);
    const clients = createClients(
      createCoordinatorTransport({ baseUrl: cluster.url, ...credentials }),
    );
    const samples: { status: string; certExpiresAt: string }[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const started = Date.now();
        const { node } = await clients.nodes.getNode({ name: nodeName });
        const json = nodeJson(node as NonNullable<typeof node>) as NodeJson;
        samples.push({ status: json.status, certExpiresAt: json.certExpiresAt });
        const spent = Date.now() - started;
        if (spent < 200) await new Promise((resolve) => setTimeout(resolve, 200 - spent));
      }
    })();

    const expiries = new Set<string>([first.certExpiresAt]);
    const cliExpiry = async () =>
      (await cluster.cliJson<NodeJson>(["node", "get", nodeName])).certExpiresAt;
    try {
      // Two renewals at 2/3 of a 6 s lifetime take about 8 s.
      await waitFor(
        "the node certificate to be renewed twice",
        () => {
          if (!agent.running) throw new Error(`agent exited: ${agent.stderr}`);
          for (const sample of samples) expiries.add(sample.certExpiresAt);
          return expiries.size >= 3;
        },
        30_000,
        100,
      );
    } finally {
      sampling = false;
      await sampler;
    }

    // `cloudless node get` shows the latest expiry too.
    const lastSampled = samples.at(-1)?.certExpiresAt as string;
    expect(Date.parse(await cliExpiry())).toBeGreaterThanOrEqual(Date.parse(lastSampled));
    expect(await cliExpiry()).not.toBe(first.certExpiresAt);

    // The same agent process the whole time, and it is still running.
    expect(agent.running).toBe(true);
    expect(agent.pid).toBe(agentPid);
    expect(agent.stderr).not.toMatch(/"level":(40|50|60)/);
    // Each renewal happened while the certificate it replaced was still valid (the agent
    // renews at 2/3 of the lifetime), so there was never a moment without a usable one.
    const renewals = agent.stderr
      .split("\n")
      .filter((line) => line.includes('"certificate renewed"'))
      .map((line) => JSON.parse(line) as { time: string; notAfter: string });
    expect(renewals.length).toBeGreaterThanOrEqual(2);
    let previousNotAfterMs = firstCert.notAfterMs;
    for (const renewal of renewals) {
      expect(Date.parse(renewal.time)).toBeLessThan(previousNotAfterMs);
      previousNotAfterMs = Date.parse(renewal.notAfter);
    }

    // Every sample saw the node Ready; the expiry only moved forward.
    expect(samples.length).toBeGreaterThanOrEqual(10);
    expect(samples.filter((s) => s.status !== "Ready")).toEqual([]);
    const expiryTimes = samples.map((s) => Date.parse(s.certExpiresAt));
    for (let i = 1; i < expiryTimes.length; i++) {
      expect(expiryTimes[i]).toBeGreaterThanOrEqual(expiryTimes[i - 1] as number);
    }

    // No membership trouble was recorded for the node.
    const events = (await cluster.events()).filter((e) => e.subject === `node/${nodeName}`);
    const types = events.map((e) => e.type);
    expect(types).not.toContain("NodeNotReady");
    expect(types).not.toContain("NodeLost");
    expect(types).not.toContain("NodeLeft");
    expect(types.filter((t) => t === "NodeJoined")).toHaveLength(1);
    expect(types.filter((t) => t === "EnrollmentAccepted")).toHaveLength(1);

    // The certificate on disk was replaced, is valid now, and chains to the cluster CA.
    const current = await certificateValidity(path.join(agentDir, "node.crt"));
    expect(current.serial).not.toBe(firstCert.serial);
    expect(current.notAfterMs).toBeGreaterThan(firstCert.notAfterMs);
    const now = Date.now();
    expect(current.notBeforeMs).toBeLessThanOrEqual(now);
    expect(current.notAfterMs).toBeGreaterThan(now);
    const certificate = new X509Certificate(current.pem);
    expect(certificate.verify(new X509Certificate(caPem).publicKey)).toBe(true);
    expect(certificate.subjectAltName).toContain(`/node/${nodeName}`);
    // The private key on disk belongs to the certificate on disk. Renewals go on meanwhile
    // and write the key, then the certificate, so a read can straddle one; a pair that does
    // is read again (a key that never matched would time out here).
    await waitFor(
      "the certificate and key on disk to be one pair",
      async () => {
        const certPem = await readFile(path.join(agentDir, "node.crt"), "utf8");
        const keyPem = await readFile(path.join(agentDir, "node.key"), "utf8");
        return new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem)) || undefined;
      },
      10_000,
      50,
    );

    // The node is still Ready and the CLI still works with it after the renewals.
    expect((await cluster.node(nodeName))?.status).toBe("Ready");
  });
});

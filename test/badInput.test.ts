import { randomBytes } from "node:crypto";
import { readdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { NodeService } from "../src/api/gen/cloudless/v1/node_pb.js";
import { generateKeyAndCsr } from "../src/api/identity.js";
import { type ClientCredentials, loadClientConfig } from "../src/client/config.js";
import { readMaxBytes } from "../src/control/api/server.js";
import { TestCluster } from "./helpers/cluster.js";
import { runCli, TestResources, waitFor } from "./helpers/processes.js";
import {
  captureClientHello,
  clientsFor,
  hasStackTrace,
  http2Post,
  httpsPost,
  humanLines,
  rawExchange,
  rpcError,
} from "./helpers/tlsProbe.js";

const enrollPath = `/${NodeService.typeName}/${NodeService.method.enroll.name}`;
const listNodesPath = `/${NodeService.typeName}/${NodeService.method.listNodes.name}`;
const fastAgent = ["--egress-mbps", "100"];

describe("bad input with real processes and real TLS", () => {
  let resources: TestResources;

  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    await resources.cleanup();
  });

  function adminClients(cluster: TestCluster, admin: ClientCredentials) {
    return clientsFor({
      url: cluster.url,
      caPem: admin.caPem,
      clusterName: admin.clusterName,
      certPem: admin.certPem,
      keyPem: admin.keyPem,
    });
  }

  /** The coordinator is alive and still answers an authenticated request. */
  async function expectStillServing(cluster: TestCluster, admin: ClientCredentials) {
    expect(cluster.coordinator.running, cluster.coordinator.stderr).toBe(true);
    const response = await adminClients(cluster, admin).nodes.listNodes({});
    expect(Array.isArray(response.nodes)).toBe(true);
  }

  it("REQ-072 unknown node names: get, cordon, uncordon, drain and delete fail in one line naming the node", async () => {
    const cluster = await TestCluster.start(resources);
    const verbs = ["get", "cordon", "uncordon", "drain", "delete"];
    const results = await Promise.all(verbs.map((verb) => cluster.cli(["node", verb, "nope"])));
    for (const [index, result] of results.entries()) {
      const verb = verbs[index];
      expect(result.code, `node ${verb} nope: ${result.stderr}`).not.toBe(0);
      expect(result.code).toBe(3);
      const lines = result.stderr.split("\n").filter((line) => line.length > 0);
      expect(lines, `node ${verb} nope`).toHaveLength(1);
      expect(lines[0]).toMatch(/^error: node "nope" not found/);
      expect(hasStackTrace(result.stderr + result.stdout)).toBe(false);
      expect(result.stdout).toBe("");
    }
    const json = await cluster.cli(["node", "get", "nope", "-o", "json"]);
    expect(json.code).toBe(3);
    expect(json.stdout).toBe("");
    expect(json.stderr.trim()).toMatch(/^error: node "nope" not found[^\n]*$/);
  });

  it("REQ-001 NFR-S1 oversized and malformed requests are refused with a clear error and the coordinator keeps serving", async () => {
    const cluster = await TestCluster.start(resources);
    const admin = await loadClientConfig(cluster.configPath);
    const anonymous = clientsFor({ url: cluster.url, caPem: admin.caPem });

    // An Enroll (the one method open without a certificate) larger than the 4 MiB limit.
    const token = await cluster.createToken();
    const huge = "x".repeat(readMaxBytes + 1024);
    const oversized = await rpcError(
      anonymous.nodes.enroll({ token, name: "huge", csrPem: huge, labels: {} }),
    );
    expect(oversized.codeName, oversized.message).toBe("ResourceExhausted");
    expect(oversized.message).toMatch(/larger than configured readMaxBytes 4194304/);
    await expectStillServing(cluster, admin);
    const post = (path: string, body: string) => ({
      host: "127.0.0.1",
      port: cluster.port,
      path,
      body,
      caPem: admin.caPem,
    });
    const hugeEnroll = JSON.stringify({ token, name: "huge", csrPem: huge });
    const oversizedJson = await http2Post(post(enrollPath, hugeEnroll));
    expect(oversizedJson.status, oversizedJson.body).toBe(429);
    expect(JSON.parse(oversizedJson.body)).toMatchObject({
      code: "resource_exhausted",
      message: expect.stringMatching(/larger than configured readMaxBytes/),
    });
    await expectStillServing(cluster, admin);
    // Over HTTP/1.1 the server may hang up before the client has sent everything; what
    // does arrive is the same refusal.
    const oversizedJsonH1 = await httpsPost(post(enrollPath, hugeEnroll));
    if (oversizedJsonH1.status !== 0) expect(oversizedJsonH1.status).toBe(429);
    else expect(oversizedJsonH1.error).toMatch(/EPIPE|ECONNRESET|socket hang up/);
    await expectStillServing(cluster, admin);

    // Any other method, oversized and without a certificate, is refused before its body
    // is read: Unauthenticated, not a size or parse error.
    const oversizedAnonymous = await rpcError(
      anonymous.nodes.listNodes({ labelSelector: { big: huge } }),
    );
    expect(oversizedAnonymous.codeName, oversizedAnonymous.message).toBe("Unauthenticated");
    const hugeList = JSON.stringify({ labelSelector: { big: huge } });
    const oversizedAnonymousJson = await http2Post(post(listNodesPath, hugeList));
    expect(oversizedAnonymousJson.status, oversizedAnonymousJson.body).toBe(401);
    const oversizedAnonymousH1 = await httpsPost(post(listNodesPath, hugeList));
    if (oversizedAnonymousH1.status !== 0) expect(oversizedAnonymousH1.status).toBe(401);
    else expect(oversizedAnonymousH1.error).toMatch(/EPIPE|ECONNRESET|socket hang up/);
    await expectStillServing(cluster, admin);
    // With a valid admin certificate the size limit applies to every method.
    const oversizedAdmin = await rpcError(
      adminClients(cluster, admin).nodes.listNodes({ labelSelector: { big: huge } }),
    );
    expect(oversizedAdmin.codeName, oversizedAdmin.message).toBe("ResourceExhausted");
    await expectStillServing(cluster, admin);

    // Invalid JSON with a valid admin certificate: a 400-class answer with a message.
    const invalidJson = await httpsPost({
      host: "127.0.0.1",
      port: cluster.port,
      path: listNodesPath,
      body: '{"labelSelector": ',
      caPem: admin.caPem,
      certPem: admin.certPem,
      keyPem: admin.keyPem,
    });
    expect(invalidJson.status, invalidJson.body).toBe(400);
    expect(JSON.parse(invalidJson.body)).toMatchObject({
      code: "invalid_argument",
      message: expect.stringMatching(
        /cannot decode message cloudless\.v1\.ListNodesRequest from JSON/,
      ),
    });
    // Valid JSON of the wrong shape is refused the same way.
    const wrongShape = await httpsPost({
      host: "127.0.0.1",
      port: cluster.port,
      path: listNodesPath,
      body: '{"labelSelector": 42}',
      caPem: admin.caPem,
      certPem: admin.certPem,
      keyPem: admin.keyPem,
    });
    expect(wrongShape.status, wrongShape.body).toBe(400);
    expect(JSON.parse(wrongShape.body)).toMatchObject({ code: "invalid_argument" });

    // A CSR that is not a CSR: InvalidArgument, and the token is not consumed.
    const notCsr = await rpcError(
      anonymous.nodes.enroll({ token, name: "bad-csr", csrPem: "not a csr", labels: {} }),
    );
    expect(notCsr.codeName, notCsr.message).toBe("InvalidArgument");
    expect(notCsr.message).toMatch(/certificate signing request/);
    const pemButGarbage = await rpcError(
      anonymous.nodes.enroll({
        token,
        name: "bad-csr",
        csrPem: `-----BEGIN CERTIFICATE REQUEST-----\n${randomBytes(300).toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`,
        labels: {},
      }),
    );
    expect(pemButGarbage.codeName, pemButGarbage.message).toBe("InvalidArgument");
    const asAdmin = adminClients(cluster, admin);
    expect((await asAdmin.nodes.listNodes({})).nodes).toEqual([]);
    const tokens = (await asAdmin.tokens.listTokens({})).tokens;
    expect(tokens).toHaveLength(1);
    expect(tokens[0]?.usedAt).toBeUndefined();
    const { csrPem } = await generateKeyAndCsr({ commonName: "good-csr" });
    const enrolled = await anonymous.nodes.enroll({ token, name: "good-csr", csrPem, labels: {} });
    expect(enrolled.nodeName).toBe("good-csr");
    await expectStillServing(cluster, admin);
  });

  it("NFR-S1 garbage bytes, a truncated TLS ClientHello and plain HTTP on the TLS port end the connection; the coordinator keeps serving", async () => {
    const cluster = await TestCluster.start(resources);
    const admin = await loadClientConfig(cluster.configPath);
    const hello = await captureClientHello();
    expect(hello[0]).toBe(0x16);

    const garbage = randomBytes(4096);
    garbage[0] = 0x42; // not a TLS record: the plain-text path
    const garbageAsTls = randomBytes(4096);
    // Claims to be one complete TLS handshake record (type, version, length), is not.
    garbageAsTls[0] = 0x16;
    garbageAsTls.writeUInt16BE(0x0301, 1);
    garbageAsTls.writeUInt16BE(garbageAsTls.length - 5, 3);
    const cases: Record<string, { bytes: Buffer | string; end: boolean }> = {
      "random bytes": { bytes: garbage, end: false },
      "random bytes after a TLS record type": { bytes: garbageAsTls, end: false },
      "a truncated ClientHello": {
        bytes: hello.subarray(0, Math.floor(hello.length / 2)),
        end: true,
      },
      "a ClientHello header alone": { bytes: hello.subarray(0, 5), end: true },
      "an HTTP/1.1 request": {
        bytes: `GET / HTTP/1.1\r\nhost: 127.0.0.1:${cluster.port}\r\n\r\n`,
        end: false,
      },
      "an HTTP/2 cleartext preface": { bytes: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", end: false },
    };
    for (const [name, { bytes, end }] of Object.entries(cases)) {
      const exchange = await rawExchange("127.0.0.1", cluster.port, bytes, {
        end,
        timeoutMs: 15_000,
      });
      const text = exchange.received.toString("latin1");
      expect(exchange.closedByServer, `${name}: the server should end the connection`).toBe(true);
      expect(text, name).not.toMatch(/^HTTP\/\d(\.\d)? 2\d\d/);
      if (typeof bytes === "string" || bytes[0] !== 0x16) {
        expect(text, name).toMatch(/^HTTP\/1\.1 400 [^\n]*\r\n[\s\S]*TLS only/);
      }
      await expectStillServing(cluster, admin);
    }
  });

  it("REQ-012 a corrupt store.db stops the coordinator with one clear line and is left byte-for-byte unchanged", async () => {
    const dir = await resources.tempDir("cloudless-corrupt-store-");
    const garbage = randomBytes(64 * 1024);
    await writeFile(path.join(dir, "store.db"), garbage, { mode: 0o600 });
    const result = await runCli(
      ["coordinator", "--data-dir", dir, "--host", "127.0.0.1", "--port", "0"],
      { timeoutMs: 20_000 },
    );
    expect(result.code, result.stderr).not.toBe(0);
    expect(humanLines(result.stderr), result.stderr).toHaveLength(1);
    expect(humanLines(result.stderr)[0]).toMatch(/^error: .*store\.db.*corrupt/);
    expect(hasStackTrace(result.stderr)).toBe(false);
    expect((await readFile(path.join(dir, "store.db"))).equals(garbage)).toBe(true);
    expect(await readdir(dir)).toEqual(["store.db"]);
  });

  it("NFR-R1 REQ-012 a bad --store, an unreachable etcd and a too-short --leader-lease stop the coordinator with one clear line and create nothing", async () => {
    const cases: { args: string[]; message: RegExp }[] = [
      {
        args: ["--store", "postgres://db:5432"],
        message:
          /^error: --store "postgres:\/\/db:5432" is not a store; use "sqlite" or "etcd:\/\//,
      },
      { args: ["--store", "etcd://"], message: /^error: .*etcd/ },
      { args: ["--store", "etcd://127.0.0.1:1"], message: /^error: .*127\.0\.0\.1:1/ },
      {
        args: ["--leader-lease", "10ms"],
        message: /^error: --leader-lease 10ms: must be at least 1s/,
      },
    ];
    for (const { args, message } of cases) {
      const dir = await resources.tempDir("cloudless-bad-store-");
      const result = await runCli(
        ["coordinator", "--data-dir", dir, "--host", "127.0.0.1", "--port", "0", ...args],
        { timeoutMs: 30_000 },
      );
      expect(result.code, result.stderr).not.toBe(0);
      expect(humanLines(result.stderr), result.stderr).toHaveLength(1);
      expect(humanLines(result.stderr)[0], args.join(" ")).toMatch(message);
      expect(hasStackTrace(result.stderr)).toBe(false);
      // Nothing was created: no CA, no secret, no store.
      expect((await readdir(dir)).filter((name) => name !== "coordinator.lock")).toEqual([]);
    }
  });

  it("REQ-031 bad restart graces (--restart-grace, --on-stop, --max-restart-grace) stop the agent or coordinator with one clear line and create nothing", async () => {
    const cases: { args: string[]; message: RegExp }[] = [
      {
        args: ["agent", "--join", "https://127.0.0.1:1", "--restart-grace", "0s"],
        message: /^error: --restart-grace 0s: expected a duration such as 500ms, 10s or 24h/,
      },
      {
        args: ["agent", "--join", "https://127.0.0.1:1", "--restart-grace", "3d"],
        message: /^error: --restart-grace 3d: at most 24h/,
      },
      {
        args: ["agent", "--join", "https://127.0.0.1:1", "--on-stop", "pause"],
        message: /^error: --on-stop pause: expected leave or restart/,
      },
      {
        args: ["coordinator", "--host", "127.0.0.1", "--port", "0", "--max-restart-grace", "25h"],
        message: /^error: --max-restart-grace 25h: at most 24h/,
      },
      {
        args: ["coordinator", "--host", "127.0.0.1", "--port", "0", "--max-restart-grace", "soon"],
        message: /^error: --max-restart-grace soon: expected a duration/,
      },
    ];
    for (const { args, message } of cases) {
      const dir = await resources.tempDir("cloudless-bad-grace-");
      const result = await runCli([...args, "--data-dir", dir], { timeoutMs: 30_000 });
      expect(result.code, result.stderr).not.toBe(0);
      expect(humanLines(result.stderr), result.stderr).toHaveLength(1);
      expect(humanLines(result.stderr)[0], args.join(" ")).toMatch(message);
      expect(hasStackTrace(result.stderr)).toBe(false);
      expect(await readdir(dir), args.join(" ")).toEqual([]);
    }
  });

  it("REQ-012 a locked data dir and a truncated pki/ca.key stop a coordinator with one clear line; no second CA is created", async () => {
    const cluster = await TestCluster.start(resources);
    const admin = await loadClientConfig(cluster.configPath);

    // A second coordinator on the same data dir (another port) is refused.
    const adminConfBefore = await readFile(cluster.configPath);
    const second = await runCli(
      ["coordinator", "--data-dir", cluster.dataDir, "--host", "127.0.0.1", "--port", "0"],
      { timeoutMs: 20_000 },
    );
    expect(second.code, second.stderr).not.toBe(0);
    expect(humanLines(second.stderr), second.stderr).toHaveLength(1);
    expect(humanLines(second.stderr)[0]).toMatch(/^error: .*(locked|in use)/);
    expect(hasStackTrace(second.stderr)).toBe(false);
    expect((await readFile(cluster.configPath)).equals(adminConfBefore)).toBe(true);
    await expectStillServing(cluster, admin);

    // Stop it and truncate the CA key.
    expect(await cluster.coordinator.stop()).toBe(0);
    const pki = path.join(cluster.dataDir, "pki");
    const keyPath = path.join(pki, "ca.key");
    const goodKey = await readFile(keyPath);
    const truncated = goodKey.subarray(0, Math.floor(goodKey.length / 2));
    await writeFile(keyPath, truncated);
    const before = await snapshot(cluster.dataDir, ["pki/ca.crt", "pki/ca.key", "admin.conf"]);
    const listing = (await readdir(pki)).sort();

    const broken = await runCli(
      ["coordinator", "--data-dir", cluster.dataDir, "--host", "127.0.0.1", "--port", "0"],
      { timeoutMs: 20_000 },
    );
    expect(broken.code, broken.stderr).not.toBe(0);
    expect(humanLines(broken.stderr), broken.stderr).toHaveLength(1);
    expect(humanLines(broken.stderr)[0]).toMatch(/^error: .*ca\.key.*not a valid/);
    expect(hasStackTrace(broken.stderr)).toBe(false);
    expect(await snapshot(cluster.dataDir, ["pki/ca.crt", "pki/ca.key", "admin.conf"])).toEqual(
      before,
    );
    expect((await readdir(pki)).sort()).toEqual(listing);

    // With the key restored the same data dir starts again: the refusal was about the key.
    await writeFile(keyPath, goodKey);
    await cluster.startCoordinator();
    await expectStillServing(cluster, admin);
  });

  it("REQ-012 a data dir whose pki/ was removed is refused instead of getting a new CA", async () => {
    const cluster = await TestCluster.start(resources);
    expect(await cluster.coordinator.stop()).toBe(0);
    const pki = path.join(cluster.dataDir, "pki");
    const kept = await resources.tempDir("cloudless-pki-backup-");
    await rename(pki, path.join(kept, "pki"));
    const adminBefore = await readFile(path.join(cluster.dataDir, "admin.conf"));

    const result = await runCli(
      ["coordinator", "--data-dir", cluster.dataDir, "--host", "127.0.0.1", "--port", "0"],
      { timeoutMs: 20_000 },
    );
    expect(result.code, result.stderr).not.toBe(0);
    expect(humanLines(result.stderr), result.stderr).toHaveLength(1);
    expect(humanLines(result.stderr)[0]).toMatch(
      /^error: .*pki\/ca\.crt and pki\/ca\.key are missing/,
    );
    expect(hasStackTrace(result.stderr)).toBe(false);
    await expect(stat(pki)).rejects.toThrow(/ENOENT/);
    expect((await readFile(path.join(cluster.dataDir, "admin.conf"))).equals(adminBefore)).toBe(
      true,
    );

    // Restoring pki/ from the "backup" brings the same cluster back.
    await rename(path.join(kept, "pki"), pki);
    await cluster.startCoordinator();
    await expectStillServing(cluster, await loadClientConfig(cluster.configPath));
  });

  it("REQ-001 a second agent on the same data dir and a corrupt agent identity stop the agent with one clear line", async () => {
    const cluster = await TestCluster.start(resources);
    const dir = await cluster.agentDir("solo");
    const agent = await cluster.startAgent("solo", {
      token: await cluster.createToken(),
      extra: fastAgent,
    });
    await cluster.waitForStatus("solo", "Ready");

    const second = await runCli(
      ["agent", "--join", cluster.url, "--name", "solo", "--data-dir", dir, ...fastAgent],
      { timeoutMs: 20_000 },
    );
    expect(second.code, second.stderr).not.toBe(0);
    expect(humanLines(second.stderr), second.stderr).toHaveLength(1);
    expect(humanLines(second.stderr)[0]).toMatch(/^error: .*in use by process/);
    expect(hasStackTrace(second.stderr)).toBe(false);
    expect(agent.running).toBe(true);
    expect((await cluster.node("solo"))?.status).toBe("Ready");

    // Stop it, then corrupt its certificate.
    agent.kill("SIGTERM");
    expect(await agent.exited()).toBe(0);
    const garbage = randomBytes(512);
    await writeFile(path.join(dir, "node.crt"), garbage);
    const corrupt = await runCli(
      ["agent", "--join", cluster.url, "--name", "solo", "--data-dir", dir, ...fastAgent],
      { timeoutMs: 20_000 },
    );
    expect(corrupt.code, corrupt.stderr).not.toBe(0);
    expect(humanLines(corrupt.stderr), corrupt.stderr).toHaveLength(1);
    expect(humanLines(corrupt.stderr)[0]).toMatch(/^error: agent identity in .* is corrupt/);
    expect(hasStackTrace(corrupt.stderr)).toBe(false);
    expect((await readFile(path.join(dir, "node.crt"))).equals(garbage)).toBe(true);
    await waitFor(
      "the node to stay Left",
      async () => (await cluster.node("solo"))?.status === "Left",
    );
  });
});

async function snapshot(dir: string, files: string[]): Promise<Record<string, string>> {
  const entries = await Promise.all(
    files.map(async (file) => [file, (await readFile(path.join(dir, file))).toString("base64")]),
  );
  return Object.fromEntries(entries);
}

import { X509Certificate } from "node:crypto";
import { chmod, mkdir, readdir, readFile, stat } from "node:fs/promises";
import { type AddressInfo, createServer, type Server } from "node:net";
import * as path from "node:path";
import * as tls from "node:tls";
import { create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { HeartbeatRequestSchema, NodeService } from "../src/api/gen/cloudless/v1/node_pb.js";
import { generateKeyAndCsr, spiffeUri } from "../src/api/identity.js";
import { parseToken } from "../src/api/token.js";
import { type ClientCredentials, loadClientConfig } from "../src/client/config.js";
import type { CoordinatorClients } from "../src/client/transport.js";
import { CertificateAuthority } from "../src/control/security/pki.js";
import { generateToken } from "../src/control/security/tokens.js";
import { TestCluster } from "./helpers/cluster.js";
import { type ManagedProcess, runCli, TestResources, waitFor } from "./helpers/processes.js";
import {
  clientsFor,
  clientsOverProtocol,
  dialHost,
  foreignAdminCredentials,
  hasStackTrace,
  httpsPost,
  humanLines,
  type ListeningSocket,
  listeningSockets,
  rawExchange,
  rpcError,
} from "./helpers/tlsProbe.js";

const listNodesPath = `/${NodeService.typeName}/${NodeService.method.listNodes.name}`;
/** Agents skip the egress measurement in these tests; it is not what they are about. */
const fastAgent = ["--egress-mbps", "100"];

describe("security with real processes and real TLS", () => {
  let resources: TestResources;

  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    await resources.cleanup();
  });

  async function adminOf(cluster: TestCluster): Promise<ClientCredentials> {
    return loadClientConfig(cluster.configPath);
  }

  it("NFR-S1 REQ-060 no listening port of the coordinator or agent answers without a valid client certificate", async () => {
    const cluster = await TestCluster.start(resources);
    const agent = await cluster.startAgent("probe-a", {
      token: await cluster.createToken(),
      extra: fastAgent,
    });
    const admin = await adminOf(cluster);
    await waitForNodeStatus(adminClients(cluster, admin), "probe-a", "Ready");
    const foreign = await foreignAdminCredentials(admin.clusterName);
    const clusterCa = await CertificateAuthority.load(
      await readFile(path.join(cluster.dataDir, "pki", "ca.crt"), "utf8"),
      await readFile(path.join(cluster.dataDir, "pki", "ca.key"), "utf8"),
    );
    const expired = await clusterCa.issueKeyPair({
      subjectName: "admin",
      spiffeUri: spiffeUri(admin.clusterName, "admin", "admin"),
      ttlMs: 60_000,
      nowMs: Date.now() - 3600_000,
      usage: "client",
    });
    const unenrolled = await clusterCa.issueKeyPair({
      subjectName: "ghost",
      spiffeUri: spiffeUri(admin.clusterName, "node", "ghost"),
      ttlMs: 3600_000,
      nowMs: Date.now(),
      usage: "client",
    });

    // The enumeration itself finds IPv4 and IPv6 listeners (checked on this process).
    const own = await listenOn(["127.0.0.1", "::1"]);
    try {
      const found = await listeningSockets(process.pid);
      for (const server of own.servers) {
        const { address, port } = server.address() as AddressInfo;
        expect(
          found.some((s) => s.port === port && dialHost(s) === address),
          `${address}:${port} in ${JSON.stringify(found)}`,
        ).toBe(true);
      }
    } finally {
      own.close();
    }

    const coordinatorSockets = await listeningSockets(cluster.coordinator.pid);
    const agentSockets = await listeningSockets(agent.pid);
    console.log(
      `listening sockets: coordinator pid ${cluster.coordinator.pid}: ${JSON.stringify(coordinatorSockets)}; agent pid ${agent.pid}: ${JSON.stringify(agentSockets)}`,
    );
    // The enumeration works: it finds the API port the coordinator reported.
    expect(coordinatorSockets.length).toBeGreaterThanOrEqual(1);
    expect(coordinatorSockets.map((s) => s.port)).toContain(cluster.port);

    const probe = async (owner: string, socket: ListeningSocket) => {
      const host = dialHost(socket);
      const where = `${owner} ${host}:${socket.port}`;
      const hostForUrl = host.includes(":") ? `[${host}]` : host;
      const url = `https://${hostForUrl}:${socket.port}`;

      // (a) Plain HTTP/1.1: no 2xx, no API data.
      const plain = await rawExchange(
        host,
        socket.port,
        `POST ${listNodesPath} HTTP/1.1\r\nhost: ${hostForUrl}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}`,
      );
      const plainText = plain.received.toString("latin1");
      expect(plainText, where).not.toMatch(/^HTTP\/1\.[01] 2\d\d/);
      expect(plainText, where).not.toContain("probe-a");

      // (b) TLS without a client certificate, in every protocol the port speaks.
      const anonymous = clientsFor({ url, caPem: admin.caPem });
      const anonymousCalls: Record<string, (clients: CoordinatorClients) => Promise<unknown>> = {
        ListNodes: (clients) => clients.nodes.listNodes({}),
        GetNode: (clients) => clients.nodes.getNode({ name: "probe-a" }),
        CreateToken: (clients) => clients.tokens.createToken({ ttlSeconds: 60, description: "" }),
        WatchEvents: async (clients) => {
          for await (const _ of clients.events.watchEvents({ afterId: "", types: [] })) {
            // An event would be data served to an anonymous caller.
          }
        },
      };
      for (const [name, call] of Object.entries(anonymousCalls)) {
        const refused = await rpcError(() => call(anonymous));
        expect(refused.codeName, `${where} gRPC ${name}: ${refused.message}`).toBe(
          "Unauthenticated",
        );
      }
      const heartbeat = await rpcError(async () => {
        const hello = create(HeartbeatRequestSchema, {
          kind: { case: "hello", value: { nodeName: "probe-a" } },
        });
        for await (const _ of anonymous.nodes.heartbeat(
          (async function* () {
            yield hello;
          })(),
        )) {
          // An ack would be a heartbeat accepted from nobody.
        }
      });
      expect(heartbeat.codeName, `${where} gRPC Heartbeat: ${heartbeat.message}`).toBe(
        "Unauthenticated",
      );
      for (const protocol of ["connect-h2", "connect-h1", "grpc-web"] as const) {
        const clients = clientsOverProtocol(protocol, { url, caPem: admin.caPem });
        for (const name of ["ListNodes", "WatchEvents"]) {
          const refused = await rpcError(() => anonymousCalls[name]!(clients));
          expect(refused.codeName, `${where} ${protocol} ${name}: ${refused.message}`).toBe(
            "Unauthenticated",
          );
          expect(refused.message, `${where} ${protocol} ${name}`).toMatch(/client certificate/);
        }
      }
      // Raw HTTP/JSON: 401 whatever the body, before the body is parsed.
      for (const [path, body] of [
        [listNodesPath, "{}"],
        [listNodesPath, '{"labelSelector": '],
        ["/cloudless.v1.NoSuchService/NoSuchMethod", "{}"],
      ] as const) {
        const noCertHttp = await httpsPost({
          host,
          port: socket.port,
          path,
          body,
          caPem: admin.caPem,
        });
        expect(noCertHttp.status, `${where} ${path} ${body}: ${noCertHttp.body}`).toBe(401);
        expect(noCertHttp.body).not.toContain("probe-a");
        expect(JSON.parse(noCertHttp.body)).toMatchObject({ code: "unauthenticated" });
      }

      // (c) Client certificates the cluster does not accept: another CA's admin (same
      // cluster name), an expired admin certificate from the cluster's own CA, and a
      // node certificate from the cluster's CA for a node that never enrolled.
      for (const [label, credential, message] of [
        ["another CA", foreign, /not issued by this cluster's CA/],
        ["an expired certificate", expired, /not issued by this cluster's CA \(CERT_HAS_EXPIRED\)/],
        ["an unenrolled node", unenrolled, /"ghost" is no longer a member/],
      ] as const) {
        const impostor = clientsFor({
          url,
          caPem: admin.caPem,
          certPem: credential.certPem,
          keyPem: credential.keyPem,
        });
        const refused = await rpcError(impostor.nodes.listNodes({}));
        expect(refused.codeName, `${where} ${label}: ${refused.message}`).toBe("Unauthenticated");
        expect(refused.message, `${where} ${label}`).toMatch(message);
        const http = await httpsPost({
          host,
          port: socket.port,
          path: listNodesPath,
          body: "{}",
          caPem: admin.caPem,
          certPem: credential.certPem,
          keyPem: credential.keyPem,
        });
        expect(http.status, `${where} ${label}: ${http.body}`).toBe(401);
        expect(http.body).not.toContain("probe-a");
      }
      return { plainText, plain };
    };

    for (const socket of coordinatorSockets) {
      const { plainText, plain } = await probe("coordinator", socket);
      if (socket.port === cluster.port) {
        // The coordinator's API port says why, then hangs up.
        expect(plainText).toMatch(/^HTTP\/1\.1 400 /);
        expect(plainText).toMatch(/TLS only/);
        expect(plain.closedByServer).toBe(true);
      }
    }
    // The agent's listeners speak no API: they are checked below (mesh, DNS).

    // The same request with the admin certificate succeeds, so the refusals above are
    // about the credential and not a broken probe (REQ-080: one handler, gRPC and JSON).
    const allowed = await httpsPost({
      host: "127.0.0.1",
      port: cluster.port,
      path: listNodesPath,
      body: "{}",
      caPem: admin.caPem,
      certPem: admin.certPem,
      keyPem: admin.keyPem,
    });
    expect(allowed.status, allowed.body).toBe(200);
    expect(allowed.headers["content-type"]).toMatch(/application\/json/);
    const listed = JSON.parse(allowed.body) as { nodes?: { name: string }[] };
    expect(listed.nodes?.map((n) => n.name)).toEqual(["probe-a"]);
    const viaGrpc = await clientsFor({
      url: cluster.url,
      caPem: admin.caPem,
      clusterName: admin.clusterName,
      certPem: admin.certPem,
      keyPem: admin.keyPem,
    }).nodes.listNodes({});
    expect(viaGrpc.nodes.map((n) => n.name)).toEqual(["probe-a"]);

    // The refusals are on the record as security events (rate-limited per peer host).
    const failures = await clientsFor({
      url: cluster.url,
      caPem: admin.caPem,
      clusterName: admin.clusterName,
      certPem: admin.certPem,
      keyPem: admin.keyPem,
    }).events.listEvents({ types: ["AuthenticationFailed"], limit: 100 });
    expect(failures.events.length).toBeGreaterThanOrEqual(1);
    expect(failures.events[0]).toMatchObject({
      category: "security",
      reason: "NoValidClientCertificate",
    });

    // The agent listens on its mesh port (every address, mutual TLS with node certificates,
    // REQ-040) and on 127.0.0.1 for DNS; with no service there are no proxy listeners. A
    // listener beyond these is new: this tripwire makes sure it gets a security review.
    const exposed = agentSockets.filter((s) => dialHost(s) !== "127.0.0.1");
    expect(exposed, `agent sockets beyond loopback: ${JSON.stringify(agentSockets)}`).toEqual([]);
    const wildcard = agentSockets.filter((s) => s.address === "0.0.0.0");
    expect(wildcard, "the agent's one wildcard listener, the mesh").toHaveLength(1);
    expect(agentSockets.length, "mesh + DNS").toBeLessThanOrEqual(2);
    // The mesh answers nothing to a TLS client without a node certificate.
    const meshRefusal = await tlsWithoutCertificate("127.0.0.1", wildcard[0]!.port);
    expect(meshRefusal.bytes, "application bytes from the mesh to an anonymous client").toBe(0);
    expect(meshRefusal.closed, "the mesh closed the anonymous connection").toBe(true);
  });

  it("REQ-001 NFR-S1 REQ-071 enrollment answers only with a valid token: garbage, forged, other-cluster, expired and reused tokens are refused and recorded", async () => {
    const cluster = await TestCluster.start(resources);
    const admin = await adminOf(cluster);
    const asAdmin = adminClients(cluster, admin);
    // The 1 s token starts expiring now; the other cases run meanwhile.
    const expiring = await cluster.cliJson<{ token: string; id: string; expiresAt: string }>([
      "token",
      "create",
      "--ttl",
      "1s",
    ]);
    const valid = await cluster.createToken();
    const parsed = parseToken(valid);
    if (!parsed.ok) throw new Error(`token create printed an unparsable token: ${valid}`);
    const forged = `CL1::${parsed.caFingerprint}::${parsed.id}.${"A".repeat(43)}`;
    const foreign = await foreignAdminCredentials(admin.clusterName);
    const otherCluster = generateToken(foreign.caFingerprint).token;

    // No client certificate; the cluster CA is trusted, as a joining agent does after pinning.
    const anonymous = clientsFor({ url: cluster.url, caPem: admin.caPem });
    const enroll = async (token: string, name: string) => {
      const { csrPem } = await generateKeyAndCsr({ commonName: name });
      return anonymous.nodes.enroll({ token, name, csrPem, region: "", zone: "", labels: {} });
    };
    const nodeNames = async () =>
      (await asAdmin.nodes.listNodes({})).nodes.map((node) => node.name).sort();

    const expectRefused = async (token: string, name: string, message: RegExp) => {
      const before = await nodeNames();
      const refused = await rpcError(enroll(token, name));
      expect(refused.codeName, refused.message).toBe("Unauthenticated");
      expect(refused.message).toMatch(message);
      expect(await nodeNames()).toEqual(before);
    };

    await expectRefused(
      "garbage",
      "garbage-token",
      /not in the CL1::<ca-hash>::<id>\.<secret> form/,
    );
    await expectRefused(forged, "forged", /token is not valid for this cluster/);
    await expectRefused(otherCluster, "other-cluster", /issued by another cluster/);

    // The forged attempt did not burn the real token: it works once…
    const accepted = await enroll(valid, "first-use");
    expect(accepted.nodeName).toBe("first-use");
    expect(accepted.clusterName).toBe(admin.clusterName);
    expect(await nodeNames()).toEqual(["first-use"]);
    // …and only once.
    await expectRefused(valid, "second-use", /already used/);

    await waitFor(
      "the 1 s token to pass its expiry time",
      () => Date.now() > Date.parse(expiring.expiresAt) + 50,
      10_000,
      50,
    );
    await expectRefused(expiring.token, "expired", /expired/);

    // The real agent CLI says the same in one line, saves no identity, and exits non-zero.
    const attempts = [
      [forged, 5, /^error: token is not valid for this cluster/],
      ["garbage", 2, /^error: token is not in the CL1::/],
      // Pinned to another CA: the agent refuses this coordinator before sending the token.
      [otherCluster, 5, /^error: the server at .* is not the cluster this token belongs to/],
    ] as const;
    const agentDirs = await Promise.all(
      attempts.map(() => resources.tempDir("cloudless-agent-refused-")),
    );
    const runs = await Promise.all(
      attempts.map(([token], index) =>
        runCli([
          "agent",
          "--join",
          cluster.url,
          "--token",
          token,
          "--name",
          "cli-agent",
          "--data-dir",
          agentDirs[index] as string,
          ...fastAgent,
        ]),
      ),
    );
    for (const [index, [, code, message]] of attempts.entries()) {
      const run = runs[index]!;
      expect(run.code, run.stderr).toBe(code);
      expect(humanLines(run.stderr), run.stderr).toHaveLength(1);
      expect(humanLines(run.stderr)[0]).toMatch(message);
      expect(hasStackTrace(run.stderr + run.stdout), run.stderr).toBe(false);
    }
    for (const dir of agentDirs) {
      await expect(stat(path.join(dir, "identity.json"))).rejects.toThrow(/ENOENT/);
    }
    expect(await nodeNames()).toEqual(["first-use"]);

    const events = await cluster.events();
    const refusals = events
      .filter((event) => event.type === "EnrollmentRefused")
      .map((event) => `${event.subject} ${event.reason} ${event.category}`);
    expect(refusals.sort()).toEqual(
      [
        "node/garbage-token malformed security",
        "node/forged unknown security",
        "node/other-cluster otherCluster security",
        "node/second-use used security",
        "node/expired expired security",
        // The CLI's forged token reached the coordinator; the garbage and other-cluster
        // ones never left the CLI.
        "node/cli-agent unknown security",
      ].sort(),
    );
    // Refusals are recorded by token id; no secret reaches the events or the logs.
    const secrets = [valid, expiring.token, forged, otherCluster].map((token) => {
      const parts = parseToken(token);
      if (!parts.ok) throw new Error(parts.reason);
      return parts.secret;
    });
    for (const secret of secrets) {
      expect(JSON.stringify(events)).not.toContain(secret);
      expect(cluster.coordinator.stderr).not.toContain(secret);
    }
  });

  it("REQ-060 NFR-S1 a node certificate cannot act as another node or as an admin", async () => {
    const cluster = await TestCluster.start(resources);
    const admin = await adminOf(cluster);
    const asAdmin = adminClients(cluster, admin);
    await cluster.startAgent("node-a", { token: await cluster.createToken(), extra: fastAgent });
    await cluster.startAgent("node-b", { token: await cluster.createToken(), extra: fastAgent });
    await waitForNodeStatus(asAdmin, "node-a", "Ready");
    await waitForNodeStatus(asAdmin, "node-b", "Ready");

    const stolen = await readAgentCredentials(await cluster.agentDir("node-a"));
    expect(stolen.nodeName).toBe("node-a");
    const asA = clientsFor({
      url: cluster.url,
      caPem: stolen.caPem,
      clusterName: stolen.clusterName,
      certPem: stolen.certPem,
      keyPem: stolen.keyPem,
    });
    // The certificate itself is good: node A may read its own record.
    expect((await asA.nodes.getNode({ name: "node-a" })).node?.name).toBe("node-a");
    const bBefore = (await asAdmin.nodes.getNode({ name: "node-b" })).node;

    const heartbeatAsB = await rpcError(async () => {
      const hello = create(HeartbeatRequestSchema, {
        kind: { case: "hello", value: { nodeName: "node-b" } },
      });
      for await (const _ of asA.nodes.heartbeat(
        (async function* () {
          yield hello;
        })(),
      )) {
        // An ack would mean the coordinator accepted the impersonation.
      }
    });
    expect(heartbeatAsB.codeName, heartbeatAsB.message).toBe("PermissionDenied");
    expect(heartbeatAsB.message).toMatch(/"node-a" may not act as node "node-b"/);

    const refusals: Record<string, () => Promise<unknown>> = {
      "GetNode node-b": () => asA.nodes.getNode({ name: "node-b" }),
      ListNodes: () => asA.nodes.listNodes({}),
      "CordonNode node-b": () => asA.nodes.cordonNode({ name: "node-b" }),
      "CordonNode node-a": () => asA.nodes.cordonNode({ name: "node-a" }),
      "DrainNode node-b": () => asA.nodes.drainNode({ name: "node-b" }),
      "DeleteNode node-b": () => asA.nodes.deleteNode({ name: "node-b" }),
      CreateToken: () => asA.tokens.createToken({ ttlSeconds: 60, description: "" }),
      ListTokens: () => asA.tokens.listTokens({}),
    };
    for (const [call, run] of Object.entries(refusals)) {
      const refused = await rpcError(run);
      expect(refused.codeName, `${call}: ${refused.message}`).toBe("PermissionDenied");
    }

    // Renewing with a CSR that asks for node B's name still yields node A's identity.
    const { csrPem } = await generateKeyAndCsr({ commonName: "node-b" });
    const renewed = await asA.nodes.renewCertificate({ csrPem });
    const sans = new X509Certificate(renewed.certificatePem).subjectAltName ?? "";
    expect(sans).toContain(`spiffe://${stolen.clusterName}/node/node-a`);
    expect(sans).not.toContain("node-b");

    // Node B is untouched and keeps heartbeating on its own stream.
    const bAfter = await waitFor("node-b to heartbeat after the attempts", async () => {
      const node = (await asAdmin.nodes.getNode({ name: "node-b" })).node;
      const before = bBefore?.lastHeartbeatAt ? timestampMs(bBefore.lastHeartbeatAt) : 0;
      const now = node?.lastHeartbeatAt ? timestampMs(node.lastHeartbeatAt) : 0;
      return now > before ? node : undefined;
    });
    expect(bAfter?.status).toBe("Ready");
    expect(bAfter?.cordoned).toBe(false);
    expect(bAfter?.draining).toBe(false);
    expect(bAfter?.uid).toBe(bBefore?.uid);
    expect((await asAdmin.nodes.getNode({ name: "node-a" })).node?.cordoned).toBe(false);
    expect(cluster.agents.get("node-b")?.running).toBe(true);
    expect((await asAdmin.tokens.listTokens({})).tokens).toHaveLength(2);

    const denied = (await asAdmin.events.listEvents({ types: ["PermissionDenied"], limit: 100 }))
      .events;
    expect(denied.map((e) => `${e.subject} ${e.reason} ${e.actor}`)).toContain(
      "node/node-b ImpersonationAttempt node/node-a",
    );
  });

  it("REQ-001 REQ-060 a deleted node's agent stops with a clear message and its old certificate is refused", async () => {
    const cluster = await TestCluster.start(resources);
    const admin = await adminOf(cluster);
    const asAdmin = adminClients(cluster, admin);
    const firstToken = await cluster.createToken();
    const agent = await cluster.startAgent("doomed", { token: firstToken, extra: fastAgent });
    await waitForNodeStatus(asAdmin, "doomed", "Ready");
    const dir = await cluster.agentDir("doomed");
    const old = await readAgentCredentials(dir);

    const deleted = await cluster.cli(["node", "delete", "doomed"]);
    expect(deleted.code, deleted.stderr).toBe(0);
    const code = await waitForExit(agent, 15_000);
    expect(code).not.toBe(0);
    const said = humanLines(agent.stderr);
    expect(said.at(-1), agent.stderr).toMatch(/^error: .*node "doomed".*deleted/);
    expect(hasStackTrace(agent.stderr)).toBe(false);
    expect(await nodeNamesOf(asAdmin)).toEqual([]);

    // The old certificate no longer opens anything.
    const withOld = clientsFor({
      url: cluster.url,
      caPem: old.caPem,
      clusterName: old.clusterName,
      certPem: old.certPem,
      keyPem: old.keyPem,
    });
    const get = await rpcError(withOld.nodes.getNode({ name: "doomed" }));
    expect(get.codeName, get.message).toBe("Unauthenticated");
    expect(get.message).toMatch(/no longer a member/);
    // Enrolling again under the same name while presenting the old certificate (and the
    // token it was enrolled with) is refused: the certificate is no substitute for a token.
    const { csrPem } = await generateKeyAndCsr({ commonName: "doomed" });
    const reenroll = await rpcError(
      withOld.nodes.enroll({ token: firstToken, name: "doomed", csrPem, labels: {} }),
    );
    expect(reenroll.codeName, reenroll.message).toBe("Unauthenticated");
    // Restarting the agent on its old identity is refused too, in one line.
    const restarted = await cluster.startAgent("doomed", { dataDir: dir, extra: fastAgent });
    expect(await waitForExit(restarted, 20_000)).not.toBe(0);
    expect(humanLines(restarted.stderr).at(-1), restarted.stderr).toMatch(
      /^error: .*"doomed".*no longer a member/,
    );
    expect(hasStackTrace(restarted.stderr)).toBe(false);
    expect(await nodeNamesOf(asAdmin)).toEqual([]);

    // With a new token (and a new key) the name is free again: the refusals were about
    // the old certificate, not the name.
    await cluster.startAgent("doomed", {
      token: await cluster.createToken(),
      dataDir: await resources.tempDir("cloudless-agent-doomed-again-"),
      extra: fastAgent,
    });
    const again = await waitForNodeStatus(asAdmin, "doomed", "Ready");
    expect(again.enrollments).toBe(1);
  });

  it("NFR-S1 keys on disk are mode 0600 and data dirs 0700", async () => {
    const base = await resources.tempDir("cloudless-modes-");
    // Directories the product creates itself (mkdtemp would already be 0700).
    const coordinatorDir = path.join(base, "coordinator", "data");
    const agentDir = path.join(base, "agent", "data");
    const cluster = new TestCluster(resources, coordinatorDir);
    await cluster.startCoordinator(0);
    await cluster.startAgent("modes", {
      token: await cluster.createToken(),
      dataDir: agentDir,
      extra: fastAgent,
    });
    await waitForNodeStatus(adminClients(cluster, await adminOf(cluster)), "modes", "Ready");

    const modeOf = async (file: string) => ((await stat(file)).mode & 0o777).toString(8);
    expect({
      coordinatorDataDir: await modeOf(coordinatorDir),
      pkiDir: await modeOf(path.join(coordinatorDir, "pki")),
      caKey: await modeOf(path.join(coordinatorDir, "pki", "ca.key")),
      adminConf: await modeOf(path.join(coordinatorDir, "admin.conf")),
      agentDataDir: await modeOf(agentDir),
      nodeKey: await modeOf(path.join(agentDir, "node.key")),
    }).toEqual({
      coordinatorDataDir: "700",
      pkiDir: "700",
      caKey: "600",
      adminConf: "600",
      agentDataDir: "700",
      nodeKey: "600",
    });
    // The files hold what their names say.
    expect(await readFile(path.join(coordinatorDir, "pki", "ca.key"), "utf8")).toMatch(
      /PRIVATE KEY/,
    );
    expect(await readFile(path.join(agentDir, "node.key"), "utf8")).toMatch(/PRIVATE KEY/);
    expect(await readFile(path.join(coordinatorDir, "admin.conf"), "utf8")).toMatch(/PRIVATE KEY/);
  });

  it("NFR-S1 hardening: the store, its WAL and every other private file are 0600 in data dirs made by mkdir -p, under any umask; a store left readable is tightened with a warning", async () => {
    const base = await resources.tempDir("cloudless-umask-");
    // Made by the user, readable by all, as `mkdir -p` leaves them.
    const coordinatorDir = path.join(base, "coordinator");
    const agentDir = path.join(base, "agent");
    for (const dir of [coordinatorDir, agentDir]) {
      await mkdir(dir, { recursive: true });
      await chmod(dir, 0o755);
    }
    const cluster = new TestCluster(resources, coordinatorDir);
    // Children inherit the umask at spawn: 000 leaves every mode to the program itself.
    const previousUmask = process.umask(0);
    try {
      await cluster.startCoordinator(0);
      await cluster.startAgent("umask", {
        token: await cluster.createToken(),
        dataDir: agentDir,
        extra: fastAgent,
      });
    } finally {
      process.umask(previousUmask);
    }
    await waitForNodeStatus(adminClients(cluster, await adminOf(cluster)), "umask", "Ready");

    // Certificates and the agent's name file are public; everything else is private.
    const isPublic = (file: string) => /\.crt$|identity\.json$/.test(file);
    const readableByOthers = async () => {
      const found: string[] = [];
      const walk = async (dir: string) => {
        for (const entry of await readdir(dir, { withFileTypes: true })) {
          const file = path.join(dir, entry.name);
          const mode = (await stat(file)).mode & 0o777;
          if (entry.isDirectory()) {
            if (mode & 0o077) found.push(`${path.relative(base, file)}/ ${mode.toString(8)}`);
            await walk(file);
          } else if (mode & 0o077 && !isPublic(file)) {
            found.push(`${path.relative(base, file)} ${mode.toString(8)}`);
          }
        }
      };
      await walk(coordinatorDir);
      await walk(agentDir);
      return found;
    };
    const files = await readdir(coordinatorDir);
    expect(files).toEqual(expect.arrayContaining(["store.db", "store.db-wal"]));
    expect(await readableByOthers()).toEqual([]);

    // A store left readable (by an older version, or a copy) is tightened at start.
    await cluster.coordinator.stop();
    for (const file of ["store.db", "store.db-wal"]) {
      await chmod(path.join(coordinatorDir, file), 0o644).catch(() => undefined);
    }
    await cluster.startCoordinator();
    expect(((await stat(path.join(coordinatorDir, "store.db"))).mode & 0o777).toString(8)).toBe(
      "600",
    );
    expect(cluster.coordinator.stderr).toMatch(
      /store\.db was readable by other users \(mode 644\); set to 0600/,
    );
    expect(await readableByOthers()).toEqual([]);
  });
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

/** Waits for a node's status through the API (no CLI process per poll). */
async function waitForNodeStatus(
  clients: ReturnType<typeof clientsFor>,
  name: string,
  status: string,
  timeoutMs = 20_000,
) {
  return waitFor(
    `node ${name} to be ${status}`,
    async () => {
      const node = (await clients.nodes.listNodes({})).nodes.find((n) => n.name === name);
      return node?.status === status ? node : undefined;
    },
    timeoutMs,
    100,
  );
}

/** Listens on port 0 of each address that this machine has (IPv6 may be absent). */
async function listenOn(hosts: string[]): Promise<{ servers: Server[]; close(): void }> {
  const servers: Server[] = [];
  for (const host of hosts) {
    const server = createServer();
    const listening = await new Promise<boolean>((resolve) => {
      server.once("error", () => resolve(false));
      server.listen(0, host, () => resolve(true));
    });
    if (listening) servers.push(server);
  }
  return {
    servers,
    close: () => {
      for (const server of servers) server.close();
    },
  };
}

async function nodeNamesOf(clients: ReturnType<typeof clientsFor>): Promise<string[]> {
  return (await clients.nodes.listNodes({})).nodes.map((node) => node.name).sort();
}

/** What an agent keeps in its data dir: node.crt, node.key, ca.crt, identity.json. */
async function readAgentCredentials(dir: string) {
  const [caPem, certPem, keyPem, meta] = await Promise.all([
    readFile(path.join(dir, "ca.crt"), "utf8"),
    readFile(path.join(dir, "node.crt"), "utf8"),
    readFile(path.join(dir, "node.key"), "utf8"),
    readFile(path.join(dir, "identity.json"), "utf8"),
  ]);
  const identity = JSON.parse(meta) as { nodeName: string; clusterName: string };
  return { caPem, certPem, keyPem, nodeName: identity.nodeName, clusterName: identity.clusterName };
}

async function waitForExit(process: ManagedProcess, timeoutMs: number): Promise<number | null> {
  await waitFor(`process ${process.pid} to exit`, () => !process.running, timeoutMs, 50);
  return process.exited();
}

/** Connects with TLS and no client certificate; counts what the server sends before it closes. */
function tlsWithoutCertificate(
  host: string,
  port: number,
): Promise<{ bytes: number; closed: boolean }> {
  return new Promise((resolve) => {
    let bytes = 0;
    const socket = tls.connect({
      host,
      port,
      rejectUnauthorized: false,
      ALPNProtocols: ["cloudless-mesh/1"],
    });
    const deadline = setTimeout(() => {
      socket.destroy();
      resolve({ bytes, closed: false });
    }, 5_000);
    socket.on("secureConnect", () => socket.write('{"v":1,"op":"ping"}\n'));
    socket.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(deadline);
      resolve({ bytes, closed: true });
    });
  });
}

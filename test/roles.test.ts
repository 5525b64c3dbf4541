/**
 * Roles for people and programs (ADR 0051) with a real coordinator, real TLS and the real
 * CLI: `user create` writes a client config with its own key and a certificate carrying
 * its role; the role is checked on every RPC, on gRPC and on Connect's HTTP/JSON (curl)
 * alike; each denial is an event and an audit line; a revoked certificate is refused.
 */
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { readFile, stat, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";
import { Code } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadClientConfig } from "../src/client/config.js";
import type { AuditEntry } from "../src/observe/audit.js";
import { workloadDoc } from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { clientsFor, rpcError } from "./helpers/tlsProbe.js";
import { writeSpec } from "./helpers/workloads.js";

const run = promisify(execFile);
/** The exit code the CLI gives a PermissionDenied (src/cli/run.ts). */
const permissionDeniedExit = 5;

async function auditEntries(cluster: TestCluster): Promise<AuditEntry[]> {
  const text = await readFile(path.join(cluster.dataDir, "audit", "audit.log"), "utf8");
  return text
    .split("\n")
    .filter((line) => line.length > 0)
    .map((line) => JSON.parse(line) as AuditEntry);
}

/**
 * POSTs JSON to a Connect method with curl and a client certificate, over HTTP/1.1 (the
 * plain HTTP/JSON path a script would take): status and body.
 */
async function curlJson(
  cluster: TestCluster,
  files: { ca: string; cert: string; key: string },
  method: string,
  body: unknown,
): Promise<{ status: number; body: string }> {
  const { stdout } = await run(
    "curl",
    [
      "--silent",
      "--http1.1",
      "--max-time",
      "10",
      "--cacert",
      files.ca,
      "--cert",
      files.cert,
      "--key",
      files.key,
      "-H",
      "content-type: application/json",
      "--data",
      JSON.stringify(body),
      "--write-out",
      "\n%{http_code}",
      `https://127.0.0.1:${cluster.port}/cloudless.v1.${method}`,
    ],
    { timeout: 15_000 },
  );
  const cut = stdout.lastIndexOf("\n");
  return { status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) };
}

// The viewer test runs some forty CLI calls (each a Node start-up): about 50 s on a busy 2-core machine.
describe("roles and users with a real coordinator (ADR 0051)", { timeout: 180_000 }, () => {
  let resources: TestResources;

  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    await resources.cleanup();
  });

  async function createUser(cluster: TestCluster, name: string, role: string): Promise<string> {
    const dir = await resources.tempDir(`cloudless-user-${name}-`);
    const file = path.join(dir, `${name}.conf`);
    const result = await cluster.cli(["user", "create", name, "--role", role, "-f", file]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe(
      `user/${name} created with role ${role}; client config written to ${file} (mode 0600)\n`,
    );
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    return file;
  }

  it("REQ-061 NFR-S1 a viewer lists and gets but is refused apply, delete, scale and token create; an operator changes workloads but not tokens, nodes or users; each denial is an event and an audit line", async () => {
    const cluster = await TestCluster.start(resources);
    const specDir = await resources.tempDir("cloudless-specs-");
    const spec = await writeSpec(
      specDir,
      "web",
      workloadDoc("web", "default", { command: ["/bin/sleep", "600"], replicas: 1 }),
    );
    expect((await cluster.cli(["workload", "apply", "-f", spec])).code).toBe(0);

    const viewerConf = await createUser(cluster, "vera", "viewer");
    const operatorConf = await createUser(cluster, "otto", "operator");
    // The certificate names the user and binds the role by the CA's signature.
    const viewerCert = new X509Certificate((await loadClientConfig(viewerConf)).certPem);
    expect(viewerCert.subjectAltName).toBe(
      `URI:spiffe://${(await loadClientConfig(viewerConf)).clusterName}/user/vera, URI:urn:cloudless:role:viewer`,
    );
    const as = (file: string, args: string[]) => cluster.cli(args, { CLOUDLESS_CONFIG: file });

    // Reads work for a viewer.
    for (const args of [
      ["workload", "list"],
      ["workload", "get", "web"],
      ["node", "list"],
      ["events"],
    ]) {
      const result = await as(viewerConf, args);
      expect(result.code, `${args.join(" ")}: ${result.stderr}`).toBe(0);
    }
    // Writes do not.
    const viewerRefusals: [string[], string, string][] = [
      [["workload", "apply", "-f", spec], "WorkloadService/ApplyWorkload", "workloads.write"],
      [["workload", "delete", "web"], "WorkloadService/DeleteWorkload", "workloads.write"],
      [
        ["workload", "scale", "web", "--replicas", "2"],
        "WorkloadService/ScaleWorkload",
        "workloads.write",
      ],
      [["token", "create"], "TokenService/CreateToken", "tokens.write"],
      // Secret metadata and policies are not for viewers either (REQ-061, REQ-063).
      [["secret", "list"], "SecretService/ListSecrets", "secrets.read"],
      [["secret", "get", "db"], "SecretService/GetSecret", "secrets.read"],
      [["policy", "list"], "PolicyService/ListPolicies", "policies.read"],
    ];
    for (const [args, method, permission] of viewerRefusals) {
      const result = await as(viewerConf, args);
      expect(result.code, args.join(" ")).toBe(permissionDeniedExit);
      expect(result.stderr).toContain(
        `user "vera" with role viewer may not call ${method}: it needs permission ${permission}`,
      );
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
    }

    // An operator changes workloads…
    const scaled = await as(operatorConf, ["workload", "scale", "web", "--replicas", "2"]);
    expect(scaled.code, scaled.stderr).toBe(0);
    // …but creates no tokens, deletes no nodes and creates no users.
    const operatorRefusals: [string[], string, string][] = [
      [["token", "create"], "TokenService/CreateToken", "tokens.write"],
      [["node", "delete", "some-node"], "NodeService/DeleteNode", "nodes.write"],
      [
        ["user", "create", "mallory", "--role", "admin", "-f", path.join(specDir, "m.conf")],
        "UserService/CreateUser",
        "users.write",
      ],
      [["policy", "delete", "images"], "PolicyService/DeletePolicy", "policies.write"],
      [["secret", "rotate-key"], "SecretService/RotateSecretsKey", "secrets.keys"],
    ];
    for (const [args, method, permission] of operatorRefusals) {
      const result = await as(operatorConf, args);
      expect(result.code, args.join(" ")).toBe(permissionDeniedExit);
      expect(result.stderr).toContain(
        `user "otto" with role operator may not call ${method}: it needs permission ${permission} (role admin)`,
      );
    }

    // Every denial is an event…
    const refused = [
      ...viewerRefusals.map(([, method]) => ["user/vera", method] as const),
      ...operatorRefusals.map(([, method]) => ["user/otto", method] as const),
    ];
    const events = await cluster.events();
    for (const [actor, method] of refused) {
      const shortName = method.split("/")[1];
      expect(
        events.some(
          (event) =>
            event.type === "PermissionDenied" &&
            event.actor === actor &&
            event.message.startsWith(`${shortName} refused:`),
        ),
        `event for ${actor} ${method}`,
      ).toBe(true);
    }
    // …and an audit line.
    const audit = await auditEntries(cluster);
    for (const [actor, method] of refused) {
      expect(
        audit.some(
          (entry) =>
            entry.actor === actor &&
            entry.method === `cloudless.v1.${method}` &&
            entry.result === "PermissionDenied",
        ),
        `audit line for ${actor} ${method}`,
      ).toBe(true);
    }
    // The user's own creation is audited, and `user list` shows both users.
    expect(
      audit.some(
        (entry) =>
          entry.method === "cloudless.v1.UserService/CreateUser" &&
          entry.target === "user/vera" &&
          entry.result === "ok",
      ),
    ).toBe(true);
    const users = await cluster.cliJson<{ name: string; role: string; serial: string }[]>([
      "user",
      "list",
    ]);
    expect(users.map((user) => [user.name, user.role])).toEqual([
      ["vera", "viewer"],
      ["otto", "operator"],
    ]);
    expect(users[0]?.serial).toBe(viewerCert.serialNumber.toLowerCase());
  });

  it("REQ-061 NFR-S1 the HTTP/JSON path checks roles too, and a revoked certificate is refused on gRPC and HTTP/JSON, on an open connection as well", async () => {
    const cluster = await TestCluster.start(resources);
    const viewerConf = await createUser(cluster, "vera", "viewer");
    const viewer = await loadClientConfig(viewerConf);
    const dir = path.dirname(viewerConf);
    const files = {
      ca: path.join(dir, "ca.crt"),
      cert: path.join(dir, "vera.crt"),
      key: path.join(dir, "vera.key"),
    };
    await writeFile(files.ca, viewer.caPem);
    await writeFile(files.cert, viewer.certPem);
    await writeFile(files.key, viewer.keyPem, { mode: 0o600 });

    // HTTP/JSON (curl): a read answers, a write is PermissionDenied naming role and permission.
    const listed = await curlJson(cluster, files, "WorkloadService/ListWorkloads", {});
    expect(listed.status, listed.body).toBe(200);
    const applied = await curlJson(cluster, files, "WorkloadService/ApplyWorkload", {
      specText: "{}",
    });
    expect(applied.status).toBe(403);
    expect(JSON.parse(applied.body)).toMatchObject({
      code: "permission_denied",
      message: expect.stringContaining(
        'user "vera" with role viewer may not call WorkloadService/ApplyWorkload: it needs permission workloads.write',
      ),
    });
    const tokens = await curlJson(cluster, files, "TokenService/ListTokens", {});
    expect(tokens.status).toBe(403);

    // gRPC over one connection that stays open across the revocation.
    const grpc = clientsFor({
      url: cluster.url,
      caPem: viewer.caPem,
      clusterName: viewer.clusterName,
      certPem: viewer.certPem,
      keyPem: viewer.keyPem,
    });
    await grpc.workloads.listWorkloads({});

    const revoked = await cluster.cli(["user", "revoke", "vera"]);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(revoked.stdout).toMatch(
      /^user\/vera revoked; certificate serial [0-9a-f]+ is refused from now on\n$/,
    );

    const afterGrpc = await rpcError(grpc.workloads.listWorkloads({}));
    expect(afterGrpc.code).toBe(Code.Unauthenticated);
    expect(afterGrpc.message).toContain('the certificate of user "vera" was revoked or replaced');
    const afterCurl = await curlJson(cluster, files, "WorkloadService/ListWorkloads", {});
    expect(afterCurl.status).toBe(401);
    expect(JSON.parse(afterCurl.body)).toMatchObject({ code: "unauthenticated" });
    const afterCli = await cluster.cli(["workload", "list"], { CLOUDLESS_CONFIG: viewerConf });
    expect(afterCli.code).not.toBe(0);
    expect(afterCli.stderr).toContain("revoked");
    // /healthz and /metrics refuse it as well.
    const health = await run(
      "curl",
      [
        "--silent",
        "--max-time",
        "10",
        "--cacert",
        files.ca,
        "--cert",
        files.cert,
        "--key",
        files.key,
        "--write-out",
        "%{http_code}",
        "--output",
        "/dev/null",
        `https://127.0.0.1:${cluster.port}/healthz`,
      ],
      { timeout: 15_000 },
    );
    expect(health.stdout).toBe("401");

    // `user list` shows the revocation; the refusal is a security event.
    const users = await cluster.cliJson<{ name: string; revokedAt?: string }[]>(["user", "list"]);
    expect(users[0]).toMatchObject({ name: "vera", revokedAt: expect.any(String) });
    await waitFor("the refused revoked certificate to be an event", async () => {
      const events = await cluster.events();
      return events.find(
        (event) =>
          event.type === "AuthenticationFailed" &&
          event.message.includes('user "vera" presented a revoked certificate'),
      );
    });
    // Creating the name again issues a new certificate; the old serial stays refused.
    const again = path.join(dir, "vera2.conf");
    const recreated = await cluster.cli([
      "user",
      "create",
      "vera",
      "--role",
      "viewer",
      "-f",
      again,
    ]);
    expect(recreated.code, recreated.stderr).toBe(0);
    expect((await cluster.cli(["workload", "list"], { CLOUDLESS_CONFIG: again })).code).toBe(0);
    expect(
      (await cluster.cli(["workload", "list"], { CLOUDLESS_CONFIG: viewerConf })).code,
    ).not.toBe(0);
  });

  it("NFR-S1 user create refuses a bad name, a bad role and an existing file before doing anything, in one line", async () => {
    const cluster = await TestCluster.start(resources);
    const dir = await resources.tempDir("cloudless-user-bad-");
    const existing = path.join(dir, "taken.conf");
    await writeFile(existing, "keep me\n");
    const cases: [string[], string][] = [
      [["user", "create", "Bad_Name", "--role", "viewer"], 'user name "Bad_Name" is not valid'],
      [["user", "create", "ann", "--role", "root"], "--role root: use viewer, operator or admin"],
      [["user", "create", "ann", "--role", "viewer", "-f", existing], "already exists"],
      [["user", "revoke", "nobody"], 'user "nobody" not found'],
    ];
    for (const [args, message] of cases) {
      const result = await cluster.cli(args);
      expect(result.code, args.join(" ")).not.toBe(0);
      expect(result.stderr).toContain(message);
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
    }
    expect(await readFile(existing, "utf8")).toBe("keep me\n");
    expect(await cluster.cliJson<unknown[]>(["user", "list"])).toEqual([]);
  });
});

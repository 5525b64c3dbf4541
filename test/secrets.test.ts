/**
 * Secrets with real coordinator processes (REQ-063, NFR-S1, NFR-C1): values are stored only
 * envelope-encrypted (a search of the SQLite files, of every etcd key and value, finds none),
 * the key-encryption key lives outside the store, `secret rotate-key --remove-old` leaves
 * every secret decryptable by the new key alone, and every change is audited by name while
 * no value reaches the audit log, the coordinator's log or the events.
 */
import { createHash, randomBytes } from "node:crypto";
import { readdir, readFile, stat, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadClientConfig } from "../src/client/config.js";
import type { AuditEntry } from "../src/observe/audit.js";
import {
  fastAgentFlags,
  removeProcessReplicas,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { type EtcdCluster, etcdUnavailableReason, startEtcd } from "./helpers/etcd.js";
import { recordReplicaTokens } from "./helpers/logCapture.js";
import { runCli, TestResources } from "./helpers/processes.js";
import { clientsFor, rpcError } from "./helpers/tlsProbe.js";
import { writeSpec } from "./helpers/workloads.js";

const etcdMissing = await etcdUnavailableReason();

interface SecretJson {
  namespace: string;
  name: string;
  version: string;
  keys: { name: string; sizeBytes: string }[];
  kekId: string;
}

/** A value no file would hold by chance, and the encodings a careless store might use. */
function marker(label: string): { value: string; forms: string[] } {
  const value = `${label}-${randomBytes(12).toString("hex")}`;
  const bytes = Buffer.from(value, "utf8");
  return {
    value,
    forms: [value, bytes.toString("base64"), bytes.toString("base64url"), bytes.toString("hex")],
  };
}

/** Every regular file under `dir`, recursively. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => path.join(entry.parentPath, entry.name));
}

/** The forms of `values` found in `text`, for a failure message that says which. */
function found(text: string | Buffer, values: { forms: string[] }[]): string[] {
  const haystack = Buffer.isBuffer(text) ? text : Buffer.from(text, "utf8");
  return values.flatMap((v) => v.forms.filter((form) => haystack.includes(form)));
}

describe("REQ-063 encrypted secrets, with real coordinators", { timeout: 120_000 }, () => {
  let resources: TestResources;
  let etcd: EtcdCluster | undefined;
  let agentDirs: string[];

  beforeEach(() => {
    resources = new TestResources();
    agentDirs = [];
  });
  afterEach(async () => {
    await resources.cleanup();
    await removeProcessReplicas(agentDirs);
    await etcd?.stop();
    etcd = undefined;
  });

  it("REQ-063 NFR-S1 NFR-C1 the SQLite files hold no value; rotate-key --remove-old leaves every secret decryptable; changes audited by name, no value in audit, logs or events", async () => {
    const cluster = await TestCluster.start(resources);
    const literal = marker("literal");
    const fromFile = marker("file");
    const updated = marker("updated");
    const other = marker("other");
    const all = [literal, fromFile, updated, other];
    const inputDir = await resources.tempDir("cloudless-secret-input-");
    const valueFile = path.join(inputDir, "tls.key");
    await writeFile(valueFile, fromFile.value, { mode: 0o600 });

    const ok = async (args: string[]) => {
      const result = await cluster.cli(args);
      expect(result.code, result.stderr).toBe(0);
      expect(found(result.stdout + result.stderr, all)).toEqual([]);
      return result;
    };
    await ok([
      "secret",
      "create",
      "db",
      "--from-literal",
      `password=${literal.value}`,
      "--from-file",
      valueFile,
    ]);
    await ok(["secret", "create", "api", "-n", "prod", "--from-literal", `token=${other.value}`]);
    await ok(["secret", "create", "doomed", "--from-literal", `x=${other.value}`]);
    await ok(["secret", "update", "db", "--from-literal", `password=${updated.value}`]);
    await ok(["secret", "delete", "doomed"]);

    const db = await cluster.cliJson<SecretJson>(["secret", "get", "db"]);
    expect(db).toMatchObject({ namespace: "default", name: "db", version: "2" });
    expect(db.keys).toEqual([{ name: "password", sizeBytes: String(updated.value.length) }]);
    const list = await cluster.cliJson<SecretJson[]>(["secret", "list"]);
    expect(list.map((s) => `${s.namespace}/${s.name}`).sort()).toEqual(["default/db", "prod/api"]);
    const oldKek = db.kekId;
    expect(oldKek).toMatch(/^kek-[0-9a-f]{16}$/);

    // The KEK is outside the store: a 0600 file in the data dir, named by its id.
    const kekDir = path.join(cluster.dataDir, "secrets-kek");
    expect((await stat(path.join(kekDir, `${oldKek}.key`))).mode & 0o777).toBe(0o600);
    expect((await stat(kekDir)).mode & 0o777).toBe(0o700);

    // Rotation: a new KEK, every data key re-wrapped, the old key removed.
    const rotated = await cluster.cliJson<{
      activeKekId: string;
      total: number;
      rewrapped: number;
      removedKekIds: string[];
    }>(["secret", "rotate-key", "--remove-old"]);
    expect(rotated.total).toBe(2);
    expect(rotated.rewrapped).toBe(2);
    expect(rotated.activeKekId).not.toBe(oldKek);
    expect(rotated.removedKekIds).toEqual([oldKek]);
    expect((await readdir(kekDir)).sort()).toEqual(["active", `${rotated.activeKekId}.key`]);

    // After a restart the coordinator holds only the new key, and every secret decrypts.
    let logs = "";
    await cluster.coordinator.stop();
    logs += cluster.coordinator.stderr;
    await cluster.startCoordinator();
    for (const [namespace, name] of [
      ["default", "db"],
      ["prod", "api"],
    ] as const) {
      const info = await cluster.cliJson<SecretJson>(["secret", "get", name, "-n", namespace]);
      expect(info.kekId).toBe(rotated.activeKekId);
    }
    const verified = await ok(["secret", "verify"]);
    expect(verified.stdout).toContain("2 of 2 secrets decrypt");

    // No value in any file of the data dir: store.db, its WAL, the audit log, the keys.
    await cluster.coordinator.stop();
    logs += cluster.coordinator.stderr;
    const files = await filesUnder(cluster.dataDir);
    expect(files.some((file) => file.endsWith("store.db"))).toBe(true);
    for (const file of files) {
      expect(found(await readFile(file), all), file).toEqual([]);
    }
    await cluster.startCoordinator();

    // Audited by name: create, update, delete and rotate, each with its target.
    const audit = (await readFile(path.join(cluster.dataDir, "audit", "audit.log"), "utf8"))
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => JSON.parse(line) as AuditEntry);
    const secretEntries = audit
      .filter((entry) => entry.method.startsWith("cloudless.v1.SecretService/"))
      .map((entry) => `${entry.method.split("/")[1]} ${entry.target} ${entry.result}`);
    expect(secretEntries).toEqual([
      "CreateSecret secret/default/db ok",
      "CreateSecret secret/prod/api ok",
      "CreateSecret secret/default/doomed ok",
      "UpdateSecret secret/default/db ok",
      "DeleteSecret secret/default/doomed ok",
      `RotateSecretsKey kek/${rotated.activeKekId} ok`,
    ]);

    // Events name secrets; neither they nor the coordinator's log hold a value.
    const events = await cluster.cli(["events", "-o", "json"]);
    expect(events.code, events.stderr).toBe(0);
    for (const type of ["SecretCreated", "SecretUpdated", "SecretDeleted", "SecretsKeyRotated"]) {
      expect(events.stdout).toContain(type);
    }
    expect(found(events.stdout, all)).toEqual([]);
    logs += cluster.coordinator.stderr;
    expect(logs).toContain("secrets key rotation finished");
    expect(found(logs, all)).toEqual([]);
  });

  it("REQ-063 NFR-S1 bad input is refused with one line naming what is wrong, never the value, and nothing is stored", async () => {
    const cluster = await TestCluster.start(resources);
    const value = marker("refused");
    const cases: { args: string[]; error: RegExp }[] = [
      {
        args: ["secret", "create", "Bad_Name", "--from-literal", `k=${value.value}`],
        error: /DNS label/,
      },
      {
        args: ["secret", "create", "x", "--from-literal", value.value],
        error: /expected KEY=VALUE/,
      },
      {
        args: ["secret", "create", "x", "--from-literal", `a/b=${value.value}`],
        error: /secretKeyNameChars/,
      },
      { args: ["secret", "create", "x"], error: /at least one key/ },
      { args: ["secret", "get", "missing"], error: /not found/ },
    ];
    for (const { args, error } of cases) {
      const result = await cluster.cli(args);
      expect(result.code, args.join(" ")).not.toBe(0);
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
      expect(result.stderr).toMatch(error);
      expect(found(result.stderr, [value])).toEqual([]);
    }
    const big = path.join(await resources.tempDir("cloudless-secret-big-"), "big");
    await writeFile(big, Buffer.alloc(128 * 1024 + 1, 0x61));
    const tooBig = await cluster.cli(["secret", "create", "x", "--from-file", big]);
    expect(tooBig.code).not.toBe(0);
    expect(tooBig.stderr).toMatch(/secretValueBytes/);
    expect(await cluster.cliJson<SecretJson[]>(["secret", "list"])).toEqual([]);
  });

  it("REQ-063 NFR-S1 CLOUDLESS_SECRETS_KEY holds the keys instead of the data dir; a malformed one stops the start with one line that does not echo it", async () => {
    const badDir = await resources.tempDir("cloudless-coord-");
    const garbage = `not-a-key-${randomBytes(8).toString("hex")}`;
    const refused = await runCli(
      [
        "coordinator",
        "--data-dir",
        path.join(badDir, "data"),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
      ],
      { env: { CLOUDLESS_SECRETS_KEY: garbage } },
    );
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/CLOUDLESS_SECRETS_KEY: entry 1 is not a base64 32-byte key/);
    expect(refused.stderr).not.toContain(garbage);
    // Refused before the data dir was touched: no half-made cluster to clean up.
    await expect(stat(path.join(badDir, "data"))).rejects.toThrow(/ENOENT/);

    const key = randomBytes(32);
    const cluster = await TestCluster.start(resources, [], {
      CLOUDLESS_SECRETS_KEY: key.toString("base64"),
    });
    const value = marker("envkey");
    const created = await cluster.cli([
      "secret",
      "create",
      "db",
      "--from-literal",
      `pw=${value.value}`,
    ]);
    expect(created.code, created.stderr).toBe(0);
    const info = await cluster.cliJson<SecretJson>(["secret", "get", "db"]);
    expect(info.kekId).toBe(`kek-${createHash("sha256").update(key).digest("hex").slice(0, 16)}`);
    await expect(stat(path.join(cluster.dataDir, "secrets-kek"))).rejects.toThrow(/ENOENT/);
    // The data dir cannot rotate keys it does not hold.
    const removeOld = await cluster.cli(["secret", "rotate-key", "--remove-old"]);
    expect(removeOld.code).not.toBe(0);
    expect(removeOld.stderr).toMatch(/CLOUDLESS_SECRETS_KEY: Cloudless cannot remove them/);
    expect((await cluster.cli(["secret", "verify"])).stdout).toContain("1 of 1 secrets decrypt");
  });

  it("REQ-063 NFR-C1 a node reads a secret only with a token bound to its own replica (not another replica's, not another node's, not a forged one) for a replica assigned to it whose spec references it; any other ask is PermissionDenied, an event and an audit line", async () => {
    const cluster = await TestCluster.start(resources);
    const namespace = "secure";
    const db = marker("delivered");
    const other = marker("unreferenced");
    for (const [name, value] of [
      ["db", db],
      ["other", other],
    ] as const) {
      const created = await cluster.cli([
        "secret",
        "create",
        name,
        "-n",
        namespace,
        "--from-literal",
        `password=${value.value}`,
      ]);
      expect(created.code, created.stderr).toBe(0);
    }
    for (const [name, role] of [
      ["near", "near"],
      ["far", "far"],
    ] as const) {
      agentDirs.push(await cluster.agentDir(name));
      await cluster.startAgent(name, {
        token: await cluster.createToken(),
        zone: "a",
        extra: [...fastAgentFlags, "--driver", "process", "--label", `role=${role}`],
      });
      await cluster.waitForStatus(name, "Ready", 30_000);
    }
    const specDir = await resources.tempDir("cloudless-specs-");
    const command = [process.execPath, "-e", "setInterval(()=>{},1000)"];
    for (const [workload, role] of [
      ["web", "near"],
      ["remote", "far"],
    ] as const) {
      const spec = await writeSpec(
        specDir,
        workload,
        workloadDoc(workload, namespace, {
          command,
          replicas: 1,
          placement: { nodeSelector: { role } },
          secrets: [{ name: "db" }],
        }),
      );
      const applied = await cluster.cli(["workload", "apply", "-f", spec]);
      expect(applied.code, applied.stderr).toBe(0);
    }
    const running = async (workload: string) =>
      (
        await waitForWorkload(cluster, namespace, workload, "a replica running", (w) =>
          w.replicas.some((r) => r.phase === "Running"),
        )
      ).replicas[0];
    const web = await running("web");
    const remote = await running("remote");
    expect(web?.node).toBe("near");
    expect(remote?.node).toBe("far");

    // The agents "near" and "far", each with its own node certificate.
    const { caPem } = await loadClientConfig(cluster.configPath);
    const asAgent = async (name: string) => {
      const dir = await cluster.agentDir(name);
      return clientsFor({
        url: cluster.url,
        caPem,
        certPem: await readFile(path.join(dir, "node.crt"), "utf8"),
        keyPem: await readFile(path.join(dir, "node.key"), "utf8"),
      });
    };
    const asNear = await asAgent("near");
    const asFar = await asAgent("far");
    // A token bound to each agent's own replica (ADR 0058).
    const issue = async (clients: typeof asNear, workload: string, replicaId: string) =>
      (await clients.secrets.issueReplicaToken({ namespace, workload, replicaId })).token;
    const nearToken = await issue(asNear, "web", web?.id ?? "");
    const farToken = await issue(asFar, "remote", remote?.id ?? "");
    recordReplicaTokens([nearToken, farToken]);
    const ask = (workload: string, replicaId: string, name: string, token: string) =>
      asNear.secrets.readReplicaSecret({ namespace, workload, replicaId, name, token });

    const allowed = await ask("web", web?.id ?? "", "db", nearToken);
    expect(allowed.version).toBe(1n);
    expect(Buffer.from(allowed.data.password ?? new Uint8Array()).toString("utf8")).toBe(db.value);

    // A token with its signature changed (a character inside it, not the padding bits at its end).
    const flipAt = nearToken.length - 10;
    const flipped = nearToken[flipAt] === "A" ? "B" : "A";
    const tampered = `${nearToken.slice(0, flipAt)}${flipped}${nearToken.slice(flipAt + 1)}`;
    const refusals = [
      // No token: the node certificate alone no longer reads a value.
      await rpcError(ask("web", web?.id ?? "", "db", "")),
      // A valid token for its own replica used for a replica of another node.
      await rpcError(ask("remote", remote?.id ?? "", "db", nearToken)),
      // The other node's token for its replica, replayed with this node's certificate.
      await rpcError(ask("remote", remote?.id ?? "", "db", farToken)),
      // A token whose signature does not verify.
      await rpcError(ask("web", web?.id ?? "", "db", tampered)),
      // A valid token, and a secret its own replica does not reference: the store says no.
      await rpcError(ask("web", web?.id ?? "", "other", nearToken)),
    ];
    expect(refusals.map((error) => error.codeName)).toEqual(Array(5).fill("PermissionDenied"));
    expect(refusals.map((error) => error.message)).toEqual([
      expect.stringContaining("no replica token"),
      expect.stringContaining("the replica token is for replica"),
      expect.stringContaining("the replica token was issued to node far, not near"),
      expect.stringContaining("signature does not verify"),
      expect.stringContaining("does not reference secret other"),
    ]);
    // No token for a replica of another node.
    const notMine = await rpcError(issue(asNear, "remote", remote?.id ?? ""));
    expect(notMine.codeName).toBe("PermissionDenied");
    expect(notMine.message).toContain("not assigned to node near");
    // An admin certificate is not a node: values never go to a client, nor tokens.
    const adminConfig = await loadClientConfig(cluster.configPath);
    const asAdmin = clientsFor({
      url: cluster.url,
      caPem,
      certPem: adminConfig.certPem,
      keyPem: adminConfig.keyPem,
    });
    const admin = await rpcError(
      asAdmin.secrets.readReplicaSecret({
        namespace,
        workload: "web",
        replicaId: web?.id ?? "",
        name: "db",
        token: nearToken,
      }),
    );
    expect(admin.codeName).toBe("PermissionDenied");
    const adminToken = await rpcError(issue(asAdmin, "web", web?.id ?? ""));
    expect(adminToken.codeName).toBe("PermissionDenied");

    // Each delivery and refusal is an audit line by name; each refusal an event.
    const auditEntries = (await readFile(path.join(cluster.dataDir, "audit", "audit.log"), "utf8"))
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => JSON.parse(line) as AuditEntry);
    const audit = auditEntries
      .filter((entry) => entry.method.endsWith("/ReadReplicaSecret"))
      .map((entry) => `${entry.actor} ${entry.target} ${entry.result}`);
    // The agents' own deliveries before each replica started (ADR 0055), then the asks above.
    const deliveries = audit.slice(0, 2).sort();
    expect(deliveries).toEqual([
      `node/far secret/${namespace}/db replica/remote/${remote?.id} ok`,
      `node/near secret/${namespace}/db replica/web/${web?.id} ok`,
    ]);
    expect(audit.slice(2)).toEqual([
      `node/near secret/${namespace}/db replica/web/${web?.id} ok`,
      `node/near secret/${namespace}/db replica/web/${web?.id} PermissionDenied`,
      `node/near secret/${namespace}/db replica/remote/${remote?.id} PermissionDenied`,
      `node/near secret/${namespace}/db replica/remote/${remote?.id} PermissionDenied`,
      `node/near secret/${namespace}/db replica/web/${web?.id} PermissionDenied`,
      `node/near secret/${namespace}/other replica/web/${web?.id} PermissionDenied`,
      `admin/admin secret/${namespace}/db replica/web/${web?.id} PermissionDenied`,
    ]);
    // Tokens issued, and refused, are audited by replica (the agents' own come first).
    const tokenAudit = auditEntries
      .filter((entry) => entry.method.endsWith("/IssueReplicaToken"))
      .map((entry) => `${entry.actor} ${entry.target} ${entry.result}`);
    expect(tokenAudit.slice(-4)).toEqual([
      `node/near replica/${namespace}/web/${web?.id} ok`,
      `node/far replica/${namespace}/remote/${remote?.id} ok`,
      `node/near replica/${namespace}/remote/${remote?.id} PermissionDenied`,
      `admin/admin replica/${namespace}/web/${web?.id} PermissionDenied`,
    ]);
    const events = await cluster.cli(["events", "--type", "SecretAccessDenied", "-o", "json"]);
    expect(events.code, events.stderr).toBe(0);
    const denied = JSON.parse(events.stdout) as {
      subject: string;
      actor: string;
      reason: string;
    }[];
    expect(denied.map((event) => `${event.actor} ${event.subject} ${event.reason}`)).toEqual([
      `node/near secret/${namespace}/db BadToken`,
      `node/near secret/${namespace}/db BadToken`,
      `node/near secret/${namespace}/db BadToken`,
      `node/near secret/${namespace}/db BadToken`,
      `node/near secret/${namespace}/other NotAssigned`,
    ]);
    const tokenEvents = await cluster.cli(["events", "--type", "ReplicaTokenDenied", "-o", "json"]);
    expect(tokenEvents.code, tokenEvents.stderr).toBe(0);
    expect(
      (JSON.parse(tokenEvents.stdout) as { subject: string; actor: string }[]).map(
        (event) => `${event.actor} ${event.subject}`,
      ),
    ).toEqual([`node/near replica/${namespace}/remote/${remote?.id}`]);
    // No token in an event, an error or the coordinator's log (NFR-S1).
    const logs =
      cluster.coordinator.stderr +
      events.stdout +
      tokenEvents.stdout +
      refusals.map((error) => error.message).join("\n");
    for (const token of [nearToken, farToken]) {
      expect(logs).not.toContain(token.slice(token.lastIndexOf(".") + 1));
    }
    expect(found(logs, [db, other])).toEqual([]);
  });

  it.skipIf(etcdMissing !== undefined)(
    "REQ-063 NFR-S1 on etcd with a shared --secrets-key-file: no etcd key or value holds a value; another coordinator decrypts; rotation by a new first line",
    async () => {
      etcd = await startEtcd({ members: 1 });
      const storeUrl = `etcd://${etcd.endpoints.join(",")}/cloudless-secrets-${process.pid}`;
      const keyDir = await resources.tempDir("cloudless-kek-");
      const keyFile = path.join(keyDir, "secrets.keys");
      const firstKey = randomBytes(32).toString("base64");
      await writeFile(keyFile, `${firstKey}\n`, { mode: 0o600 });
      const first = await TestCluster.start(resources, [
        "--store",
        storeUrl,
        "--secrets-key-file",
        keyFile,
      ]);
      const value = marker("etcd");
      const created = await first.cli([
        "secret",
        "create",
        "db",
        "--from-literal",
        `pw=${value.value}`,
      ]);
      expect(created.code, created.stderr).toBe(0);

      // Every key and value in etcd, read raw.
      const { Etcd3 } = await import("etcd3");
      const client = new Etcd3({
        hosts: etcd.endpoints.map((e) => `http://${e}`),
        dialTimeout: 2_000,
      });
      try {
        const everything = await client.getAll().strings();
        const keys = Object.keys(everything);
        expect(keys.some((key) => key.includes("/secrets/default/db"))).toBe(true);
        for (const [key, stored] of Object.entries(everything)) {
          expect(found(key + stored, [value]), key).toEqual([]);
        }
      } finally {
        client.close();
      }

      // A second coordinator with the same key file decrypts what the first sealed.
      const second = new TestCluster(resources, await resources.tempDir("cloudless-coord-"), [
        "--store",
        storeUrl,
        "--secrets-key-file",
        keyFile,
        "--cluster-secret-file",
        path.join(first.dataDir, "cluster-secret"),
      ]);
      await second.startCoordinator(0);
      await first.coordinator.stop();
      const verify = await second.cli(["secret", "verify"]);
      expect(verify.code, verify.stderr).toBe(0);
      expect(verify.stdout).toContain("1 of 1 secrets decrypt");

      // Rotation with a key file: a new first line (no restart), rotate-key, drop the old line.
      const newKey = randomBytes(32).toString("base64");
      await writeFile(keyFile, `${newKey}\n${firstKey}\n`);
      const removeOld = await second.cli(["secret", "rotate-key", "--remove-old"]);
      expect(removeOld.code).not.toBe(0);
      expect(removeOld.stderr).toMatch(/cannot remove them/);
      const rotated = await second.cliJson<{ activeKekId: string; rewrapped: number }>([
        "secret",
        "rotate-key",
      ]);
      expect(rotated.rewrapped).toBe(1);
      await writeFile(keyFile, `${newKey}\n`);
      const info = await second.cliJson<SecretJson>(["secret", "get", "db"]);
      expect(info.kekId).toBe(rotated.activeKekId);
      const after = await second.cli(["secret", "verify"]);
      expect(after.code, after.stderr).toBe(0);
      expect(found(second.coordinator.stderr + first.coordinator.stderr, [value])).toEqual([]);
    },
  );
});

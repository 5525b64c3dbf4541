/**
 * Configuration objects (issue 15, ADR 0056) with a real coordinator, real agents and the
 * real CLI: create, update, get, list and delete; limits refused with one line; roles
 * (a viewer reads, an operator writes); a node reads only the configs of replicas
 * assigned to it; and `onChange: restart` rolls every replica without going below
 * minAvailable. There is no REQ for configs; NFR-C1 for limits and hostile input.
 */
import { readFile, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Workload } from "../src/api/gen/cloudless/v1/workload_pb.js";
import { loadClientConfig } from "../src/client/config.js";
import type { AuditEntry } from "../src/observe/audit.js";
import {
  fastAgentFlags,
  getWorkloadJson,
  removeProcessReplicas,
  replicaPid,
  waitForWorkload,
  workloadDoc,
} from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { recordReplicaTokens } from "./helpers/logCapture.js";
import { TestResources } from "./helpers/processes.js";
import { clientsFor, rpcError } from "./helpers/tlsProbe.js";
import { adminClients, getWorkload, writeSpec } from "./helpers/workloads.js";

/** The exit code the CLI gives a PermissionDenied (src/cli/run.ts). */
const permissionDeniedExit = 5;

interface ConfigJson {
  namespace: string;
  name: string;
  version: string;
  keys: { name: string; sizeBytes: string }[];
  updatedBy: string;
  data?: Record<string, string>;
  binaryData?: Record<string, string>;
}

async function auditEntries(cluster: TestCluster): Promise<AuditEntry[]> {
  const text = await readFile(path.join(cluster.dataDir, "audit", "audit.log"), "utf8");
  return text
    .split("\n")
    .filter((line) => line.length > 0)
    .map((line) => JSON.parse(line) as AuditEntry);
}

describe("configs with a real cluster (issue 15, ADR 0056)", { timeout: 180_000 }, () => {
  let resources: TestResources;
  let agentDirs: string[];

  beforeEach(() => {
    resources = new TestResources();
    agentDirs = [];
  });
  afterEach(async () => {
    await resources.cleanup();
    await removeProcessReplicas(agentDirs);
  });

  async function createUser(cluster: TestCluster, name: string, role: string): Promise<string> {
    const file = path.join(await resources.tempDir(`cloudless-user-${name}-`), `${name}.conf`);
    const result = await cluster.cli(["user", "create", name, "--role", role, "-f", file]);
    expect(result.code, result.stderr).toBe(0);
    return file;
  }

  it("NFR-C1 NFR-S1 config create, update, get, list and delete through the CLI; limits refused in one line; changes audited and events", async () => {
    const cluster = await TestCluster.start(resources);
    const inputDir = await resources.tempDir("cloudless-config-input-");
    const appFile = path.join(inputDir, "app.yaml");
    await writeFile(appFile, "listen: 8080\nlevel: info\n");
    const ok = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
      const result = await cluster.cli(args, env);
      expect(result.code, `${args.join(" ")}: ${result.stderr}`).toBe(0);
      return result;
    };

    const created = await ok([
      "config",
      "create",
      "app",
      "--from-file",
      appFile,
      "--from-literal",
      "mode=blue",
    ]);
    expect(created.stdout).toBe("config/default/app created (version 1, 2 keys)\n");
    await ok(["config", "create", "edge", "-n", "prod", "--from-file", `proxy.conf=${appFile}`]);
    const updated = await ok(["config", "update", "app", "--from-literal", "mode=green"]);
    expect(updated.stdout).toBe("config/default/app updated (version 2, 1 key)\n");

    // get prints the values (configs are not secret); --key one raw value.
    const app = await cluster.cliJson<ConfigJson>(["config", "get", "app"]);
    expect(app).toMatchObject({
      namespace: "default",
      name: "app",
      version: "2",
      keys: [{ name: "mode", sizeBytes: "5" }],
      updatedBy: "admin/admin",
      data: { mode: "green" },
    });
    const raw = await ok(["config", "get", "edge", "-n", "prod", "--key", "proxy.conf"]);
    expect(raw.stdout).toBe("listen: 8080\nlevel: info\n");
    const table = await ok(["config", "get", "app"]);
    expect(table.stdout).toMatch(/^config\/default\/app version 2, updated .* by admin\/admin\n/);
    expect(table.stdout).toContain("\n--- mode (5 bytes) ---\ngreen\n");
    const list = await cluster.cliJson<ConfigJson[]>(["config", "list", "-A"]);
    expect(list.map((c) => `${c.namespace}/${c.name} v${c.version}`)).toEqual([
      "default/app v2",
      "prod/edge v1",
    ]);
    const prodOnly = await cluster.cliJson<ConfigJson[]>(["config", "list", "-n", "prod"]);
    expect(prodOnly.map((c) => c.name)).toEqual(["edge"]);
    const listTable = await ok(["config", "list"]);
    expect(listTable.stdout.split("\n")[0]).toMatch(
      /^NAMESPACE\s+NAME\s+VERSION\s+KEYS\s+UPDATED$/,
    );

    // Hostile and careless input: one line naming what is wrong, non-zero, nothing stored.
    const big = path.join(inputDir, "big");
    await writeFile(big, Buffer.alloc(512 * 1024 + 1, 0x61));
    const refusals: { args: string[]; error: RegExp }[] = [
      { args: ["config", "create", "Bad_Name", "--from-literal", "k=v"], error: /DNS label/ },
      { args: ["config", "create", "x", "--from-literal", "novalue"], error: /expected KEY=VALUE/ },
      { args: ["config", "create", "x", "--from-literal", "a/b=v"], error: /configKeyNameChars/ },
      { args: ["config", "create", "x"], error: /a config needs at least one key/ },
      { args: ["config", "create", "x", "--from-file", big], error: /configTotalBytes/ },
      {
        args: ["config", "create", "x", "--from-literal", "k=v", "--from-literal", "k=w"],
        error: /key "k" is given twice/,
      },
      { args: ["config", "create", "app", "--from-literal", "k=v"], error: /already exists/ },
      { args: ["config", "update", "missing", "--from-literal", "k=v"], error: /not found/ },
      { args: ["config", "get", "missing"], error: /config default\/missing not found/ },
      {
        args: ["config", "get", "app", "--key", "nope"],
        error: /has no key "nope"; its keys: mode/,
      },
      { args: ["config", "delete", "missing"], error: /not found/ },
      { args: ["config", "list", "-n", "prod", "-A"], error: /not both/ },
    ];
    for (const { args, error } of refusals) {
      const result = await cluster.cli(args);
      expect(result.code, args.join(" ")).not.toBe(0);
      expect(result.stderr.trim().split("\n"), args.join(" ")).toHaveLength(1);
      expect(result.stderr, args.join(" ")).toMatch(error);
    }
    // Sent straight to the API (past the CLI's checks), the coordinator refuses the same.
    const { caPem, certPem, keyPem } = await loadClientConfig(cluster.configPath);
    const asAdmin = clientsFor({ url: cluster.url, caPem, certPem, keyPem });
    const direct = await rpcError(
      asAdmin.configs.createConfig({
        namespace: "default",
        name: "direct",
        data: { "../escape": new Uint8Array([1]) },
      }),
    );
    expect(direct.codeName).toBe("InvalidArgument");
    expect(direct.message).toMatch(/config key "..\/escape" must be/);
    expect(
      (await cluster.cliJson<ConfigJson[]>(["config", "list"])).map((c) => c.name).sort(),
    ).toEqual(["app", "edge"]);

    await ok(["config", "delete", "edge", "-n", "prod"]);
    expect((await cluster.cliJson<ConfigJson[]>(["config", "list"])).map((c) => c.name)).toEqual([
      "app",
    ]);

    // Every change is an audit line naming the config, and an event.
    const audit = (await auditEntries(cluster))
      .filter((entry) => entry.method.startsWith("cloudless.v1.ConfigService/"))
      .map(
        (entry) => `${entry.actor} ${entry.method.split("/")[1]} ${entry.target} ${entry.result}`,
      );
    expect(audit).toEqual(
      expect.arrayContaining([
        "admin/admin CreateConfig config/default/app ok",
        "admin/admin CreateConfig config/prod/edge ok",
        "admin/admin UpdateConfig config/default/app ok",
        "admin/admin CreateConfig config/default/app AlreadyExists",
        "admin/admin DeleteConfig config/prod/edge ok",
      ]),
    );
    const configEvents = (await cluster.events())
      .filter((event) => event.type.startsWith("Config"))
      .map((event) => `${event.type} ${event.subject} ${event.actor}`);
    expect(configEvents).toEqual(
      expect.arrayContaining([
        "ConfigCreated config/default/app admin/admin",
        "ConfigUpdated config/default/app admin/admin",
        "ConfigDeleted config/prod/edge admin/admin",
      ]),
    );
  });

  it("NFR-C1 NFR-S1 roles: a viewer gets and lists configs but cannot create, update or delete them; an operator can; each denial is an audit line", async () => {
    const cluster = await TestCluster.start(resources);
    const ok = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
      const result = await cluster.cli(args, env);
      expect(result.code, `${args.join(" ")}: ${result.stderr}`).toBe(0);
      return result;
    };
    await ok(["config", "create", "app", "--from-literal", "mode=green"]);
    // Roles: a viewer reads but cannot create; an operator creates, updates and deletes.
    const viewerConf = await createUser(cluster, "vera", "viewer");
    const operatorConf = await createUser(cluster, "otto", "operator");
    const asViewer = { CLOUDLESS_CONFIG: viewerConf };
    await ok(["config", "list"], asViewer);
    expect((await ok(["config", "get", "app", "--key", "mode"], asViewer)).stdout).toBe("green");
    const viewerRefusals: [string[], string][] = [
      [["config", "create", "v", "--from-literal", "k=v"], "ConfigService/CreateConfig"],
      [["config", "update", "app", "--from-literal", "k=v"], "ConfigService/UpdateConfig"],
      [["config", "delete", "app"], "ConfigService/DeleteConfig"],
    ];
    for (const [args, method] of viewerRefusals) {
      const result = await cluster.cli(args, asViewer);
      expect(result.code, args.join(" ")).toBe(permissionDeniedExit);
      expect(result.stderr).toContain(
        `user "vera" with role viewer may not call ${method}: it needs permission configs.write (role operator or admin)`,
      );
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
    }
    const asOperator = { CLOUDLESS_CONFIG: operatorConf };
    await ok(["config", "create", "ops", "--from-literal", "k=1"], asOperator);
    await ok(["config", "update", "ops", "--from-literal", "k=2"], asOperator);
    expect((await ok(["config", "get", "ops", "--key", "k"], asOperator)).stdout).toBe("2");
    await ok(["config", "delete", "ops"], asOperator);
    expect((await cluster.cliJson<ConfigJson[]>(["config", "list"])).map((c) => c.name)).toEqual([
      "app",
    ]);

    // Every change and every refusal is an audit line naming the config.
    const audit = (await auditEntries(cluster))
      .filter((entry) => entry.method.startsWith("cloudless.v1.ConfigService/"))
      .map(
        (entry) => `${entry.actor} ${entry.method.split("/")[1]} ${entry.target} ${entry.result}`,
      );
    expect(audit).toEqual(
      expect.arrayContaining([
        "user/vera CreateConfig config/default/v PermissionDenied",
        "user/vera DeleteConfig config/default/app PermissionDenied",
        "user/otto CreateConfig config/default/ops ok",
        "user/otto UpdateConfig config/default/ops ok",
        "user/otto DeleteConfig config/default/ops ok",
      ]),
    );
    const events = await cluster.events();
    const configEvents = events
      .filter((event) => event.type.startsWith("Config"))
      .map((event) => `${event.type} ${event.subject} ${event.actor}`);
    expect(configEvents).toEqual(
      expect.arrayContaining([
        "ConfigCreated config/default/ops user/otto",
        "ConfigDeleted config/default/ops user/otto",
      ]),
    );
  });

  it("NFR-C1 NFR-S1 REQ-063 a node reads a config only with its replica's token, for a replica assigned to it whose spec mounts it; anything else is PermissionDenied, an event and an audit line", async () => {
    const cluster = await TestCluster.start(resources);
    const namespace = "cfg";
    for (const name of ["app", "other"]) {
      const created = await cluster.cli([
        "config",
        "create",
        name,
        "-n",
        namespace,
        "--from-literal",
        `app.conf=${name}-value`,
      ]);
      expect(created.code, created.stderr).toBe(0);
    }
    for (const name of ["near", "far"]) {
      agentDirs.push(await cluster.agentDir(name));
      await cluster.startAgent(name, {
        token: await cluster.createToken(),
        zone: "a",
        extra: [...fastAgentFlags, "--driver", "process", "--label", `role=${name}`],
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
          configs: [{ name: "app" }],
        }),
      );
      const applied = await cluster.cli(["workload", "apply", "-f", spec]);
      expect(applied.code, applied.stderr).toBe(0);
    }
    const placed = async (workload: string) =>
      (
        await waitForWorkload(cluster, namespace, workload, "a replica placed", (w) =>
          w.replicas.some((r) => r.node !== ""),
        )
      ).replicas[0];
    const web = await placed("web");
    const remote = await placed("remote");
    expect(web?.node).toBe("near");
    expect(remote?.node).toBe("far");

    const { caPem, certPem, keyPem } = await loadClientConfig(cluster.configPath);
    const nearDir = await cluster.agentDir("near");
    const asNear = clientsFor({
      url: cluster.url,
      caPem,
      certPem: await readFile(path.join(nearDir, "node.crt"), "utf8"),
      keyPem: await readFile(path.join(nearDir, "node.key"), "utf8"),
    });
    // The token bound to near's own replica (ADR 0058) goes with every read.
    const { token } = await asNear.secrets.issueReplicaToken({
      namespace,
      workload: "web",
      replicaId: web?.id ?? "",
    });
    recordReplicaTokens([token]);
    const ask = (workload: string, replicaId: string, name: string, sent = token) =>
      asNear.configs.readReplicaConfig({ namespace, workload, replicaId, name, token: sent });
    const allowed = await ask("web", web?.id ?? "", "app");
    expect(allowed.version).toBe(1n);
    expect(Buffer.from(allowed.data["app.conf"] ?? new Uint8Array()).toString()).toBe("app-value");

    const refusals = [
      // A config of a workload it does not run (the replica is on "far"), with its own token.
      await rpcError(ask("remote", remote?.id ?? "", "app")),
      // A config its own replica does not mount.
      await rpcError(ask("web", web?.id ?? "", "other")),
      // A replica that does not exist.
      await rpcError(ask("web", "no-such-replica", "app")),
      // An admin certificate is not a node.
      await rpcError(
        clientsFor({ url: cluster.url, caPem, certPem, keyPem }).configs.readReplicaConfig({
          namespace,
          workload: "web",
          replicaId: web?.id ?? "",
          name: "app",
          token,
        }),
      ),
      // Its own replica without a token.
      await rpcError(ask("web", web?.id ?? "", "app", "")),
    ];
    expect(refusals.map((error) => error.codeName)).toEqual([
      "PermissionDenied",
      "PermissionDenied",
      "PermissionDenied",
      "PermissionDenied",
      "PermissionDenied",
    ]);
    expect(refusals[0]?.message).toContain("the replica token is for replica");
    expect(refusals[4]?.message).toContain("no replica token");
    expect(refusals[1]?.message).toContain("the replica's spec does not reference config other");

    const audit = (await auditEntries(cluster))
      .filter((entry) => entry.method.endsWith("/ReadReplicaConfig"))
      .map((entry) => `${entry.actor} ${entry.target} ${entry.result}`);
    // The agents' own reads (once the agent side delivers configs) come before and between.
    expect(audit).toEqual(
      expect.arrayContaining([
        `node/near config/${namespace}/app replica/web/${web?.id} ok`,
        `node/near config/${namespace}/app replica/remote/${remote?.id} PermissionDenied`,
        `node/near config/${namespace}/other replica/web/${web?.id} PermissionDenied`,
        `node/near config/${namespace}/app replica/web/no-such-replica PermissionDenied`,
        `node/near config/${namespace}/app replica/web/${web?.id} PermissionDenied`,
      ]),
    );
    expect(
      audit.some((line) => line.startsWith("admin/admin ") && line.endsWith(" PermissionDenied")),
    ).toBe(true);
    // A workload mounting a config that does not exist is applied; describe names it.
    const waiting = await writeSpec(
      specDir,
      "waiting",
      workloadDoc("waiting", namespace, {
        command,
        replicas: 0,
        configs: [{ name: "absent", onChange: "restart" }],
      }),
    );
    const appliedWaiting = await cluster.cli(["workload", "apply", "-f", waiting]);
    expect(appliedWaiting.code, appliedWaiting.stderr).toBe(0);
    const described = await cluster.cli(["workload", "describe", "waiting", "-n", namespace]);
    expect(described.code, described.stderr).toBe(0);
    expect(described.stdout).toMatch(
      /ConfigMissing\s+mounts config absent, which does not exist in namespace cfg; create it with `cloudless config create`/,
    );

    const denied = (await cluster.events())
      .filter((event) => event.type === "ConfigAccessDenied" && event.actor === "node/near")
      .map((event) => event.subject);
    expect(denied).toEqual([
      `config/${namespace}/app`,
      `config/${namespace}/other`,
      `config/${namespace}/app`,
      `config/${namespace}/app`,
    ]);
  });

  it("NFR-C1 onChange: restart — a config update replaces all three replicas (new pids) and the ready count never drops below minAvailable 2", async () => {
    const cluster = await TestCluster.start(resources);
    const namespace = "roll";
    agentDirs.push(await cluster.agentDir("worker"));
    const agentDir = await cluster.agentDir("worker");
    await cluster.startAgent("worker", {
      token: await cluster.createToken(),
      zone: "a",
      extra: [...fastAgentFlags, "--driver", "process"],
    });
    await cluster.waitForStatus("worker", "Ready", 30_000);
    const created = await cluster.cli([
      "config",
      "create",
      "app",
      "-n",
      namespace,
      "--from-literal",
      "level=info",
    ]);
    expect(created.code, created.stderr).toBe(0);
    const specDir = await resources.tempDir("cloudless-specs-");
    const spec = await writeSpec(
      specDir,
      "web",
      workloadDoc("web", namespace, {
        command: [process.execPath, "-e", "setInterval(()=>{},1000)"],
        replicas: 3,
        minAvailable: 2,
        // No surge and every replica allowed to go at once: only minAvailable holds the
        // roll back, so the samples test that bound and nothing else.
        rollout: { maxSurge: 0, maxUnavailable: 3 },
        configs: [{ name: "app", onChange: "restart" }],
        // Each new replica takes two seconds to be ready, so the roll lasts long enough
        // for the samples to see it go replica by replica.
        readinessProbe: {
          exec: { command: ["/bin/true"] },
          periodSeconds: 1,
          initialDelaySeconds: 2,
        },
      }),
    );
    const applied = await cluster.cli(["workload", "apply", "-f", spec]);
    expect(applied.code, applied.stderr).toBe(0);
    const before = await waitForWorkload(
      cluster,
      namespace,
      "web",
      "three ready replicas",
      (w) => w.status.readyReplicas === 3 && w.replicas.filter((r) => r.ready).length === 3,
    );
    expect(before.status.revision).toBe("1");
    const oldIds = before.replicas.map((r) => r.id).sort();
    const oldPids = await Promise.all(oldIds.map((id) => replicaPid(agentDir, id)));

    // Sampled straight from the API, every 100 ms, from before the update until the roll
    // is done: the CLI takes too long per call to see a replica-by-replica roll.
    const clients = await adminClients(cluster.configPath);
    const samples: Workload[] = [];
    const rolled = (w: Workload) =>
      w.status?.revision === 2n &&
      w.replicas.length === 3 &&
      w.replicas.every((r) => r.ready && r.revision === 2n && !oldIds.includes(r.id));
    const sampling = (async () => {
      const deadline = Date.now() + 90_000;
      while (Date.now() < deadline) {
        const workload = await getWorkload(clients, namespace, "web");
        samples.push(workload);
        if (rolled(workload)) return;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error("the replicas were not all replaced at revision 2 within 90 s");
    })();
    const updated = await cluster.cli([
      "config",
      "update",
      "app",
      "-n",
      namespace,
      "--from-literal",
      "level=debug",
    ]);
    expect(updated.code, updated.stderr).toBe(0);
    await sampling;
    const readyCounts = samples.map((s) => s.replicas.filter((r) => r.ready).length);
    const midRoll = samples.filter((s) => s.replicas.some((r) => r.revision === 2n) && !rolled(s));
    console.log(
      `onChange restart: ${samples.length} samples (${midRoll.length} mid-roll), ready counts ${readyCounts.join(",")}`,
    );
    // The roll was seen under way, and all along never below minAvailable.
    expect(midRoll.length).toBeGreaterThan(5);
    expect(Math.min(...readyCounts)).toBeGreaterThanOrEqual(2);
    // And it went down to the bound: replicas were replaced one at a time below three.
    expect(readyCounts).toContain(2);
    const after = samples.at(-1);
    const newIds = (after?.replicas ?? []).map((r) => r.id).sort();
    expect(newIds).toHaveLength(3);
    const newPids = await Promise.all(newIds.map((id) => replicaPid(agentDir, id)));
    for (const pid of newPids) expect(oldPids).not.toContain(pid);

    // The roll is a new revision of the same template, said by an event; a second look
    // (a maintenance pass, a new leader) makes no further revision.
    const events = (await cluster.events()).filter(
      (event) =>
        event.type === "WorkloadRestarted" && event.subject === `workload/${namespace}/web`,
    );
    expect(events.map((event) => event.message)).toEqual([
      "rolling out revision 2: config changed (app v2), onChange: restart",
    ]);
    const status = await cluster.cli(["workload", "rollout", "status", "web", "-n", namespace]);
    expect(status.code, status.stderr).toBe(0);
    expect((await getWorkloadJson(cluster, namespace, "web")).status.revision).toBe("2");
  });
});

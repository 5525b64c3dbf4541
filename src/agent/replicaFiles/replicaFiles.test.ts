import { lstat, mkdtemp, readdir, readFile, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../observe/logger.js";
import type { ReplicaFileSource, ReplicaRunSpec } from "../drivers/driver.js";
import {
  type FetchSource,
  ReplicaFiles,
  type SourceContent,
  type SourceRequest,
} from "./replicaFiles.js";

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

/** A coordinator stand-in: sources by kind/name, and every request it was asked. */
function fakeCoordinator(initial: Record<string, SourceContent>) {
  const sources = new Map(Object.entries(initial));
  const requests: SourceRequest[] = [];
  const fetch: FetchSource = async (request) => {
    requests.push(request);
    const found = sources.get(`${request.kind}/${request.name}`);
    if (!found)
      throw new Error(`[permission_denied] ${request.kind} ${request.name} is not readable`);
    return found;
  };
  return { sources, requests, fetch };
}

function content(version: number, data: Record<string, string>): SourceContent {
  return {
    version: BigInt(version),
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v)])),
  };
}

function spec(replicaId: string, files: ReplicaFileSource[]): ReplicaRunSpec {
  return {
    replicaId,
    namespace: "default",
    workload: "web",
    driver: "process",
    command: ["true"],
    env: {},
    ports: [],
    resources: { cpuMillicores: 10, memoryMiB: 8, storageGiB: 0 },
    files,
  };
}

async function filesIn(): Promise<{ dataDir: string }> {
  const dataDir = await mkdtemp(path.join(tmpdir(), "replica-files-"));
  dirs.push(dataDir);
  return { dataDir };
}

const dbSecret: ReplicaFileSource = {
  kind: "secret",
  name: "db",
  mountPath: "/run/secrets/db",
  env: [{ name: "DB_PASSWORD", key: "password" }],
};
const appConfig: ReplicaFileSource = {
  kind: "config",
  name: "app",
  mountPath: "/etc/app",
  onChange: "reload",
};

describe("ReplicaFiles (REQ-063)", () => {
  it("REQ-063: prepare writes secret and config files with their modes and returns mounts and env", async () => {
    const { dataDir } = await filesIn();
    const coordinator = fakeCoordinator({
      "secret/db": content(1, { password: "pw-1", user: "app" }),
      "config/app": content(3, { "app.yaml": "level: info" }),
    });
    const files = new ReplicaFiles({
      dataDir,
      fetch: coordinator.fetch,
      logger: silentLogger,
      secretsOnTmpfs: false,
    });
    const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
    const prepared = await files.prepare(spec("r1", [dbSecret, appConfig]), owner);
    const secretDir = path.join(dataDir, "secrets-tmpfs", "r1", "db");
    const configDir = path.join(dataDir, "replica-configs", "r1", "app");
    expect(prepared.mounts).toEqual([
      { source: secretDir, target: "/run/secrets/db" },
      { source: configDir, target: "/etc/app" },
    ]);
    expect(prepared.env).toEqual({ DB_PASSWORD: "pw-1" });
    expect(await readFile(path.join(secretDir, "password"), "utf8")).toBe("pw-1");
    const secretVersion = await readlink(path.join(secretDir, "..data"));
    expect((await lstat(path.join(secretDir, secretVersion, "password"))).mode & 0o777).toBe(0o400);
    expect((await lstat(secretDir)).mode & 0o777).toBe(0o500);
    expect((await lstat(path.dirname(secretDir))).mode & 0o777).toBe(0o500);
    const configVersion = await readlink(path.join(configDir, "..data"));
    expect((await lstat(path.join(configDir, configVersion, "app.yaml"))).mode & 0o777).toBe(0o444);
    expect(coordinator.requests).toEqual([
      { kind: "secret", namespace: "default", workload: "web", replicaId: "r1", name: "db" },
      { kind: "config", namespace: "default", workload: "web", replicaId: "r1", name: "app" },
    ]);
  });

  it("REQ-063: a missing env key or an unreadable source fails with a line naming it, never a value", async () => {
    const { dataDir } = await filesIn();
    const coordinator = fakeCoordinator({ "secret/db": content(1, { user: "app-user-value" }) });
    const files = new ReplicaFiles({
      dataDir,
      fetch: coordinator.fetch,
      logger: silentLogger,
      secretsOnTmpfs: false,
    });
    const missingKey = files.prepare(spec("r1", [dbSecret]));
    await expect(missingKey).rejects.toMatchObject({ reason: "SecretKeyMissing" });
    await expect(missingKey).rejects.toThrow(
      'secret db has no key "password" for environment variable DB_PASSWORD',
    );
    await expect(missingKey).rejects.not.toThrow(/app-user-value/);
    const unreadable = files.prepare(spec("r2", [{ ...appConfig, name: "other" }]));
    await expect(unreadable).rejects.toMatchObject({ reason: "ConfigUnavailable" });
    await expect(unreadable).rejects.toThrow(/cannot read config other from the coordinator/);
    // An answer beyond the secret limits is refused before anything is written.
    coordinator.sources.set("secret/huge", content(1, { big: "x".repeat(256 * 1024 + 1) }));
    const huge = files.prepare(
      spec("r4", [{ kind: "secret", name: "huge", mountPath: "/run/secrets/huge" }]),
    );
    await expect(huge).rejects.toThrow(
      /secret huge has 1 keys and 262145 bytes; at most 64 keys and 262144 bytes/,
    );
    await expect(readdir(path.join(dataDir, "secrets-tmpfs", "r4"))).rejects.toThrow(/ENOENT/);
    const twice = files.prepare(
      spec("r3", [dbSecret, { ...appConfig, mountPath: "/run/secrets/db" }]),
    );
    await expect(twice).rejects.toThrow(/two secrets or configs are mounted at \/run\/secrets\/db/);
  });

  it("REQ-063: a newer version announced swaps the files in place; restart configs and current versions are left alone", async () => {
    const { dataDir } = await filesIn();
    const coordinator = fakeCoordinator({
      "secret/db": content(1, { password: "pw-1" }),
      "config/app": content(1, { "app.yaml": "v1" }),
      "config/rolled": content(1, { "x.conf": "r1" }),
    });
    const files = new ReplicaFiles({
      dataDir,
      fetch: coordinator.fetch,
      logger: silentLogger,
      secretsOnTmpfs: false,
    });
    const rolled: ReplicaFileSource = {
      kind: "config",
      name: "rolled",
      mountPath: "/etc/rolled",
      onChange: "restart",
    };
    await files.prepare(spec("r1", [{ ...dbSecret, env: [] }, appConfig, rolled]));
    coordinator.requests.length = 0;
    coordinator.sources.set("secret/db", content(2, { password: "pw-2" }));
    coordinator.sources.set("config/app", content(2, { "app.yaml": "v2" }));
    coordinator.sources.set("config/rolled", content(2, { "x.conf": "r2" }));
    await files.sourcesChanged([
      { kind: "secret", namespace: "default", name: "db", version: 2n },
      { kind: "config", namespace: "default", name: "app", version: 2n },
      { kind: "config", namespace: "default", name: "rolled", version: 2n },
      // Another namespace's secret of the same name is not this one.
      { kind: "secret", namespace: "other", name: "db", version: 9n },
    ]);
    const secretDir = files.sourceDir("r1", dbSecret);
    expect(await readFile(path.join(secretDir, "password"), "utf8")).toBe("pw-2");
    expect(await readFile(path.join(files.sourceDir("r1", appConfig), "app.yaml"), "utf8")).toBe(
      "v2",
    );
    expect(await readFile(path.join(files.sourceDir("r1", rolled), "x.conf"), "utf8")).toBe("r1");
    expect(coordinator.requests.map((r) => `${r.kind}/${r.name}`).sort()).toEqual([
      "config/app",
      "secret/db",
    ]);
    // Announced again at the same version: nothing is read.
    coordinator.requests.length = 0;
    await files.sourcesChanged([{ kind: "secret", namespace: "default", name: "db", version: 2n }]);
    expect(coordinator.requests).toEqual([]);
  });

  it("REQ-063: retain adopts wanted replicas (for updates after an agent restart) and removes the others' files", async () => {
    const { dataDir } = await filesIn();
    const coordinator = fakeCoordinator({ "secret/db": content(1, { password: "pw-1" }) });
    const options = {
      dataDir,
      fetch: coordinator.fetch,
      logger: silentLogger,
      secretsOnTmpfs: false,
    };
    const before = new ReplicaFiles(options);
    const keep = spec("keep", [{ ...dbSecret, env: [] }]);
    await before.prepare(keep);
    await before.prepare(spec("gone", [{ ...dbSecret, env: [] }]));
    // A new agent (restart) knows nothing until the desired set arrives.
    const after = new ReplicaFiles(options);
    const notStarted = spec("not-started", [{ ...dbSecret, env: [] }]);
    await after.retain([keep, notStarted]);
    expect(await readdir(path.join(dataDir, "secrets-tmpfs"))).toEqual(["keep"]);
    // The version on disk is known: announcing it again reads nothing; a replica whose
    // files are not written yet is not fetched for (its start does that).
    coordinator.requests.length = 0;
    await after.sourcesChanged([{ kind: "secret", namespace: "default", name: "db", version: 1n }]);
    expect(coordinator.requests).toEqual([]);
    coordinator.sources.set("secret/db", content(2, { password: "pw-2" }));
    await after.sourcesChanged([{ kind: "secret", namespace: "default", name: "db", version: 2n }]);
    expect(await readFile(path.join(after.sourceDir("keep", dbSecret), "password"), "utf8")).toBe(
      "pw-2",
    );
    expect(coordinator.requests.map((request) => request.replicaId)).toEqual(["keep"]);
    await after.remove("keep");
    expect(await readdir(path.join(dataDir, "secrets-tmpfs"))).toEqual([]);
  });
});

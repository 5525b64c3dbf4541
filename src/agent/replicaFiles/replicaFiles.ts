/**
 * Secrets and configs delivered into replicas (REQ-063, ADR 0055). One mechanism for both
 * (a source kind): before a replica starts, each source it references is fetched from the
 * coordinator (ReadReplicaSecret / ReadReplicaConfig, which check that this node runs the
 * replica) and written as one file per key into a directory of its own, swapped
 * atomically (atomicDir.ts); the driver binds that directory read-only at the mount path.
 * Secrets go to a tmpfs, 0400 files and 0500 dirs owned by the replica's user; configs to
 * the data dir, 0444. When the coordinator says a source has a newer version, the files
 * of running replicas are swapped in place (no restart); configs with onChange: restart
 * are left to the coordinator's rolling restart. Values are held only while being
 * written, and never logged: errors name the source and the key.
 */
import { chmod, lchown, lstat, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { limits } from "../../api/limits.js";
import type { Logger } from "../../observe/logger.js";
import type { ReadOnlyMount, ReplicaFileSource, ReplicaRunSpec } from "../drivers/driver.js";
import { type FileOwner, keyProblem, writeAtomicDir } from "./atomicDir.js";
import { ensureSecretsTmpfs, releaseSecretsTmpfs } from "./secretsTmpfs.js";

export type SourceKind = ReplicaFileSource["kind"];

export interface SourceRequest {
  kind: SourceKind;
  namespace: string;
  workload: string;
  replicaId: string;
  name: string;
}

export interface SourceContent {
  version: bigint;
  data: Record<string, Uint8Array>;
}

/** Reads a source for a replica from the coordinator; rejects with a one-line reason. */
export type FetchSource = (request: SourceRequest, signal: AbortSignal) => Promise<SourceContent>;

/** Why a replica's files could not be made; `reason` is the replica status word. */
export class ReplicaFilesError extends Error {
  constructor(
    readonly reason:
      | "SecretUnavailable"
      | "ConfigUnavailable"
      | "SecretKeyMissing"
      | "InvalidFiles",
    message: string,
  ) {
    super(message);
    this.name = "ReplicaFilesError";
  }
}

export interface ReplicaFilesOptions {
  dataDir: string;
  fetch: FetchSource;
  logger: Logger;
  /** Put secrets on a tmpfs of their own (default true; needs root). */
  secretsOnTmpfs?: boolean;
  /** Deadline of one fetch from the coordinator. */
  fetchTimeoutMs?: number;
  /** Called when a replica is no longer tracked (its token is dropped, ADR 0058). */
  onReplicaGone?: (replicaId: string) => void;
}

/** A change of version the coordinator announced (names and versions, never values). */
export interface SourceVersion {
  kind: SourceKind;
  namespace: string;
  name: string;
  version: bigint;
}

/** A replica whose files this agent made or found, and what each source's files hold. */
interface TrackedReplica {
  spec: ReplicaRunSpec;
  /** Source key (kind/name) → version written; absent: unknown (found after a restart). */
  versions: Map<string, bigint>;
}

const defaultFetchTimeoutMs = 10_000;
/** Sources per replica: the spec's limits allow far fewer (secretsPerWorkload + configsPerWorkload). */
const maxSourcesPerReplica = 128;
/** Replicas tracked: a node runs far fewer; bounds the index if a desired set is absurd. */
const maxTrackedReplicas = 10_000;
/** Replica ids are the only names used as directory names here: no path tricks. */
const replicaIdPattern = /^[a-zA-Z0-9][-a-zA-Z0-9_.]{0,127}$/;

const modes = {
  secret: { fileMode: 0o400, dirMode: 0o500 },
  config: { fileMode: 0o444, dirMode: 0o555 },
} as const;

export class ReplicaFiles {
  readonly secretsRoot: string;
  readonly configsRoot: string;
  private readonly tracked = new Map<string, TrackedReplica>();
  /** Per replica, the tail of its chain of file work: a start and an update never interleave. */
  private readonly chains = new Map<string, Promise<void>>();
  private readonly fetchTimeoutMs: number;

  constructor(private readonly options: ReplicaFilesOptions) {
    const dataDir = path.resolve(options.dataDir);
    this.secretsRoot = path.join(dataDir, "secrets-tmpfs");
    this.configsRoot = path.join(dataDir, "replica-configs");
    this.fetchTimeoutMs = options.fetchTimeoutMs ?? defaultFetchTimeoutMs;
  }

  /**
   * Fetches and writes every source the replica references, and returns what the driver
   * needs: the mounts and the environment variables from secret keys. Throws a
   * ReplicaFilesError naming the source (and key) when it cannot; the replica then does
   * not start and the supervisor retries with back-off.
   */
  prepare(
    spec: ReplicaRunSpec,
    owner?: FileOwner,
  ): Promise<{ mounts: ReadOnlyMount[]; env: Record<string, string> }> {
    return this.serialize(spec.replicaId, () => this.prepareLocked(spec, owner));
  }

  private async prepareLocked(
    spec: ReplicaRunSpec,
    owner: FileOwner | undefined,
  ): Promise<{ mounts: ReadOnlyMount[]; env: Record<string, string> }> {
    const sources = spec.files ?? [];
    if (sources.length === 0) return { mounts: [], env: {} };
    checkReplicaId(spec.replicaId);
    if (sources.length > maxSourcesPerReplica) {
      throw new ReplicaFilesError(
        "InvalidFiles",
        `replica references ${sources.length} secrets and configs; at most ${maxSourcesPerReplica}`,
      );
    }
    const targets = new Set<string>();
    for (const source of sources) {
      if (targets.has(source.mountPath)) {
        throw new ReplicaFilesError(
          "InvalidFiles",
          `two secrets or configs are mounted at ${source.mountPath}; give each its own mountPath`,
        );
      }
      targets.add(source.mountPath);
    }
    const tracked: TrackedReplica = this.tracked.get(spec.replicaId) ?? {
      spec,
      versions: new Map(),
    };
    tracked.spec = spec;
    const mounts: ReadOnlyMount[] = [];
    const env: Record<string, string> = {};
    for (const source of sources) {
      const content = await this.fetchSource(spec, source);
      for (const entry of source.env ?? []) {
        const value = content.data[entry.key];
        if (value === undefined) {
          throw new ReplicaFilesError(
            "SecretKeyMissing",
            `secret ${source.name} has no key "${entry.key}" for environment variable ${entry.name}; add the key to the secret or fix spec.secrets`,
          );
        }
        const text = Buffer.from(value).toString("utf8");
        if (text.includes("\0")) {
          throw new ReplicaFilesError(
            "InvalidFiles",
            `key "${entry.key}" of secret ${source.name} holds a NUL byte and cannot be environment variable ${entry.name}; mount it as a file instead`,
          );
        }
        env[entry.name] = text;
      }
      const dir = this.sourceDir(spec.replicaId, source);
      await this.write(source, dir, content, owner);
      tracked.versions.set(sourceKey(source), content.version);
      mounts.push({ source: dir, target: source.mountPath });
    }
    this.track(spec.replicaId, tracked);
    return { mounts, env };
  }

  /**
   * The coordinator announced versions: every tracked replica that references one of
   * these sources and holds an older (or unknown) version gets the new files in place.
   * onChange: restart configs are skipped (the coordinator rolls those replicas).
   * Failures are logged and retried at the next announcement; running replicas keep
   * their current files meanwhile.
   */
  async sourcesChanged(versions: readonly SourceVersion[]): Promise<void> {
    // A whole cluster's versions arrive when a stream opens: one lookup per source.
    const announcedBySource = new Map(
      versions.map((version) => [`${version.kind}/${version.namespace}/${version.name}`, version]),
    );
    const work: Promise<void>[] = [];
    for (const [replicaId, tracked] of this.tracked) {
      for (const source of tracked.spec.files ?? []) {
        if (source.kind === "config" && source.onChange === "restart") continue;
        const announced = announcedBySource.get(
          `${source.kind}/${tracked.spec.namespace}/${source.name}`,
        );
        if (!announced) continue;
        const held = tracked.versions.get(sourceKey(source));
        if (held !== undefined && held >= announced.version) continue;
        work.push(
          this.serialize(replicaId, () => this.refresh(replicaId, source)).catch((error: unknown) =>
            this.options.logger.warn(
              {
                replica: replicaId,
                kind: source.kind,
                source: source.name,
                reason: errorText(error),
              },
              `cannot update the ${source.kind}'s files in a running replica; it keeps the previous version`,
            ),
          ),
        );
      }
    }
    await Promise.all(work);
  }

  private async refresh(replicaId: string, source: ReplicaFileSource): Promise<void> {
    const tracked = this.tracked.get(replicaId);
    if (!tracked) return;
    const dir = this.sourceDir(replicaId, source);
    const content = await this.fetchSource(tracked.spec, source);
    // Owner: whoever owns the directory now (the replica's user, given at its start).
    await this.write(source, dir, content, undefined);
    tracked.versions.set(sourceKey(source), content.version);
    this.options.logger.info(
      {
        replica: replicaId,
        kind: source.kind,
        source: source.name,
        version: String(content.version),
      },
      `updated the ${source.kind}'s files in a running replica`,
    );
  }

  /**
   * The replicas this node should run: their specs are remembered (a replica adopted
   * after an agent restart gets in-place updates too) and the files of every replica
   * neither wanted nor `stillThere` (being stopped; removed later by remove()) go.
   */
  async retain(
    specs: readonly ReplicaRunSpec[],
    stillThere: (replicaId: string) => boolean = () => false,
  ): Promise<void> {
    const wanted = new Map(specs.map((spec) => [spec.replicaId, spec]));
    for (const [replicaId, spec] of wanted) {
      if (!spec.files || spec.files.length === 0) continue;
      const tracked = this.tracked.get(replicaId);
      if (tracked) {
        tracked.spec = spec;
        continue;
      }
      // Found after an agent restart: the versions its files hold. A replica with none
      // written yet is left to prepare() (no fetch before it starts).
      const versions = new Map<string, bigint>();
      for (const source of spec.files) {
        const version = await readVersion(this.sourceDir(replicaId, source));
        if (version !== undefined) versions.set(sourceKey(source), version);
      }
      if (versions.size > 0) this.track(replicaId, { spec, versions });
    }
    for (const replicaId of [...this.tracked.keys()]) {
      if (!wanted.has(replicaId)) {
        this.tracked.delete(replicaId);
        this.options.onReplicaGone?.(replicaId);
      }
    }
    for (const root of [this.secretsRoot, this.configsRoot]) {
      const entries = await readdir(root).catch(() => [] as string[]);
      for (const entry of entries) {
        if (wanted.has(entry) || stillThere(entry)) continue;
        await this.serialize(entry, () =>
          rm(path.join(root, entry), { recursive: true, force: true }),
        );
      }
    }
  }

  /** Removes one replica's files (it was removed). */
  remove(replicaId: string): Promise<void> {
    this.tracked.delete(replicaId);
    this.options.onReplicaGone?.(replicaId);
    return this.serialize(replicaId, async () => {
      for (const root of [this.secretsRoot, this.configsRoot]) {
        await rm(path.join(root, replicaId), { recursive: true, force: true });
      }
    });
  }

  /**
   * The agent stops: the secrets tmpfs is unmounted only when no replica has files in it
   * (running replicas outlive the agent, ADR 0031, and keep seeing their files).
   */
  async close(): Promise<void> {
    await Promise.allSettled([...this.chains.values()]);
    if (this.options.secretsOnTmpfs === false) return;
    try {
      await releaseSecretsTmpfs(this.secretsRoot);
    } catch (error) {
      this.options.logger.warn(
        { dir: this.secretsRoot, reason: errorText(error) },
        "cannot unmount the secrets tmpfs",
      );
    }
  }

  /** Where a source's files are for a replica (its bind-mount source). */
  sourceDir(replicaId: string, source: Pick<ReplicaFileSource, "kind" | "name">): string {
    checkReplicaId(replicaId);
    const root = source.kind === "secret" ? this.secretsRoot : this.configsRoot;
    return path.join(root, replicaId, source.name);
  }

  private async write(
    source: ReplicaFileSource,
    dir: string,
    content: SourceContent,
    owner: FileOwner | undefined,
  ): Promise<void> {
    // The coordinator checks these limits at create; checked again before anything is
    // written, so a wrong answer cannot fill the tmpfs (limits.ts).
    const entries = Object.entries(content.data);
    const maxKeys =
      source.kind === "secret" ? limits.secretKeysPerSecret : limits.configKeysPerConfig;
    const maxBytes = source.kind === "secret" ? limits.secretTotalBytes : limits.configTotalBytes;
    const totalBytes = entries.reduce((sum, [, value]) => sum + value.byteLength, 0);
    if (entries.length > maxKeys || totalBytes > maxBytes) {
      throw new ReplicaFilesError(
        "InvalidFiles",
        `${source.kind} ${source.name} has ${entries.length} keys and ${totalBytes} bytes; at most ${maxKeys} keys and ${maxBytes} bytes`,
      );
    }
    const files = new Map<string, Uint8Array>();
    for (const [key, value] of entries) {
      const problem = keyProblem(key);
      if (problem)
        throw new ReplicaFilesError("InvalidFiles", `${source.kind} ${source.name}: ${problem}`);
      files.set(key, value);
    }
    if (source.kind === "secret" && this.options.secretsOnTmpfs !== false) {
      await ensureSecretsTmpfs(this.secretsRoot);
    }
    // The kind's root: replicas' users pass through (bwrap binds as them), never list it.
    const kindRoot = source.kind === "secret" ? this.secretsRoot : this.configsRoot;
    await mkdir(kindRoot, { recursive: true, mode: 0o711 });
    await chmod(kindRoot, 0o711);
    const replicaDir = path.dirname(dir);
    // The replica's own dir: its user passes through it to the source dirs (bwrap binds
    // as that user); nobody else can.
    await writeAtomicDir(dir, files, { ...modes[source.kind], ...(owner ? { owner } : {}) });
    // Beside the mounted dir (the replica never sees it): what a restarted agent compares
    // announced versions with. Source names are DNS labels, so "<name>.version" is free.
    await writeFile(`${dir}.version`, String(content.version), { mode: 0o600 });
    await ownLike(replicaDir, dir);
  }

  private async fetchSource(
    spec: ReplicaRunSpec,
    source: ReplicaFileSource,
  ): Promise<SourceContent> {
    const signal = AbortSignal.timeout(this.fetchTimeoutMs);
    try {
      return await this.options.fetch(
        {
          kind: source.kind,
          namespace: spec.namespace,
          workload: spec.workload,
          replicaId: spec.replicaId,
          name: source.name,
        },
        signal,
      );
    } catch (error) {
      throw new ReplicaFilesError(
        source.kind === "secret" ? "SecretUnavailable" : "ConfigUnavailable",
        `cannot read ${source.kind} ${source.name} from the coordinator: ${errorText(error)}`,
      );
    }
  }

  private track(replicaId: string, tracked: TrackedReplica): void {
    if (!this.tracked.has(replicaId) && this.tracked.size >= maxTrackedReplicas) {
      throw new ReplicaFilesError(
        "InvalidFiles",
        `this agent already tracks ${maxTrackedReplicas} replicas with secrets or configs`,
      );
    }
    this.tracked.set(replicaId, tracked);
  }

  private serialize<T>(replicaId: string, work: () => Promise<T>): Promise<T> {
    const previous = this.chains.get(replicaId) ?? Promise.resolve();
    const result = previous.then(work, work);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.chains.set(replicaId, tail);
    void tail.then(() => {
      if (this.chains.get(replicaId) === tail) this.chains.delete(replicaId);
    });
    return result;
  }
}

/** Gives `parent` the owner of `child` and mode 0500 (secrets) / 0555 (configs) alike. */
async function ownLike(parent: string, child: string): Promise<void> {
  const info = await lstat(child);
  await lchown(parent, info.uid, info.gid);
  await chmod(parent, info.mode & 0o777);
}

/** The version a source's files hold, from its ".version" file; undefined when unknown. */
async function readVersion(dir: string): Promise<bigint | undefined> {
  try {
    const text = (await readFile(`${dir}.version`, "utf8")).trim();
    return /^\d{1,20}$/.test(text) ? BigInt(text) : undefined;
  } catch {
    return undefined;
  }
}

function sourceKey(source: Pick<ReplicaFileSource, "kind" | "name">): string {
  return `${source.kind}/${source.name}`;
}

function checkReplicaId(replicaId: string): void {
  if (!replicaIdPattern.test(replicaId)) {
    throw new ReplicaFilesError(
      "InvalidFiles",
      `replica id "${replicaId.slice(0, 64)}" is not valid`,
    );
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// biome-ignore lint/style/noRestrictedImports: the coordinator id must differ from every other coordinator's, seeded or not
import { randomBytes } from "node:crypto";
import { access, chmod, mkdir, readFile } from "node:fs/promises";
import { hostname, networkInterfaces } from "node:os";
import * as path from "node:path";
import { stringify } from "yaml";
import { z } from "zod";
import { CloudlessError } from "../api/errors.js";
import { spiffeUri } from "../api/identity.js";
import { writeSecretFile } from "../lib/atomicFile.js";
import { type Clock, systemClock } from "../lib/clock.js";
import { acquirePidLock, DirectoryInUseError } from "../lib/pidLock.js";
import { describeTightened, type TightenedFile, tightenFileMode } from "../lib/privateFiles.js";
import { decodeRecord } from "../lib/recordCodec.js";
import { type Rng, systemRng } from "../lib/rng.js";
import type { Logger } from "../observe/logger.js";
import { silentLogger } from "../observe/logger.js";
import { type CoordinatorMetrics, createCoordinatorMetrics } from "../observe/metrics.js";
import type { Leadership } from "./api/context.js";
import { type ApiServer, startApiServer } from "./api/server.js";
import { auditKey } from "./audit/auditModule.js";
import type { EventLog } from "./events/eventLog.js";
import { eventsKey } from "./events/eventsModule.js";
import {
  CoordinatorRegistry,
  coordinatorsPrefix,
  registrationRecordSchema,
} from "./leader/coordinatorRegistry.js";
import { FencedStore } from "./leader/fencedStore.js";
import {
  LeaderElection,
  type LeaderInfo,
  leaderInfoSchema,
  leaderKey,
} from "./leader/leaderElection.js";
import { nodeRegistryKey } from "./membership/membershipModule.js";
import type { MembershipConfig } from "./membership/membershipTracker.js";
import { coordinatorModules } from "./modules/index.js";
import { type ModuleHost, startModules } from "./modules/moduleHost.js";
import type { NodeRegistry } from "./nodes/nodeRegistry.js";
import { nodeStreamsKey } from "./nodes/nodesModule.js";
import { CA_KEY_FILE, type CertificateAuthority, loadOrCreateCa } from "./security/pki.js";
import {
  installSharedCa,
  readClusterSecret,
  readSealedCa,
  removeLocalCa,
  sealCa,
  sharedCaKey,
} from "./security/sharedCa.js";
import { InstrumentedStore } from "./store/instrumentedStore.js";
import { openSqliteStore } from "./store/sqliteStore.js";
import type { Store } from "./store/store.js";
import type { TokenRegistry } from "./tokens/tokenRegistry.js";
import { tokensKey } from "./tokens/tokensModule.js";
import { usersKey } from "./users/usersModule.js";

export interface CoordinatorOptions {
  dataDir: string;
  host: string;
  port: number;
  clusterName: string;
  /** Extra names and addresses for the server certificate. */
  subjectAltNames?: string[];
  /** The URL written into admin.conf; defaults to https://<host or 127.0.0.1>:<port>. */
  advertiseUrl?: string;
  membership?: Partial<Omit<MembershipConfig, "detector">>;
  /** The heartbeat interval the failure detector assumes before it has measured one. */
  heartbeatEstimateMs?: number;
  nodeCertTtlMs?: number;
  /**
   * Where cluster state lives: "sqlite" (default; DATA/store.db, one coordinator) or
   * "etcd://host1:2379,host2:2379[/prefix]" (several coordinators share it, one leads).
   */
  store?: string;
  /**
   * With etcd: the file holding the secret that seals the cluster CA in the store.
   * Default DATA/cluster-secret; the first coordinator creates it, the others need a copy.
   */
  clusterSecretFile?: string;
  /**
   * A file of secrets key-encryption keys, one base64 key per line, the first active
   * (ADR 0052): every coordinator of an HA cluster needs the same file.
   */
  secretsKeyFile?: string;
  /** The same keys from CLOUDLESS_SECRETS_KEY (comma-separated); the file wins. */
  secretsKeyEnv?: string;
  /** How long a dead leader keeps the role before another coordinator takes over. */
  leaderLeaseTtlMs?: number;
  /** The rebalancer (ADR 0035): on by default; the cool-down between moves of a workload. */
  rebalance?: { enabled?: boolean; cooldownMs?: number };
  /** Services' virtual IPs come from this IPv4 range (default 10.43.0.0/16; ADR 0048). */
  serviceCidr?: string;
  /** Services are named `<name>.<namespace>.svc.<clusterDomain>` (default cluster.local). */
  clusterDomain?: string;
  clock?: Clock;
  rng?: Rng;
  logger?: Logger;
}

export interface Coordinator {
  url: string;
  port: number;
  clusterName: string;
  adminConfigPath: string;
  caFingerprint: string;
  /** This coordinator's identity in the leader election (persisted in the data dir). */
  id: string;
  /** What `cloudless up` and the simulator read of a running coordinator. */
  services: {
    tokens: TokenRegistry;
    nodes: NodeRegistry;
    nodeStreams: ReadonlyMap<string, ReadonlySet<AbortController>>;
  };
  /** Resolves once this coordinator has become leader (tests). */
  isLeader(): boolean;
  stop(): Promise<void>;
}

const clusterKey = "/cluster/info";
const serverCertTtlMs = 90 * 24 * 3600 * 1000;
const adminCertTtlMs = 365 * 24 * 3600 * 1000;
const maintenanceIntervalMs = 60_000;
const defaultLeaderLeaseTtlMs = 5_000;

interface ClusterInfo {
  name: string;
  createdAtMs: number;
  caFingerprint: string;
}

const clusterInfoSchema: z.ZodType<ClusterInfo> = z.looseObject({
  name: z.string(),
  createdAtMs: z.number(),
  caFingerprint: z.string(),
});

/** Starts a coordinator: store, CA, API listener, leader election, membership. */
export async function startCoordinator(options: CoordinatorOptions): Promise<Coordinator> {
  const clock = options.clock ?? systemClock;
  const logger = options.logger ?? silentLogger;
  const dataDir = path.resolve(options.dataDir);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  // Private files are written 0600; one copied in or left by an older version may be
  // open to others. Set to 0600 and said, rather than refused: the data is ours.
  const warnTightened = (tightened: TightenedFile) =>
    logger.warn({ file: tightened.file }, describeTightened(tightened));
  for (const name of [
    path.join("pki", CA_KEY_FILE),
    "admin.conf",
    "coordinator-id",
    "cluster-secret",
  ]) {
    const file = path.join(dataDir, name);
    const tightened = await tightenFileMode(file).catch((error: unknown) => {
      logger.warn({ file, err: error }, `${file} may be readable by other users; chmod 600 it`);
      return undefined;
    });
    if (tightened) warnTightened(tightened);
  }

  const metrics = createCoordinatorMetrics();
  const storeUrl = options.store ?? "sqlite";
  let releaseLock: (() => Promise<void>) | undefined;
  let inner: Store;
  if (storeUrl === "sqlite") {
    // The SQLite store locks its own file: one coordinator per data dir.
    inner = await openSqliteStore({
      path: path.join(dataDir, "store.db"),
      clock,
      onFileTightened: warnTightened,
    });
  } else if (storeUrl.startsWith("etcd://")) {
    const lock = await acquirePidLock(
      path.join(dataDir, "coordinator.lock"),
      `coordinator data dir ${dataDir}`,
    ).catch((error: unknown) => {
      throw error instanceof DirectoryInUseError
        ? CloudlessError.unavailable(error.message)
        : error;
    });
    releaseLock = () => lock.release();
    try {
      // Loaded only here: etcd3 and gRPC cost ~20 MiB that a SQLite coordinator never needs.
      const { openEtcdStore, parseEtcdStoreUrl } = await import("./store/etcdStore.js");
      const parsed = parseEtcdStoreUrl(storeUrl);
      inner = await openEtcdStore({ ...parsed, clock, rng: options.rng ?? systemRng });
    } catch (error) {
      await lock.release();
      throw error;
    }
  } else {
    throw CloudlessError.invalid(
      `--store ${JSON.stringify(storeUrl)} is not a store; use "sqlite" or "etcd://host1:2379,host2:2379"`,
    );
  }
  const store = new InstrumentedStore(inner, metrics);
  try {
    return await startWithStore(options, store, dataDir, clock, logger, metrics, releaseLock);
  } catch (error) {
    await store.close();
    await releaseLock?.();
    throw error;
  }
}

async function startWithStore(
  options: CoordinatorOptions,
  store: Store,
  dataDir: string,
  clock: Clock,
  logger: Logger,
  metrics: CoordinatorMetrics,
  releaseLock: (() => Promise<void>) | undefined,
): Promise<Coordinator> {
  const { ca, clusterName } =
    store.backend === "etcd"
      ? await bootstrapSharedCluster(options, store, dataDir, clock, logger)
      : await bootstrapLocalCluster(options, store, dataDir, clock, logger);
  const id = await loadOrCreateCoordinatorId(dataDir);

  const serverCert = await ca.issueKeyPair({
    subjectName: "cloudless-coordinator",
    spiffeUri: spiffeUri(clusterName, "coordinator", coordinatorName()),
    ttlMs: serverCertTtlMs,
    nowMs: clock.nowMs(),
    usage: "clientAndServer",
    ...splitNames(options),
  });

  // The leader's work writes through the fence (NFR-R1); API handlers write through the
  // plain store from any coordinator.
  const leaderStore = new FencedStore(store);
  let election: LeaderElection | undefined;
  const leadership: Leadership = {
    get isLeader() {
      return election?.isLeader ?? false;
    },
    get leaderUrl() {
      return election?.leader?.url;
    },
    get leaderId() {
      return election?.leader?.id;
    },
  };
  const modules = await startModules(coordinatorModules, {
    clusterName,
    coordinatorId: id,
    dataDir,
    store,
    leaderStore,
    ca,
    clock,
    rng: options.rng ?? systemRng,
    logger,
    metrics,
    leadership,
    options,
  });
  const events = modules.use(eventsKey);
  const nodes = modules.use(nodeRegistryKey);
  metrics.setStateSource(modules.stateSource());

  let server: ApiServer;
  try {
    server = await startApiServer(
      {
        clusterName,
        store,
        nodes,
        users: modules.use(usersKey),
        events,
        audit: modules.use(auditKey),
        audited: modules.audited(),
        clock,
        rng: options.rng ?? systemRng,
        logger,
        metrics,
        routes: (router) => modules.routes(router),
        streamRoutes: modules.streamRoutes(),
      },
      {
        host: options.host,
        port: options.port,
        tls: { keyPem: serverCert.keyPem, certPem: serverCert.certPem, caPem: ca.certPem },
      },
    );
  } catch (error) {
    await modules.stop();
    await releaseLock?.();
    throw explainListenError(error, options);
  }
  const url =
    options.advertiseUrl ??
    `https://${formatHost(options.host === "0.0.0.0" || options.host === "::" ? "127.0.0.1" : options.host)}:${server.port}`;
  const registry = new CoordinatorRegistry(store, clock, logger, { id, url });
  await registry.start();
  await takeBackOwnLeadership(store, id, logger);
  election = startLeaderElection({
    store,
    clock,
    id,
    url,
    options,
    logger,
    metrics,
    leaderStore,
    modules,
    events,
  });
  await election.start();

  const adminConfigPath = path.join(dataDir, "admin.conf");
  await writeClusterAdminConfig({ store, ca, clusterName, url, clock, adminConfigPath });

  let stopMaintenance = clock.setTimeout(function maintain() {
    // Housekeeping is the leader's job; followers would only race it.
    const due = election?.isLeader ? modules.maintain() : Promise.resolve();
    due
      .catch((error: unknown) => logger.warn({ err: error }, "maintenance failed"))
      .finally(() => {
        stopMaintenance = clock.setTimeout(maintain, maintenanceIntervalMs);
      });
  }, maintenanceIntervalMs);

  const everyInterface = options.host === "0.0.0.0" || options.host === "::";
  logger.info(
    { url, host: options.host, port: server.port, cluster: clusterName },
    everyInterface
      ? `coordinator listening on every interface (${options.host}), for agents on other machines; --host 127.0.0.1 keeps it on this machine`
      : `coordinator listening on ${options.host} only`,
  );
  await events.record({
    type: "CoordinatorStarted",
    category: "operations",
    subject: `coordinator/${id}`,
    reason: "Started",
    message: `coordinator ${id} listening on ${url} (store: ${store.backend})`,
  });

  let stopped = false;
  return {
    url,
    port: server.port,
    clusterName,
    adminConfigPath,
    caFingerprint: ca.fingerprintSha256,
    id,
    services: {
      tokens: modules.use(tokensKey),
      nodes,
      nodeStreams: modules.use(nodeStreamsKey),
    },
    isLeader: () => election?.isLeader ?? false,
    async stop() {
      if (stopped) return;
      stopped = true;
      stopMaintenance();
      registry.stop();
      // Stepping down revokes the lease, so a follower takes over at once.
      await election?.stop();
      await modules.onFollower();
      await server.close();
      await modules.stop();
      await store.close();
      await releaseLock?.();
    },
  };
}

/**
 * The lease that makes one coordinator the leader (NFR-R1): on election the fence goes on
 * the leader's store and every module starts its leader work; on demotion they stop it.
 */
function startLeaderElection(deps: {
  store: Store;
  clock: Clock;
  id: string;
  url: string;
  options: CoordinatorOptions;
  logger: Logger;
  metrics: CoordinatorMetrics;
  leaderStore: FencedStore;
  modules: ModuleHost;
  events: EventLog;
}): LeaderElection {
  const { store, clock, id, url, options, logger, metrics, leaderStore, modules, events } = deps;
  const electedMessage = (info: LeaderInfo | undefined) =>
    info ? `coordinator ${info.id} at ${info.url}` : "none";
  const election: LeaderElection = new LeaderElection({
    store,
    clock,
    id,
    url,
    ttlMs: options.leaderLeaseTtlMs ?? defaultLeaderLeaseTtlMs,
    logger: logger.child({ component: "leader" }),
    onElected: async (fence) => {
      leaderStore.setFence(fence);
      metrics.leader.set(1);
      metrics.leaderElections.inc();
      await modules.onLeader();
      logger.info({ id, url }, "this coordinator is now the leader");
      await events
        .record({
          type: "LeaderElected",
          category: "operations",
          subject: `coordinator/${id}`,
          reason: "Elected",
          message: `coordinator ${id} at ${url} leads: it runs the scheduler and controllers and receives heartbeats`,
        })
        .catch((error: unknown) => logger.warn({ err: error }, "could not record LeaderElected"));
    },
    onDemoted: async () => {
      leaderStore.setFence(undefined);
      metrics.leader.set(0);
      await modules.onFollower();
      logger.warn(
        { id, leader: electedMessage(election.leader) },
        "this coordinator is no longer the leader",
      );
    },
  });
  return election;
}

/** admin.conf for the operator's CLI, unless one is there: every coordinator, this one first. */
async function writeClusterAdminConfig(deps: {
  store: Store;
  ca: CertificateAuthority;
  clusterName: string;
  url: string;
  clock: Clock;
  adminConfigPath: string;
}): Promise<void> {
  const { store, ca, clusterName, url, clock, adminConfigPath } = deps;
  // Every coordinator of the cluster, this one first: the CLI fails over between them.
  const peers = (await store.range(coordinatorsPrefix)).kvs
    .map((kv) => decodeRecord(registrationRecordSchema, kv.key, kv.value).url)
    .filter((peer): peer is string => peer !== undefined && peer !== url);
  await writeAdminConfigIfMissing(adminConfigPath, {
    clusterName,
    servers: [url, ...new Set(peers)],
    caPem: ca.certPem,
    issue: () =>
      ca.issueKeyPair({
        subjectName: "admin",
        spiffeUri: spiffeUri(clusterName, "admin", "admin"),
        ttlMs: adminCertTtlMs,
        nowMs: clock.nowMs(),
        usage: "client",
      }),
  });
}

/** A listen failure the operator can act on, said in one line; anything else as it is. */
function explainListenError(error: unknown, options: CoordinatorOptions): unknown {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === "EADDRINUSE") {
    return CloudlessError.unavailable(
      `port ${options.port} on ${options.host} is already in use; stop what uses it or pass --port`,
    );
  }
  if (code === "EACCES") {
    return CloudlessError.permissionDenied(
      `not allowed to listen on ${options.host}:${options.port}; choose a port above 1024 with --port`,
    );
  }
  return error;
}

function splitNames(options: CoordinatorOptions): { dnsNames: string[]; ipAddresses: string[] } {
  const dnsNames = new Set(["localhost", hostname()]);
  const ipAddresses = new Set(["127.0.0.1", "::1"]);
  if (options.host !== "0.0.0.0" && options.host !== "::") ipAddresses.add(options.host);
  else {
    for (const list of Object.values(networkInterfaces())) {
      for (const address of list ?? []) ipAddresses.add(address.address);
    }
  }
  for (const name of options.subjectAltNames ?? []) {
    if (/^[0-9.]+$/.test(name) || name.includes(":")) ipAddresses.add(name);
    else dnsNames.add(name);
  }
  return { dnsNames: [...dnsNames], ipAddresses: [...ipAddresses] };
}

/** A valid identity name derived from the host name. */
function coordinatorName(): string {
  const name = hostname()
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 63)
    .replace(/-+$/, "");
  return name || "coordinator";
}

function formatHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

/** The client configuration `cloudless` commands read (like a kubeconfig). */
export interface ClientConfigFile {
  apiVersion: "cloudless/v1";
  kind: "ClientConfig";
  cluster: string;
  servers: string[];
  ca: string;
  cert: string;
  key: string;
}

async function writeAdminConfigIfMissing(
  configPath: string,
  options: {
    clusterName: string;
    servers: string[];
    caPem: string;
    issue: () => Promise<{ certPem: string; keyPem: string }>;
  },
): Promise<void> {
  try {
    await access(configPath);
    // Keep the credential, but point it at where the coordinator listens now.
    const current = await readFile(configPath, "utf8");
    const list = options.servers.map((server) => `  - ${server}\n`).join("");
    const updated = current.replace(/^servers:\n(\s+- .*\n)+/m, `servers:\n${list}`);
    if (updated !== current) await writeSecretFile(configPath, updated);
    await chmod(configPath, 0o600);
    return;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  const admin = await options.issue();
  const config: ClientConfigFile = {
    apiVersion: "cloudless/v1",
    kind: "ClientConfig",
    cluster: options.clusterName,
    servers: options.servers,
    ca: options.caPem,
    cert: admin.certPem,
    key: admin.keyPem,
  };
  await writeSecretFile(configPath, stringify(config));
}

async function anyExists(paths: string[]): Promise<boolean> {
  const found = await Promise.all(
    paths.map((file) =>
      access(file).then(
        () => true,
        () => false,
      ),
    ),
  );
  return found.includes(true);
}

interface BootstrappedCluster {
  ca: CertificateAuthority;
  clusterName: string;
}

/** SQLite: the CA lives in DATA/pki and must match the cluster recorded in the store. */
async function bootstrapLocalCluster(
  options: CoordinatorOptions,
  store: Store,
  dataDir: string,
  clock: Clock,
  logger: Logger,
): Promise<BootstrappedCluster> {
  const existing = await store.get(clusterKey);
  const pkiDir = path.join(dataDir, "pki");
  if (existing && !(await anyExists([path.join(pkiDir, "ca.crt"), path.join(pkiDir, "ca.key")]))) {
    // A new CA here would not match the cluster's and would lock every node out.
    throw CloudlessError.invalid(
      `data dir ${dataDir} holds an existing cluster but pki/ca.crt and pki/ca.key are missing; restore pki/ from a backup — Cloudless will not create a new CA for an existing cluster`,
    );
  }
  const { ca, created } = await loadOrCreateCa(pkiDir, options.clusterName, clock.nowMs());
  if (created) logger.info({ fingerprint: ca.fingerprintSha256 }, "created cluster CA");

  let clusterName = options.clusterName;
  if (existing) {
    const info = decodeRecord(clusterInfoSchema, existing.key, existing.value);
    if (info.caFingerprint !== ca.fingerprintSha256) {
      throw CloudlessError.invalid(
        `data dir ${dataDir}: the CA in pki/ does not match the one this cluster was created with; restore pki/ from a backup`,
      );
    }
    clusterName = info.name;
  } else {
    const info: ClusterInfo = {
      name: clusterName,
      createdAtMs: clock.nowMs(),
      caFingerprint: ca.fingerprintSha256,
    };
    await store.put(clusterKey, JSON.stringify(info));
  }
  if (ca.clusterName !== clusterName) {
    throw CloudlessError.invalid(
      `data dir ${dataDir} belongs to cluster "${ca.clusterName}", not "${clusterName}"`,
    );
  }
  return { ca, clusterName };
}

/**
 * etcd: several coordinators share one cluster. The first creates the CA and publishes
 * it in the store with its private key sealed by the cluster secret (like k3s's
 * bootstrap data sealed by the server token); the others open it with a copy of that
 * secret and keep it in their own DATA/pki.
 */
async function bootstrapSharedCluster(
  options: CoordinatorOptions,
  store: Store,
  dataDir: string,
  clock: Clock,
  logger: Logger,
): Promise<BootstrappedCluster> {
  const pkiDir = path.join(dataDir, "pki");
  const secretFile = path.resolve(
    options.clusterSecretFile ?? path.join(dataDir, "cluster-secret"),
  );
  const hasLocalCa = await anyExists([path.join(pkiDir, "ca.crt"), path.join(pkiDir, "ca.key")]);
  let existing = await store.get(clusterKey);
  if (!existing && !hasLocalCa) {
    const { secret, created: secretCreated } = await readClusterSecret(secretFile, true);
    const { ca } = await loadOrCreateCa(pkiDir, options.clusterName, clock.nowMs());
    const info: ClusterInfo = {
      name: options.clusterName,
      createdAtMs: clock.nowMs(),
      caFingerprint: ca.fingerprintSha256,
    };
    const keyPem = await readFile(path.join(pkiDir, CA_KEY_FILE), "utf8");
    const sealed = await sealCa(ca.certPem, keyPem, secret);
    const published = await store.txn({
      compare: [{ key: clusterKey, target: "version", op: "==", version: 0 }],
      success: [
        { type: "put", key: clusterKey, value: JSON.stringify(info) },
        { type: "put", key: sharedCaKey, value: JSON.stringify(sealed) },
      ],
    });
    if (published.succeeded) {
      logger.info(
        { fingerprint: ca.fingerprintSha256, secretFile },
        secretCreated
          ? `created the cluster CA; other coordinators need a copy of ${secretFile} (--cluster-secret-file)`
          : "created the cluster CA, sealed with the given cluster secret",
      );
      return { ca, clusterName: info.name };
    }
    // Another coordinator created the cluster first: use its CA, not ours.
    await removeLocalCa(pkiDir);
    existing = await store.get(clusterKey);
  }
  if (!existing) {
    throw CloudlessError.invalid(
      `data dir ${dataDir} holds a CA in pki/ but the store has no cluster; point --store at this cluster's etcd or use an empty data dir`,
    );
  }
  const info = decodeRecord(clusterInfoSchema, existing.key, existing.value);
  if (!hasLocalCa) {
    const sealed = await readSealedCa(store);
    if (!sealed) {
      throw CloudlessError.invalid(
        `the store holds cluster "${info.name}" but no shared CA (${sharedCaKey}); was it created by a single SQLite coordinator? Copy pki/ from its data dir`,
      );
    }
    const { secret } = await readClusterSecret(secretFile, false);
    await installSharedCa(pkiDir, sealed, secret);
    logger.info({ fingerprint: info.caFingerprint }, "installed the cluster CA from the store");
  }
  const { ca } = await loadOrCreateCa(pkiDir, info.name, clock.nowMs());
  if (ca.fingerprintSha256 !== info.caFingerprint) {
    throw CloudlessError.invalid(
      `data dir ${dataDir}: the CA in pki/ is not this cluster's; move pki/ away and start again with the cluster secret`,
    );
  }
  return { ca, clusterName: info.name };
}

/** A stable identity per data dir: host name plus a random suffix (hosts may share names). */
async function loadOrCreateCoordinatorId(dataDir: string): Promise<string> {
  const file = path.join(dataDir, "coordinator-id");
  try {
    const id = (await readFile(file, "utf8")).trim();
    if (/^[a-z0-9][a-z0-9-]{0,62}$/.test(id)) return id;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  const id = `${coordinatorName().slice(0, 50)}-${randomBytes(3).toString("hex")}`;
  await writeSecretFile(file, `${id}\n`);
  return id;
}

/**
 * After a crash the store may still hold this coordinator's old leader key until its
 * lease runs out. The data dir is locked, so no other process has this id: the key is
 * stale and can go now instead of after the TTL.
 */
async function takeBackOwnLeadership(store: Store, id: string, logger: Logger): Promise<void> {
  const current = await store.get(leaderKey);
  if (!current) return;
  const info = decodeRecord(leaderInfoSchema, current.key, current.value);
  if (info.id !== id) return;
  await store.txn({
    compare: [
      { key: leaderKey, target: "modRevision", op: "==", modRevision: current.modRevision },
    ],
    success: [{ type: "delete", key: leaderKey }],
  });
  logger.info({ id }, "removed this coordinator's leader key left from before a restart");
}

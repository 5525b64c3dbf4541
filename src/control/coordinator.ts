import { access, chmod, mkdir, readFile } from "node:fs/promises";
import { hostname, networkInterfaces } from "node:os";
import * as path from "node:path";
import { stringify } from "yaml";
import { type Clock, systemClock } from "../lib/clock.js";
import { CloudlessError } from "../lib/errors.js";
import { mathRng, type Rng } from "../lib/rng.js";
import { AuditLog } from "../observe/audit.js";
import type { Logger } from "../observe/logger.js";
import { silentLogger } from "../observe/logger.js";
import { type CoordinatorMetrics, countBy, createCoordinatorMetrics } from "../observe/metrics.js";
import type { CoordinatorServices } from "./api/context.js";
import { type ApiServer, startApiServer } from "./api/server.js";
import { AssignmentHub } from "./controllers/assignmentHub.js";
import { type ReplicaRecord, replicaPrefix } from "./controllers/records.js";
import { ReplicaStatusWriter } from "./controllers/replicaStatusWriter.js";
import { TunnelHub } from "./controllers/tunnelHub.js";
import { WorkloadController } from "./controllers/workloadController.js";
import { EventLog } from "./events/eventLog.js";
import { MembershipService } from "./membership/membershipService.js";
import { defaultMembershipConfig, type MembershipConfig } from "./membership/membershipTracker.js";
import { NodeRegistry } from "./nodes/nodeRegistry.js";
import { loadOrCreateCa, spiffeUri, writeSecretFile } from "./security/pki.js";
import { InstrumentedStore } from "./store/instrumentedStore.js";
import { openSqliteStore } from "./store/sqliteStore.js";
import type { Store } from "./store/store.js";
import { TokenRegistry } from "./tokens/tokenRegistry.js";

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
  services: CoordinatorServices;
  stop(): Promise<void>;
}

const clusterKey = "/cluster/info";
const defaultNodeCertTtlMs = 24 * 3600 * 1000;
const serverCertTtlMs = 90 * 24 * 3600 * 1000;
const adminCertTtlMs = 365 * 24 * 3600 * 1000;
const maintenanceIntervalMs = 60_000;

interface ClusterInfo {
  name: string;
  createdAtMs: number;
  caFingerprint: string;
}

/** Starts a coordinator: store, CA, API listener, membership. */
export async function startCoordinator(options: CoordinatorOptions): Promise<Coordinator> {
  const clock = options.clock ?? systemClock;
  const logger = options.logger ?? silentLogger;
  const dataDir = path.resolve(options.dataDir);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });

  const metrics = createCoordinatorMetrics();
  const store = new InstrumentedStore(
    await openSqliteStore({ path: path.join(dataDir, "store.db"), clock }),
    metrics,
  );
  try {
    return await startWithStore(options, store, dataDir, clock, logger, metrics);
  } catch (error) {
    await store.close();
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
): Promise<Coordinator> {
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
    const info = JSON.parse(existing.value) as ClusterInfo;
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

  const serverCert = await ca.issueKeyPair({
    subjectName: "cloudless-coordinator",
    spiffeUri: spiffeUri(clusterName, "coordinator", coordinatorName()),
    ttlMs: serverCertTtlMs,
    nowMs: clock.nowMs(),
    usage: "clientAndServer",
    ...splitNames(options),
  });

  const nodes = new NodeRegistry(store);
  const events = new EventLog(store, clock);
  const tokens = new TokenRegistry(store, clock, ca.fingerprintSha256);
  const membershipConfig: MembershipConfig = {
    ...defaultMembershipConfig,
    ...options.membership,
    detector: {
      ...defaultMembershipConfig.detector,
      firstHeartbeatEstimateMs:
        options.heartbeatEstimateMs ??
        options.membership?.heartbeatIntervalMs ??
        defaultMembershipConfig.detector.firstHeartbeatEstimateMs,
    },
  };
  const membership = new MembershipService(nodes, events, clock, logger, membershipConfig);
  const assignments = new AssignmentHub();
  const workloads = new WorkloadController({
    store,
    clock,
    rng: options.rng ?? mathRng,
    logger: logger.child({ component: "controller" }),
    events,
    assignments,
    metrics,
  });
  const audit = await AuditLog.open({
    dir: path.join(dataDir, "audit"),
    clock,
    logger: logger.child({ component: "audit" }),
  }).catch((error: unknown) => {
    throw CloudlessError.unavailable(
      `cannot open the audit log in ${path.join(dataDir, "audit")}: ${error instanceof Error ? error.message : String(error)}`,
    );
  });
  const services: CoordinatorServices = {
    clusterName,
    store,
    nodes,
    tokens,
    events,
    membership,
    ca,
    clock,
    logger,
    nodeCertTtlMs: options.nodeCertTtlMs ?? defaultNodeCertTtlMs,
    nodeStreams: new Map(),
    assignments,
    replicaStatus: new ReplicaStatusWriter(store, clock),
    tunnels: new TunnelHub(assignments),
    workloads,
    audit,
    metrics,
  };
  metrics.setStateSource({
    nodesByStatus: async () => countBy(await nodes.list(), (node) => node.status),
    replicasByPhase: async () =>
      countBy((await store.range(replicaPrefix)).kvs, (kv) => {
        const replica = JSON.parse(kv.value) as ReplicaRecord;
        return replica.status?.phase ?? (replica.node === "" ? "Pending" : "Scheduled");
      }),
    heartbeatStreams: () => {
      let open = 0;
      for (const streams of services.nodeStreams.values()) open += streams.size;
      return open;
    },
  });

  let server: ApiServer;
  try {
    server = await startApiServer(services, {
      host: options.host,
      port: options.port,
      tls: { keyPem: serverCert.keyPem, certPem: serverCert.certPem, caPem: ca.certPem },
    });
  } catch (error) {
    await audit.close();
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") {
      throw CloudlessError.unavailable(
        `port ${options.port} on ${options.host} is already in use; stop what uses it or pass --port`,
      );
    }
    if (code === "EACCES") {
      throw CloudlessError.permissionDenied(
        `not allowed to listen on ${options.host}:${options.port}; choose a port above 1024 with --port`,
      );
    }
    throw error;
  }
  await membership.start();
  await workloads.start();

  const url =
    options.advertiseUrl ??
    `https://${formatHost(options.host === "0.0.0.0" || options.host === "::" ? "127.0.0.1" : options.host)}:${server.port}`;
  const adminConfigPath = path.join(dataDir, "admin.conf");
  await writeAdminConfigIfMissing(adminConfigPath, {
    clusterName,
    url,
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

  let stopMaintenance = clock.setTimeout(function maintain() {
    Promise.all([events.trim(), tokens.prune()])
      .catch((error: unknown) => logger.warn({ err: error }, "maintenance failed"))
      .finally(() => {
        stopMaintenance = clock.setTimeout(maintain, maintenanceIntervalMs);
      });
  }, maintenanceIntervalMs);

  logger.info({ url, cluster: clusterName }, "coordinator listening");
  await events.record({
    type: "CoordinatorStarted",
    category: "operations",
    subject: `coordinator/${hostname()}`,
    reason: "Started",
    message: `coordinator listening on ${url}`,
  });

  let stopped = false;
  return {
    url,
    port: server.port,
    clusterName,
    adminConfigPath,
    caFingerprint: ca.fingerprintSha256,
    services,
    async stop() {
      if (stopped) return;
      stopped = true;
      stopMaintenance();
      await workloads.stop();
      await membership.stop();
      await server.close();
      await audit.close();
      await store.close();
    },
  };
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
    url: string;
    caPem: string;
    issue: () => Promise<{ certPem: string; keyPem: string }>;
  },
): Promise<void> {
  try {
    await access(configPath);
    // Keep the credential, but point it at where the coordinator listens now.
    const current = await readFile(configPath, "utf8");
    const updated = current.replace(/^servers:\n(\s+- .*\n)+/m, `servers:\n  - ${options.url}\n`);
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
    servers: [options.url],
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

/**
 * The node agent: the small loop that wires its jobs together. Joining is enrollment.ts,
 * the heartbeat stream heartbeatSession.ts, certificate renewal certificateRenewal.ts,
 * what stopping does leaving.ts, reading assignments assignments.ts, and the replicas the
 * supervisor (supervisor/).
 */
import { mkdir } from "node:fs/promises";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { CloudlessError } from "../api/errors.js";
import { ConfigService } from "../api/gen/cloudless/v1/config_pb.js";
import {
  CapacitySchema,
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
} from "../api/gen/cloudless/v1/node_pb.js";
import { clusterIdFromCaPem } from "../api/identity.js";
import { EndpointRotation } from "../client/endpoints.js";
import { createClients, createCoordinatorTransport } from "../client/transport.js";
import { type Clock, systemClock } from "../lib/clock.js";
import { acquirePidLock, DirectoryInUseError } from "../lib/pidLock.js";
import { type Rng, systemRng } from "../lib/rng.js";
import type { Logger } from "../observe/logger.js";
import { silentLogger } from "../observe/logger.js";
import { countBy, createAgentMetrics } from "../observe/metrics.js";
import type { AgentModule } from "./agentModule.js";
import {
  RenewalScheduleCache,
  RenewalTimer,
  requestRenewedIdentity,
} from "./certificateRenewal.js";
import type { DriverName, RuntimeDriver } from "./drivers/driver.js";
import { detectDrivers, ReplicaOwner } from "./drivers/index.js";
import { InstrumentedDriver } from "./drivers/instrumentedDriver.js";
import { loadOrEnroll } from "./enrollment.js";
import {
  type BeatInterval,
  HeartbeatLoop,
  openHeartbeatSession,
  type StreamSession,
} from "./heartbeatSession.js";
import { type AgentIdentity, certificateWindow, saveIdentity } from "./identity.js";
import { stopPlan } from "./leaving.js";
import { type MetricsListener, startMetricsListener } from "./metricsListener.js";
import { type AgentNetworkOptions, vipsFor } from "./network/networkComponents.js";
import { NetworkModule } from "./network/networkModule.js";
import { realNetworkComponents } from "./network/realComponents.js";
import { EgressModule, egressUnavailableReason } from "./policy/egressModule.js";
import { PolicyModule } from "./policy/policyModule.js";
import { coordinatorFetch } from "./replicaFiles/coordinatorFetch.js";
import { ReplicaFiles } from "./replicaFiles/replicaFiles.js";
import { ReplicaModule } from "./replicaModule.js";
import {
  type CapacityOverrides,
  collectNodeInfo,
  type MeasuredCapacity,
  measureCapacity,
  measureEgressMbps,
  type UsageSample,
  UsageSampler,
} from "./resources/index.js";
import type { UidRange } from "./sandbox/dynamicUsers.js";
import { createFileReservationAllocator } from "./supervisor/hostPortReservations.js";
import { AgentTunnels } from "./tunnels.js";

export const agentVersion = "0.1.0";

export interface AgentOptions {
  dataDir: string;
  /** Coordinator URLs; required to join, optional afterwards (the saved ones are used). */
  joinUrls?: string[];
  token?: string;
  name?: string;
  region?: string;
  zone?: string;
  labels?: Record<string, string>;
  overrides?: CapacityOverrides;
  taints?: { key: string; value: string; effect: "NoSchedule" | "PreferNoSchedule" }[];
  /** Docker/Podman API socket; default: $DOCKER_HOST, then the usual socket paths. */
  containerSocket?: string;
  /** Drivers to use, e.g. ["process"]; default: every driver that works here. */
  drivers?: DriverName[];
  /**
   * The process replicas' sandbox (REQ-062, ADR 0050): "on" by default; "off" runs them
   * as the agent's user (development). The uid range workloads' users come from, and
   * more directories hidden from replicas (a coordinator's data dir on the same host).
   */
  processSandbox?: "on" | "off";
  replicaUidRange?: UidRange;
  sandboxHiddenDirs?: string[];
  /**
   * Where host ports are reserved, shared by every agent of the host (ADR 0032);
   * default /run/cloudless/ports for root, a private temp directory otherwise.
   */
  portReservationDir?: string;
  clock?: Clock;
  rng?: Rng;
  logger?: Logger;
  /** Renew the certificate once this fraction of its lifetime has passed. */
  renewAtFraction?: number;
  /**
   * How long the coordinator should keep this node's replicas when the agent's stream
   * closes without a leave (a crash or kill it is restarted from), announced in the
   * hello (ADR 0031). Unset: the coordinator's stream-loss grace (fast failover).
   */
  restartGraceMs?: number;
  /**
   * Serve Prometheus metrics over mutual TLS on this address (opt-in; ADR 0009). Port 0
   * picks a free port; the Agent's metricsUrl tells which.
   */
  metricsListener?: { host: string; port: number };
  // --- Injected by the hollow-node simulator (src/sim) and tests; leave unset otherwise. ---
  /** Use these runtime drivers instead of detecting the engines on this machine. */
  runtimeDrivers?: RuntimeDriver[];
  /** Report this capacity instead of measuring the machine (no disk probe, no egress upload). */
  capacity?: MeasuredCapacity;
  /** Where heartbeat usage samples come from (default: this machine's CPU and memory). */
  usageSampler?: { sample(): UsageSample };
  /** Wraps every transport to the coordinator after enrollment (fault injection). */
  wrapTransport?: (transport: Transport) => Transport;
  /** Node.js process metrics in the agent's registry (default true; off for many agents per process). */
  processMetrics?: boolean;
  /** Deadline for a heartbeat stream to be acknowledged before the next URL is tried. */
  connectTimeoutMs?: number;
  /**
   * Keep the desired set and replica state in <dataDir>/agent-state.json and restore it
   * at start (NFR-A1; default true). Off only where nothing outlives the agent (tests).
   */
  persistState?: boolean;
  /**
   * Service networking (issue 14): the mesh, the node's service proxy, VIPs and DNS.
   * Absent: no network module (the hollow-node simulator, in-process tests).
   */
  network?: AgentNetworkOptions;
}

export interface AgentExit {
  code: number;
  message: string;
}

export interface Agent {
  nodeName: string;
  capacity: MeasuredCapacity;
  /** https://host:port/metrics when the metrics listener is on. */
  metricsUrl?: string;
  /** Resolves when the agent stops, by stop() or a fatal error. */
  done: Promise<AgentExit>;
  /**
   * Stops the agent; with leave, tells the coordinator first (graceful leave: replicas
   * are stopped and placed elsewhere). With leave and restartWithinMs > 0, the leave says
   * the agent restarts and is back within that long: the replicas keep running for the
   * next agent on this data dir to adopt (ADR 0031). When `hurry` aborts (a second
   * Ctrl-C, ADR 0028) the stop stops waiting: no leave acknowledgement, replicas killed
   * without the rest of their grace, still removed.
   */
  stop(options?: {
    leave?: boolean;
    restartWithinMs?: number;
    hurry?: AbortSignal;
  }): Promise<AgentExit>;
}

const reconnectBaseMs = 200;
const reconnectMaxMs = 5_000;
const defaultConnectTimeoutMs = 10_000;

/** Enrolls (first run) or reuses the saved identity, then keeps a heartbeat stream up. */
export async function startAgent(options: AgentOptions): Promise<Agent> {
  const clock = options.clock ?? systemClock;
  const rng = options.rng ?? systemRng;
  const dataDir = path.resolve(options.dataDir);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const lock = await acquirePidLock(
    path.join(dataDir, "agent.lock"),
    `agent data dir ${dataDir}`,
  ).catch((error: unknown) => {
    throw error instanceof DirectoryInUseError ? CloudlessError.unavailable(error.message) : error;
  });
  try {
    const baseLogger = options.logger ?? silentLogger;
    const identity = await loadOrEnroll(options, dataDir, baseLogger);
    const logger = baseLogger.child({ node: identity.nodeName });
    const runner = new AgentRunner(identity, options, dataDir, clock, rng, logger, lock.release);
    await runner.start();
    return runner.handle();
  } catch (error) {
    await lock.release();
    throw error;
  }
}

/** A full report is resent this often even when nothing changed (level-triggered). */
const fullReportIntervalMs = 10_000;

class AgentRunner {
  private clients: ReturnType<typeof createClients>;
  private capacity!: MeasuredCapacity;
  private readonly usage: { sample(): UsageSample };
  private drivers = new Map<DriverName, RuntimeDriver>();
  private readonly metrics: ReturnType<typeof createAgentMetrics>;
  private metricsListener: MetricsListener | undefined;
  /** The replica supervisor, the first agent module (ADR 0042). */
  private replicas: ReplicaModule | undefined;
  private egress: EgressModule | undefined;
  /** Every module, started in order before the first connect, stopped in reverse. */
  private readonly modules: AgentModule[] = [];
  private cancelReportTimer: (() => void) | undefined;
  private readonly tunnels = new AgentTunnels(
    () => this.clients,
    () => this.drivers,
    () => this.replicas?.latestReports ?? [],
  );
  /** The beat interval the coordinator asks for (its answers update it). */
  private readonly beatInterval: BeatInterval = { ms: 1000 };
  /** Keeps one heartbeat stream up (heartbeatSession.ts). */
  private readonly heartbeat: HeartbeatLoop;
  private exit: AgentExit | undefined;
  private resolveDone!: (exit: AgentExit) => void;
  private readonly done = new Promise<AgentExit>((resolve) => {
    this.resolveDone = resolve;
  });
  /** Renews the certificate before it expires (certificateRenewal.ts). */
  private readonly renewal: RenewalTimer;
  /** Which coordinator to dial; rotates on failure, follows leader redirects. */
  private readonly endpoints: EndpointRotation;
  /** One transport per coordinator URL (rebuilt when the certificate changes). */
  private clientsByUrl = new Map<string, ReturnType<typeof createClients>>();
  /** ConfigService clients per URL, for replicas' configs (ADR 0055); reset like clientsByUrl. */
  private configClientsByUrl = new Map<string, Client<typeof ConfigService>>();
  /** Whose replicas the drivers touch (ADR 0030); learns the node uid from the hello ack. */
  private owner: ReplicaOwner | undefined;
  /** The grace granted was lower than asked for: warned about once. */
  private graceCapWarned = false;

  constructor(
    private identity: AgentIdentity,
    private readonly options: AgentOptions,
    private readonly dataDir: string,
    private readonly clock: Clock,
    private readonly rng: Rng,
    private readonly logger: Logger,
    private readonly releaseLock: () => Promise<void>,
  ) {
    this.usage = options.usageSampler ?? new UsageSampler();
    this.metrics = createAgentMetrics({ defaultMetrics: options.processMetrics ?? true });
    if (identity.servers.length === 0) {
      throw CloudlessError.invalid("no coordinator URL known; pass --join URL");
    }
    this.endpoints = new EndpointRotation(identity.servers, {
      rng,
      baseDelayMs: reconnectBaseMs,
      maxDelayMs: reconnectMaxMs,
    });
    this.clients = this.clientsFor(this.endpoints.current);
    this.heartbeat = new HeartbeatLoop({
      endpoints: this.endpoints,
      clock,
      logger,
      open: () => this.openSession(),
      onRetarget: (url) => {
        this.clients = this.clientsFor(url);
      },
      onLearned: (url) => void this.rememberServer(url),
    });
    const schedules = new RenewalScheduleCache(options.renewAtFraction ?? 2 / 3);
    this.renewal = new RenewalTimer({
      clock,
      logger,
      schedule: () => schedules.of(this.identity),
      renew: () => this.renew(),
    });
  }

  async start(): Promise<void> {
    this.metrics.setStateSource({
      replicasByPhase: () => countBy(this.replicas?.latestReports ?? [], (report) => report.phase),
    });
    if (this.options.metricsListener) {
      this.metricsListener = await startMetricsListener({
        ...this.options.metricsListener,
        clusterName: this.identity.clusterName,
        certPem: this.identity.certPem,
        keyPem: this.identity.keyPem,
        caPem: this.identity.caPem,
        registry: this.metrics.registry,
        logger: this.logger.child({ component: "metrics" }),
      });
      this.logger.info({ url: this.metricsListener.url }, "metrics listening");
    }
    try {
      await this.startRunning();
    } catch (error) {
      // Modules started before the failure (the network's listeners) stop again.
      await this.stopModules(false);
      await this.metricsListener?.close();
      throw error;
    }
  }

  private async startRunning(): Promise<void> {
    // Replicas first, capacity and the coordinator after: an agent that restarts while
    // every coordinator is down brings its replicas back from disk (NFR-A1), and the
    // capacity measurement (a disk probe, an upload) must not delay that.
    // Replicas carry the cluster id and node uid; the drivers touch only this agent's.
    const owner = new ReplicaOwner(
      clusterIdFromCaPem(this.identity.caPem),
      this.identity.nodeName,
      this.identity.nodeUid,
    );
    this.owner = owner;
    const detected = this.options.runtimeDrivers
      ? { drivers: this.options.runtimeDrivers, unavailable: [] }
      : await detectDrivers({
          dataDir: this.dataDir,
          socketPath: this.options.containerSocket,
          nodeName: this.identity.nodeName,
          owner,
          logger: this.logger,
          clock: this.clock,
          ...(this.options.processSandbox ? { processSandbox: this.options.processSandbox } : {}),
          ...(this.options.replicaUidRange
            ? { replicaUidRange: this.options.replicaUidRange }
            : {}),
          ...(this.options.sandboxHiddenDirs
            ? { sandboxHiddenDirs: this.options.sandboxHiddenDirs }
            : {}),
          // Late-bound: the egress module is made after the drivers (ADR 0057).
          beforeLaunch: (workloadKey, uid) =>
            this.egress ? this.egress.admit(workloadKey, uid) : Promise.resolve(),
          containerEgress: {
            admitContainer: (replicaId, workloadKey, address) =>
              this.egress
                ? this.egress.admitContainer(replicaId, workloadKey, address)
                : Promise.resolve(),
            releaseContainer: (replicaId) =>
              this.egress ? this.egress.releaseContainer(replicaId) : Promise.resolve(),
          },
        });
    for (const driver of detected.drivers) {
      if (!this.options.drivers || this.options.drivers.includes(driver.name)) {
        this.drivers.set(driver.name, new InstrumentedDriver(driver, this.metrics));
      }
    }
    this.logger.info(
      { drivers: [...this.drivers.keys()], unavailable: detected.unavailable },
      "runtime drivers",
    );
    // Networking before replicas: it applies the saved service set first, so replicas
    // started from disk get their CLOUDLESS_SERVICE_* variables (NFR-A1); it stops last.
    const network = await this.createNetworkModule();
    if (network) this.modules.push(network);
    // Before the replicas: kept policies are loaded before any replica is judged.
    const policies = new PolicyModule({
      dataDir: this.dataDir,
      logger: this.logger.child({ component: "policies" }),
      onChange: () => this.replicas?.reevaluate(),
    });
    this.modules.push(policies);
    // After the policies and the network it compiles from, before the replicas it confines.
    this.egress = new EgressModule({
      nodeName: this.identity.nodeName,
      dataDir: this.dataDir,
      logger: this.logger.child({ component: "egress" }),
      registry: this.metrics.registry,
      policies: () => policies.current,
      ...(network ? { network: () => network.egressView() } : {}),
      ...(await egressUnavailable()),
    });
    this.modules.push(this.egress);
    // Secrets and configs are read with a token per replica (ADR 0058), held in memory only.
    const fetchFiles = coordinatorFetch(
      () => ({ secrets: this.clients.secrets, configs: this.configClient() }),
      this.clock,
    );
    this.replicas = new ReplicaModule({
      nodeName: this.identity.nodeName,
      dataDir: this.dataDir,
      agentVersion,
      drivers: this.drivers,
      hostPorts: createFileReservationAllocator({
        nodeName: this.identity.nodeName,
        ...(this.options.portReservationDir ? { dir: this.options.portReservationDir } : {}),
      }),
      owner,
      clock: this.clock,
      rng: this.rng,
      logger: this.logger,
      persistState: this.options.persistState ?? true,
      onProbeResult: (kind, result) =>
        this.metrics.probeResults.inc({ kind, result: result.ok ? "success" : "failure" }),
      ...(network ? { networking: (spec) => network.replicaNetworking(spec) } : {}),
      policyDenial: (doc) => policies.judge(doc)?.denied?.reason,
      // Secrets and configs written for replicas before they start (REQ-063, ADR 0055).
      files: new ReplicaFiles({
        dataDir: this.dataDir,
        logger: this.logger.child({ component: "replica files" }),
        fetch: fetchFiles,
        onReplicaGone: (replicaId) => fetchFiles.forget(replicaId),
      }),
    });
    this.modules.push(this.replicas);
    const context = { send: (message: HeartbeatRequest) => this.heartbeat.current?.send(message) };
    for (const module of this.modules) await module.start(context);

    this.capacity =
      this.options.capacity ??
      (await measureCapacity({
        dataDir: this.dataDir,
        overrides: this.options.overrides,
        measureEgressMbps: () =>
          measureEgressMbps(async (chunks) => {
            const response = await this.clients.nodes.measureEgress(
              (async function* () {
                for await (const chunk of chunks) yield { chunk };
              })(),
            );
            return {
              bytesReceived: Number(response.bytesReceived),
              durationMs: response.durationMs,
            };
          }),
      }));
    this.logger.info({ capacity: this.capacity }, "measured capacity");
    const resend = () => {
      this.sendStatus();
      this.cancelReportTimer = this.clock.setTimeout(resend, fullReportIntervalMs);
    };
    this.cancelReportTimer = this.clock.setTimeout(resend, fullReportIntervalMs);
    void this.heartbeat.run();
    this.renewal.start();
  }

  /** The network module per the agent's network options; undefined without them. */
  private async createNetworkModule(): Promise<NetworkModule | undefined> {
    const network = this.options.network;
    if (!network) return undefined;
    const components = network.components ?? realNetworkComponents();
    const logger = this.logger.child({ component: "network" });
    const vips = await vipsFor(network.serviceVips, components, logger).catch((error: unknown) => {
      throw CloudlessError.invalid(error instanceof Error ? error.message : String(error));
    });
    const dns = components.createDns?.({ host: "127.0.0.1", port: network.dnsPort, logger });
    const createMesh = components.createMesh;
    return new NetworkModule({
      nodeName: this.identity.nodeName,
      zone: this.options.zone ?? "",
      region: this.options.region ?? "",
      dataDir: this.dataDir,
      clock: this.clock,
      rng: this.rng,
      logger,
      registry: this.metrics.registry,
      ...(createMesh
        ? {
            createMesh: (hooks) =>
              createMesh({
                ...hooks,
                // Read at each handshake: a renewed certificate is used from then on.
                identity: () => ({
                  clusterName: this.identity.clusterName,
                  nodeName: this.identity.nodeName,
                  caPem: this.identity.caPem,
                  certPem: this.identity.certPem,
                  keyPem: this.identity.keyPem,
                }),
                host: network.meshHost,
                port: network.meshPort,
                relay: network.relay,
                logger: logger.child({ component: "mesh" }),
                clock: this.clock,
              }),
          }
        : {}),
      ...(vips ? { vips } : {}),
      ...(dns ? { dns } : {}),
      advertiseAddresses: network.advertiseAddresses,
      relay: network.relay,
      persist: this.options.persistState ?? true,
    });
  }

  handle(): Agent {
    return {
      nodeName: this.identity.nodeName,
      capacity: this.capacity,
      ...(this.metricsListener ? { metricsUrl: this.metricsListener.url } : {}),
      done: this.done,
      stop: (options) =>
        this.stop(options?.leave ?? true, options?.restartWithinMs ?? 0, options?.hurry),
    };
  }

  /** Clients for one coordinator URL, with this agent's current certificate. */
  private clientsFor(url: string): ReturnType<typeof createClients> {
    let clients = this.clientsByUrl.get(url);
    if (!clients) {
      clients = createClients(this.transportFor(this.identity, url));
      this.clientsByUrl.set(url, clients);
    }
    return clients;
  }

  /** The ConfigService client for the coordinator the agent talks to now. */
  private configClient(): Client<typeof ConfigService> {
    const url = this.endpoints.current;
    let client = this.configClientsByUrl.get(url);
    if (!client) {
      client = createClient(ConfigService, this.transportFor(this.identity, url));
      this.configClientsByUrl.set(url, client);
    }
    return client;
  }

  private transportFor(identity: AgentIdentity, server: string) {
    const transport = createCoordinatorTransport({
      baseUrl: server,
      clusterName: identity.clusterName,
      caPem: identity.caPem,
      certPem: identity.certPem,
      keyPem: identity.keyPem,
    });
    return this.options.wrapTransport?.(transport) ?? transport;
  }

  /** Keeps a leader URL learned from a redirect, so a restarted agent knows it too. */
  private async rememberServer(url: string): Promise<void> {
    if (this.identity.servers.includes(url)) return;
    this.identity = { ...this.identity, servers: [...this.identity.servers, url] };
    try {
      await saveIdentity(this.dataDir, this.identity);
    } catch (error) {
      this.logger.warn(
        { err: error instanceof Error ? error.message : String(error), url },
        "cannot save the learned coordinator URL",
      );
    }
  }

  /** A heartbeat stream to the rotation's current coordinator, with this agent's certificate. */
  private openSession(): StreamSession {
    const url = this.endpoints.current;
    return openHeartbeatSession({
      url,
      clients: this.clientsFor(url),
      clock: this.clock,
      logger: this.logger,
      connectTimeoutMs: this.options.connectTimeoutMs ?? defaultConnectTimeoutMs,
      hello: this.helloMessage(),
      interval: this.beatInterval,
      beat: (seq) => {
        const sample = this.usage.sample();
        this.metrics.heartbeatsSent.inc();
        return create(HeartbeatRequestSchema, {
          kind: {
            case: "beat",
            value: {
              seq,
              usage: {
                cpuMillicoresUsed: Math.round(sample.cpuMillicoresUsed),
                memoryMibUsed: Math.round(sample.memoryMiBUsed),
              },
            },
          },
        });
      },
      onConnected: (response, send) => {
        this.endpoints.connected();
        this.onHelloAck(response);
        this.logger.info({ url }, "connected; heartbeating");
        // The coordinator forgot this node's reports on hello: tell it at once what
        // runs (it may have restarted, or this agent may have), not at the next resend.
        for (const module of this.modules) {
          for (const message of module.statusMessages()) send(message);
        }
      },
      onMessage: (response) => this.handleCoordinatorMessage(response),
      onRefused: (message) => this.fail(1, message),
    });
  }

  private helloMessage(): HeartbeatRequest {
    // The contract's NodeInfo, sent as collected.
    const info = collectNodeInfo(agentVersion, [...this.drivers.keys()]);
    return create(HeartbeatRequestSchema, {
      kind: {
        case: "hello",
        value: {
          nodeName: this.identity.nodeName,
          capacity: create(CapacitySchema, {
            cpuMillicores: this.capacity.cpuMillicores,
            memoryMib: this.capacity.memoryMiB,
            storageGib: this.capacity.storageGiB,
            iopsClass: this.capacity.iopsClass,
            measuredIops: this.capacity.measuredIops,
            egressMbps: Math.round(this.capacity.egressMbps),
            egressSource: this.capacity.egressSource,
            source: this.capacity.source,
          }),
          info,
          region: this.options.region ?? "",
          zone: this.options.zone ?? "",
          labels: this.options.labels ?? {},
          taints: this.options.taints ?? [],
          restartGraceMs: this.options.restartGraceMs ?? 0,
        },
      },
    });
  }

  /** Renews the certificate and moves the heartbeat stream over without a gap. */
  private async renew(): Promise<void> {
    const renewed = await requestRenewedIdentity(this.identity, this.clients, this.clock);
    await saveIdentity(this.dataDir, renewed);
    this.identity = renewed;
    this.metricsListener?.updateCredentials(renewed);
    this.clientsByUrl = new Map();
    this.configClientsByUrl = new Map();
    this.clients = this.clientsFor(this.endpoints.current);
    const { notAfterMs } = certificateWindow(renewed.certPem);
    this.logger.info({ notAfter: new Date(notAfterMs).toISOString() }, "certificate renewed");
    // Open the new stream first; the old one closes once the new one is acknowledged,
    // so the coordinator never sees the node without a stream.
    await this.heartbeat.replaceWith(this.openSession());
  }

  /**
   * The ack to a hello says who this node is: an agent enrolled before node uids were sent
   * learns (and keeps) its uid here, so replicas it starts from now on carry it. It also
   * says which restart grace the coordinator grants.
   */
  private onHelloAck(response: HeartbeatResponse): void {
    const uid = response.nodeUid;
    if (uid && !this.identity.nodeUid) {
      this.identity = { ...this.identity, nodeUid: uid };
      this.owner?.learnNodeUid(uid);
      this.logger.info({ nodeUid: uid }, "learned this node's uid; new replicas carry it");
      void saveIdentity(this.dataDir, this.identity).catch((error: unknown) =>
        this.logger.warn(
          { err: error instanceof Error ? error.message : String(error) },
          "cannot save the node uid; it is learned again on the next connect",
        ),
      );
    } else if (uid && uid !== this.identity.nodeUid) {
      // Cannot happen for a certificate the coordinator accepts; never relabel on a guess.
      this.logger.warn(
        { nodeUid: uid, saved: this.identity.nodeUid },
        "the coordinator names another uid for this node than the saved one; keeping the saved one",
      );
    }
    const asked = this.options.restartGraceMs ?? 0;
    if (asked > 0 && response.restartGraceMs < asked && !this.graceCapWarned) {
      this.graceCapWarned = true;
      this.logger.warn(
        { askedMs: asked, grantedMs: response.restartGraceMs },
        `the coordinator caps the restart grace at ${response.restartGraceMs} ms (its --max-restart-grace)`,
      );
    }
  }

  /** What the coordinator pushes on the heartbeat stream besides acks. */
  private handleCoordinatorMessage(response: HeartbeatResponse): void {
    for (const module of this.modules) module.receive(response);
    if (response.logsRequest) this.tunnels.startLogs(response.logsRequest);
    if (response.cancel) this.tunnels.cancel(response.cancel.requestId);
    if (response.execRequest) void this.tunnels.exec(response.execRequest);
  }

  /** Every module's full status, resent on a timer (level-triggered). */
  private sendStatus(): void {
    const session = this.heartbeat.current;
    if (!session) return;
    for (const module of this.modules) {
      for (const message of module.statusMessages()) session.send(message);
    }
  }

  /** Stops the modules, last started first; `leaving` stops what they run. */
  private async stopModules(leaving: boolean, hurry?: AbortSignal): Promise<void> {
    for (const module of [...this.modules].reverse()) {
      await module
        .stop({ leaving, hurry })
        .catch((error: unknown) =>
          this.logger.warn(
            { module: module.name, err: error instanceof Error ? error.message : String(error) },
            "module did not stop cleanly",
          ),
        );
    }
    this.modules.length = 0;
  }

  private fail(code: number, message: string): void {
    if (this.exit) return;
    this.logger.error({ reason: message }, "agent stopping");
    void this.finish({ code, message });
  }

  private async stop(leave: boolean, restartWithinMs = 0, hurry?: AbortSignal): Promise<AgentExit> {
    if (!this.exit) {
      // No reconnecting from here on: a stream reopened while the replicas stop would
      // say hello again, and the coordinator would take the leaving node back.
      this.heartbeat.stop();
      this.renewal.stop();
      const plan = stopPlan(leave, restartWithinMs);
      const session = this.heartbeat.current;
      if (plan.leaveBackWithinMs !== undefined && session) {
        await session.leave(plan.leaveBackWithinMs, hurry).catch(() => undefined);
      }
      await this.stopModules(plan.stopReplicas, hurry);
      await this.finish({ code: 0, message: plan.message });
    }
    return this.done;
  }

  private async finish(exit: AgentExit): Promise<void> {
    if (this.exit) return;
    this.exit = exit;
    this.heartbeat.stop();
    this.renewal.stop();
    this.cancelReportTimer?.();
    this.tunnels.cancelAll();
    if (exit.code !== 0) {
      // Deleted from the cluster: nothing here is wanted any more.
      await this.stopModules(true);
    }
    await this.stopModules(false);
    this.heartbeat.close();
    await this.metricsListener?.close().catch(() => undefined);
    await this.releaseLock();
    this.resolveDone(exit);
  }
}

/** The egress module's `unavailableReason` option, when nftables cannot be used here. */
async function egressUnavailable(): Promise<{ unavailableReason?: string }> {
  const reason = await egressUnavailableReason();
  return reason === undefined ? {} : { unavailableReason: reason };
}

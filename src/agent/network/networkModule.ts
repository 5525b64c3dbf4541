/**
 * Service networking as an agent module (ADR 0042, ADR 0046, issue 14). The coordinator
 * pushes a NetworkSnapshot (services, endpoints, mesh peers) on the heartbeat stream; the
 * module keeps the latest on disk and applies it: the mesh learns its peers, the proxy
 * its service ports and endpoints, the VIP table its forwards, the name server its
 * records. At start it applies the snapshot on disk before any coordinator is dialled,
 * so an agent restarted while every coordinator is down still balances (NFR-A1). It
 * reports its mesh side (port, addresses, relay, peer paths) as a NetworkReport, which
 * the agent resends with every full status (every 10 s, ADR 0042), and turns mesh path
 * changes into PathChanged events.
 *
 * Nothing of it outlives the agent: stop closes the listeners, removes the VIP table,
 * stops the name server and the mesh. A restarted agent rebuilds all of it from the
 * snapshot at start; only the snapshot file stays, and a leaving node deletes it.
 */
import { mkdir, readFile, rm } from "node:fs/promises";
import * as path from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { Registry } from "prom-client";
import {
  AgentEventSchema,
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
} from "../../api/gen/cloudless/v1/node_pb.js";
import {
  type NetworkSnapshot,
  NetworkSnapshotSchema,
  type Service,
} from "../../api/gen/cloudless/v1/service_pb.js";
import { writeFileAtomically } from "../../lib/atomicFile.js";
import type { Clock } from "../../lib/clock.js";
import { privateFileMode } from "../../lib/privateFiles.js";
import type { Rng } from "../../lib/rng.js";
import type { Logger } from "../../observe/logger.js";
import type { AgentModule, AgentModuleContext, AgentModuleStopOptions } from "../agentModule.js";
import type { DriverName } from "../drivers/driver.js";
import type { EgressNetworkView } from "../policy/egressModule.js";
import { NetworkMetrics } from "./networkMetrics.js";
import type {
  MeshHooks,
  MeshRuntime,
  ReplicaNetworking,
  ServiceDirectory,
  VipForward,
  VipProgrammer,
} from "./networkTypes.js";
import { ServiceProxy } from "./proxy/serviceProxy.js";

/** Where the last snapshot is kept, under the agent's data dir. */
export const snapshotFileName = path.join("network", "snapshot.bin");
/**
 * The largest snapshot file read back: 10,000 services of a few endpoints each are a few
 * MiB; anything far larger is not a file this agent wrote, and is not parsed.
 */
export const maxSnapshotFileBytes = 64 * 1024 * 1024;
/**
 * Services of a namespace a replica gets CLOUDLESS_SERVICE_* variables for: three to a
 * few dozen variables each; more would crowd the environment (Linux caps one string at
 * 128 KiB and all at a quarter of the stack limit) — use DNS there.
 */
export const maxServicesInEnvironment = 500;
/** A path-change event's attribute value at most (the coordinator accepts 1,024 chars). */
const maxAttributeChars = 256;

export interface NetworkModuleOptions {
  nodeName: string;
  zone: string;
  region: string;
  dataDir: string;
  clock: Clock;
  rng: Rng;
  logger: Logger;
  /** The agent's metrics registry; the network metrics register there. */
  registry?: Registry;
  /** Builds the mesh, given what it needs from the proxy; without one, no mesh runs. */
  createMesh?: (hooks: MeshHooks) => MeshRuntime;
  /** The VIP table; undefined when VIPs are off (--service-vips off, or unavailable). */
  vips?: VipProgrammer;
  /** The agent's name server; undefined when DNS is not served. */
  dns?: ServiceDirectory;
  /** --advertise-address values, reported to the coordinator. */
  advertiseAddresses: readonly string[];
  /** --relay: this node relays for nodes behind NAT. */
  relay: boolean;
  /** Keep the snapshot on disk (default true; off where nothing outlives the agent). */
  persist?: boolean;
}

export class NetworkModule implements AgentModule {
  readonly name = "network";
  readonly metrics: NetworkMetrics | undefined;
  private readonly proxy: ServiceProxy;
  private mesh: MeshRuntime | undefined;
  private context: AgentModuleContext | undefined;
  private meshPort = 0;
  private dnsPort: number | undefined;
  /** The snapshot applied (or being applied) last. */
  private snapshot: NetworkSnapshot | undefined;
  private persistedBytes: Uint8Array | undefined;
  /** Applying and persisting run one at a time; a newer snapshot waits for the running one. */
  private applying: Promise<void> = Promise.resolve();
  private writing: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(private readonly options: NetworkModuleOptions) {
    this.metrics = options.registry ? new NetworkMetrics(options.registry) : undefined;
    this.proxy = new ServiceProxy({
      locality: { node: options.nodeName, zone: options.zone, region: options.region },
      rng: options.rng,
      clock: options.clock,
      logger: options.logger.child({ component: "proxy" }),
      // Through a getter: the mesh is created in start(), after the proxy.
      ...(options.createMesh
        ? {
            mesh: {
              dial: (node, target, dialOptions) =>
                this.requireMesh().dial(node, target, dialOptions),
            },
          }
        : {}),
      ...(this.metrics ? { metrics: this.metrics } : {}),
    });
    this.metrics?.setSources({
      peers: () =>
        (this.mesh?.peers() ?? []).map((peer) => ({
          node: peer.node,
          path: peer.path,
          rttMs: peer.rttMs,
        })),
      dns: () => this.options.dns?.stats(),
    });
  }

  private get snapshotPath(): string {
    return path.join(this.options.dataDir, snapshotFileName);
  }

  private requireMesh(): MeshRuntime {
    if (!this.mesh) throw new Error("the mesh is not running");
    return this.mesh;
  }

  /**
   * Starts the mesh and the name server, then applies the snapshot on disk, all before
   * the agent dials a coordinator (NFR-A1). A part that cannot start (a port in use)
   * fails the agent's start, after stopping the parts already started.
   */
  async start(context: AgentModuleContext): Promise<void> {
    this.context = context;
    const { options } = this;
    try {
      if (options.createMesh) {
        this.mesh = options.createMesh({
          resolveLocal: (target) => this.proxy.resolveLocal(target),
          onPathChange: (peer, from, to, via) => this.pathChanged(peer, from, to, via),
        });
        this.meshPort = (await this.mesh.start()).port;
      }
      if (options.dns) this.dnsPort = (await options.dns.start()).port;
      const saved = await this.loadSnapshot();
      if (saved) {
        options.logger.info(
          { version: String(saved.version), services: saved.services.length },
          "applying the saved network snapshot",
        );
        await this.apply(saved);
      }
    } catch (error) {
      await this.stopParts();
      throw error;
    }
  }

  /** The snapshot a previous agent saved; a file that cannot be used costs a warning. */
  private async loadSnapshot(): Promise<NetworkSnapshot | undefined> {
    if (this.options.persist === false) return undefined;
    let bytes: Uint8Array;
    try {
      bytes = await readFile(this.snapshotPath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
    if (bytes.length > maxSnapshotFileBytes) {
      this.options.logger.warn(
        { bytes: bytes.length, limit: maxSnapshotFileBytes },
        "ignoring the saved network snapshot: larger than maxSnapshotFileBytes; the coordinator sends a new one on connect",
      );
      return undefined;
    }
    try {
      const snapshot = fromBinary(NetworkSnapshotSchema, bytes);
      this.persistedBytes = bytes;
      return snapshot;
    } catch (error) {
      this.options.logger.warn(
        { err: error instanceof Error ? error.message : String(error) },
        "ignoring the saved network snapshot: it does not parse; the coordinator sends a new one on connect",
      );
      return undefined;
    }
  }

  /** Takes the network snapshot of a coordinator's message, when it carries one. */
  receive(message: HeartbeatResponse): void {
    const snapshot = message.network;
    if (!snapshot || this.stopped) return;
    // The coordinator's snapshot is the whole truth of the moment, and one stream delivers
    // them in order; a lower version comes from a new leader whose clock runs behind the
    // old one's (versions are wall-clock based), so only the version held is skipped.
    if (this.snapshot && snapshot.version === this.snapshot.version) return;
    void this.apply(snapshot).catch((error: unknown) =>
      this.options.logger.warn(
        { err: error instanceof Error ? error.message : String(error) },
        "cannot apply the network snapshot",
      ),
    );
    this.persist(snapshot);
  }

  /** Applies `snapshot` after any apply still running; skipped if a newer one came meanwhile. */
  private apply(snapshot: NetworkSnapshot): Promise<void> {
    this.snapshot = snapshot;
    const run = this.applying.then(async () => {
      if (this.stopped || this.snapshot !== snapshot) return;
      this.mesh?.setPeers(snapshot.peers, snapshot.coordinatorRelays);
      await this.proxy.setServices(snapshot.services);
      await this.programVips(snapshot);
      this.options.dns?.setServices(snapshot.clusterDomain, snapshot.services);
    });
    this.applying = run.catch(() => undefined);
    return run;
  }

  private async programVips(snapshot: NetworkSnapshot): Promise<void> {
    const vips = this.options.vips;
    if (!vips) return;
    const forwards: VipForward[] = this.proxy.forwards();
    const dnsVip = dnsVipOf(snapshot.serviceCidr);
    if (dnsVip && this.dnsPort !== undefined) {
      for (const protocol of ["udp", "tcp"] as const) {
        forwards.push({ vip: dnsVip, port: 53, protocol, toPort: this.dnsPort });
      }
    }
    try {
      await vips.apply(forwards, snapshot.serviceCidr);
    } catch (error) {
      // The proxy still serves on 127.0.0.1 (process replicas' variables point there
      // when VIPs are off); the next snapshot tries again.
      this.options.logger.warn(
        { err: error instanceof Error ? error.message : String(error) },
        "cannot program the service VIPs",
      );
    }
  }

  /** Writes the snapshot to disk (atomic, 0600); the newest wins, one write at a time. */
  private persist(snapshot: NetworkSnapshot): void {
    if (this.options.persist === false) return;
    const bytes = toBinary(NetworkSnapshotSchema, snapshot);
    this.writing = this.writing.then(async () => {
      if (this.snapshot !== snapshot && this.snapshot !== undefined) return;
      if (this.persistedBytes && Buffer.from(bytes).equals(Buffer.from(this.persistedBytes))) {
        return;
      }
      try {
        await mkdir(path.dirname(this.snapshotPath), { recursive: true, mode: 0o700 });
        await writeFileAtomically(this.snapshotPath, bytes, { mode: privateFileMode });
        this.persistedBytes = bytes;
      } catch (error) {
        this.options.logger.warn(
          { err: error instanceof Error ? error.message : String(error) },
          "cannot save the network snapshot; a restart without a coordinator would start with the previous one",
        );
      }
    });
  }

  private pathChanged(peer: string, from: string, to: string, via: string): void {
    this.options.logger.info({ peer, from, to, via }, "mesh path changed");
    const clip = (text: string) => text.slice(0, maxAttributeChars);
    const event = create(AgentEventSchema, {
      type: "PathChanged",
      reason: `Path${pascal(to)}`,
      message: `mesh path to node ${clip(peer)} changed from ${clip(from)} to ${clip(to)}${
        via ? ` via ${clip(via)}` : ""
      }`,
      attributes: { peer: clip(peer), from: clip(from), to: clip(to), via: clip(via) },
    });
    this.context?.send(
      create(HeartbeatRequestSchema, { kind: { case: "events", value: { events: [event] } } }),
    );
  }

  statusMessages(): HeartbeatRequest[] {
    return [
      create(HeartbeatRequestSchema, {
        kind: {
          case: "network",
          value: {
            meshPort: this.meshPort,
            advertiseAddresses: [...this.options.advertiseAddresses],
            relay: this.options.relay,
            peers: this.mesh?.peers() ?? [],
          },
        },
      }),
    ];
  }

  /**
   * What a replica starting now gets: CLOUDLESS_SERVICE_<NAME>_HOST/_PORT/_PORT_<PORTNAME>
   * for the services of its namespace (the VIP when VIPs are on, else 127.0.0.1 and the
   * proxy's listener, which only a process on this host can reach), and for a container
   * the name server when VIPs are on.
   */
  replicaNetworking(replica: { namespace: string; driver: DriverName }): ReplicaNetworking {
    const snapshot = this.snapshot;
    if (!snapshot) return { env: {} };
    const vipsOn = this.options.vips !== undefined;
    const env: Record<string, string> = {};
    if (vipsOn || replica.driver === "process") {
      let count = 0;
      for (const service of snapshot.services) {
        if (service.namespace !== replica.namespace) continue;
        if (count++ >= maxServicesInEnvironment) break;
        Object.assign(env, this.serviceEnv(service, vipsOn));
      }
    }
    const dnsVip = dnsVipOf(snapshot.serviceCidr);
    if (replica.driver !== "container" || !vipsOn || !dnsVip || !this.options.dns) return { env };
    const domain = snapshot.clusterDomain;
    return {
      env,
      dns: {
        servers: [dnsVip],
        search: [`${replica.namespace}.svc.${domain}`, `svc.${domain}`, domain],
        options: ["ndots:5"],
      },
    };
  }

  private serviceEnv(service: Service, vipsOn: boolean): Record<string, string> {
    const name = envName(service.name);
    const env: Record<string, string> = {};
    for (const port of service.ports) {
      const address =
        vipsOn && service.vip !== ""
          ? { host: service.vip, port: port.port }
          : {
              host: "127.0.0.1",
              port: this.proxy.listenerPort(service.namespace, service.name, port.name),
            };
      if (address.port === undefined) continue;
      if (env[`CLOUDLESS_SERVICE_${name}_HOST`] === undefined) {
        env[`CLOUDLESS_SERVICE_${name}_HOST`] = address.host;
        env[`CLOUDLESS_SERVICE_${name}_PORT`] = String(address.port);
      }
      env[`CLOUDLESS_SERVICE_${name}_PORT_${envName(port.name)}`] = String(address.port);
    }
    return env;
  }

  /**
   * The services this node knows and its name server's addresses, which every replica may
   * reach whatever the egress policies say (the egress module, ADR 0057).
   */
  egressView(): EgressNetworkView {
    const snapshot = this.snapshot;
    const exemptions: EgressNetworkView["exemptions"] = [];
    if (this.dnsPort !== undefined) {
      const dnsVip = snapshot && this.options.vips ? dnsVipOf(snapshot.serviceCidr) : undefined;
      for (const protocol of ["udp", "tcp"] as const) {
        exemptions.push({ ip: "127.0.0.1", port: this.dnsPort, protocol });
        if (dnsVip) exemptions.push({ ip: dnsVip, port: 53, protocol });
      }
    }
    const services = (snapshot?.services ?? []).map((service) => ({
      namespace: service.namespace,
      name: service.name,
      // Without VIPs a replica reaches a service through 127.0.0.1 and the proxy; rules
      // cannot name it there (ADR 0057).
      vip: this.options.vips ? service.vip : "",
      ports: service.ports.map((port) => ({ port: port.port, protocol: port.protocol })),
    }));
    return { services, exemptions };
  }

  /** The proxy's listener of a service port (tests and the CLI's diagnostics). */
  listenerPort(namespace: string, service: string, portName: string): number | undefined {
    return this.proxy.listenerPort(namespace, service, portName);
  }

  /**
   * Closes every listener, removes the VIP table, stops the name server and the mesh;
   * nothing is kept for a restart but the snapshot file, and a leaving node deletes that
   * too (its services are not this node's to serve any more).
   */
  async stop(options: AgentModuleStopOptions): Promise<void> {
    this.stopped = true;
    await this.stopParts();
    await this.writing;
    if (options.leaving) await rm(this.snapshotPath, { force: true });
  }

  private async stopParts(): Promise<void> {
    const { logger } = this.options;
    const step = async (what: string, fn: () => Promise<void> | void) => {
      try {
        await fn();
      } catch (error) {
        logger.warn(
          { err: error instanceof Error ? error.message : String(error) },
          `cannot stop ${what} cleanly`,
        );
      }
    };
    await step("the service proxy", () => this.proxy.close());
    await step("the service VIPs", () => this.options.vips?.remove());
    await step("the name server", () => this.options.dns?.stop());
    await step("the mesh", () => this.mesh?.stop());
  }
}

/** "http-alt" → "HTTP_ALT": a service or port name as an environment variable part. */
export function envName(name: string): string {
  return name.toUpperCase().replace(/[^A-Z0-9]/g, "_");
}

/**
 * The name server's VIP: the service range's base address + 10, as Kubernetes' cluster
 * DNS takes .10 of its range. Undefined for a range that is not IPv4 or too small.
 */
export function dnsVipOf(cidr: string): string | undefined {
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr.trim());
  if (!match) return undefined;
  const octets = match.slice(1, 5).map(Number);
  const prefix = Number(match[5]);
  if (octets.some((octet) => octet > 255) || prefix > 28) return undefined;
  const address = octets.reduce((value, octet) => value * 256 + octet, 0);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const vip = ((address & mask) >>> 0) + 10;
  return [24, 16, 8, 0].map((shift) => (vip >>> shift) & 0xff).join(".");
}

function pascal(word: string): string {
  const cleaned = word.replace(/[^A-Za-z0-9]/g, "");
  return cleaned === "" ? "Unknown" : cleaned[0]!.toUpperCase() + cleaned.slice(1).toLowerCase();
}

/**
 * The container driver: replicas are containers of a Docker-API engine (Docker, or
 * Podman's compatible service), named `cloudless-<replicaId>` and labelled with the
 * replica, workload and namespace so list() can find them after an agent restart, and
 * with their owner (cluster id, node name, node uid; ADR 0030) so that an agent lists,
 * adopts, stops and removes only its own — never another cluster's on a shared engine.
 *
 * Every engine call has a deadline (`withDeadline`, which also aborts the request);
 * a socket that does not answer makes the driver "unavailable", and it looks for an
 * engine again on the next call. Restarts are the agent's business: containers get
 * no restart policy. Storage reservations (storageGiB) are not enforced here: the
 * engines' overlay storage has no per-container quota without XFS project quotas.
 */
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { chmod, mkdir, rename, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import type { Readable } from "node:stream";
import Docker from "dockerode";
import { startStopwatch } from "../../lib/stopwatch.js";
import type { Logger } from "../../observe/logger.js";
import { silentLogger } from "../../observe/logger.js";
import type { DynamicUsers } from "../sandbox/dynamicUsers.js";
import { hostSeccompArch, ociSeccompProfile } from "../sandbox/seccomp.js";
import { DockerStreamDemuxer } from "./dockerStream.js";
import {
  DriverError,
  type ExecResult,
  type LogLine,
  type PortOwner,
  type ReplicaRunSpec,
  type ReplicaRuntimeStatus,
  type RuntimeDriver,
} from "./driver.js";
import { clusterLabel, nodeUidLabel, type OwnerMarks, type ReplicaOwner } from "./ownership.js";
import {
  checkReplicaId,
  DeadlineExceeded,
  describeError,
  errnoCode,
  sleep,
  withDeadline,
} from "./util.js";

export interface ContainerDriverOptions {
  /** Docker API socket; discovered when absent (see `defaultSocketCandidates`). */
  socketPath?: string;
  logger?: Logger;
  /** Deadline for ordinary engine calls (inspect, create, start, remove…). */
  callTimeoutMs?: number;
  /** Deadline for a health ping, and for each discovery ping. */
  pingTimeoutMs?: number;
  /** Deadline for pulling an image that is not present locally. */
  pullTimeoutMs?: number;
  /**
   * The node this driver serves. Containers are labelled with it and list() returns
   * only this node's. Without an owner, that is the only scoping (tests).
   */
  nodeName?: string;
  /**
   * The agent the replicas belong to: containers carry its marks, and the driver touches
   * only containers that are its own (ADR 0030). The agent always sets it.
   */
  owner?: ReplicaOwner;
  /**
   * Where the driver writes the seccomp profile the engine loads (Podman takes a path):
   * the agent's data dir. Absent: a temporary dir of its own (tests).
   */
  dataDir?: string;
  /**
   * The workloads' dynamic users, shared with the process driver (REQ-062, ADR 0050):
   * a container runs as its workload's uid unless its securityContext says otherwise.
   * Absent: containers run as nobody (65534).
   */
  users?: () => DynamicUsers;
  /**
   * The egress module (REQ-061, ADR 0057 "Containers"): told each container's address on
   * the bridge before its process starts, and when it stops. Absent: no egress rules.
   */
  egress?: ContainerEgress;
}

/** What the container driver tells the egress module. */
export interface ContainerEgress {
  /** Resolves once the rules for `address` are in the kernel; rejects to refuse the start. */
  admitContainer(
    replicaId: string,
    workloadKey: string,
    address: string | undefined,
  ): Promise<void>;
  releaseContainer(replicaId: string): Promise<void>;
}

/**
 * The container's IPv4 address on its network (the bridge): the first network's, else the
 * legacy top-level field; undefined without one (host network, or not set up yet).
 */
export function containerAddressOf(info: Docker.ContainerInspectInfo): string | undefined {
  const networks = Object.values(info.NetworkSettings?.Networks ?? {});
  for (const network of networks) {
    if (network?.IPAddress) return network.IPAddress;
  }
  // Older engines fill only the top-level field, which the typings omit.
  const legacy = (info.NetworkSettings as { IPAddress?: unknown } | undefined)?.IPAddress;
  return typeof legacy === "string" && legacy !== "" ? legacy : undefined;
}

export const replicaLabel = "cloudless.replica";
export const workloadLabel = "cloudless.workload";
export const namespaceLabel = "cloudless.namespace";
export const nodeLabel = "cloudless.node";
export { clusterLabel, nodeUidLabel };

/** The owner marks on a container's labels (missing ones stay missing: an older agent's). */
function marksOf(labels: Record<string, string> | undefined): OwnerMarks {
  const cluster = labels?.[clusterLabel];
  const nodeUid = labels?.[nodeUidLabel];
  return {
    ...(cluster !== undefined ? { cluster } : {}),
    // A container without a node label is nobody's we could prove: "" never matches.
    node: labels?.[nodeLabel] ?? "",
    ...(nodeUid !== undefined ? { nodeUid } : {}),
  };
}

/** Largest exec output kept per stream; the rest is dropped (exec is for probes and debugging). */
const maxExecOutputBytes = 4 * 1024 * 1024;

/**
 * Least privilege for containers (REQ-062, ADR 0054), the process sandbox's defaults
 * through the engine: every capability dropped (the spec's securityContext may add some),
 * no new privileges, the default seccomp profile, the workload's dynamic user, a private
 * /tmp, a pid limit and explicit rlimits.
 *
 * A private /tmp of at most this size: tmpfs pages count against the container's memory
 * limit, and a workload that needs more scratch space has its image's file system.
 */
const tmpfsMiB = 64;
/**
 * Processes and threads a container may have (cgroup pids.max): far above what a service
 * runs, far below what a fork bomb takes from the node (pid_max is 4 million at most).
 */
export const containerPidsLimit = 4096;
/**
 * rlimits given explicitly: without them the engine derives them from its own, which
 * runc fails to apply inside some sandboxes, and an image cannot raise them. nofile as
 * systemd gives services; nproc counts per uid on the whole host, so it is the pid limit.
 * Neither above the agent's own hard limit: runc cannot raise a hard limit without
 * CAP_SYS_RESOURCE, which a sandboxed engine lacks ("error setting rlimit type 7").
 */
const wantedUlimits = { nofile: 65_536, nproc: containerPidsLimit };

export function containerUlimits(
  limitsText: string = readOwnLimits(),
): Array<{ Name: string; Soft: number; Hard: number }> {
  const hard = (label: string): number => {
    const match = new RegExp(`^${label}\\s+\\S+\\s+(\\S+)`, "m").exec(limitsText);
    const value = Number(match?.[1]);
    return Number.isSafeInteger(value) && value > 0 ? value : Number.POSITIVE_INFINITY;
  };
  const nofile = Math.min(wantedUlimits.nofile, hard("Max open files"));
  const nproc = Math.min(wantedUlimits.nproc, hard("Max processes"));
  return [
    { Name: "nofile", Soft: nofile, Hard: nofile },
    { Name: "nproc", Soft: nproc, Hard: nproc },
  ];
}

function readOwnLimits(): string {
  try {
    return readFileSync("/proc/self/limits", "utf8");
  } catch {
    return "";
  }
}
/** The user of a container when the driver has no uid allocator (tests): nobody. */
const fallbackUid = 65_534;
/** The seccomp profile file's name in the driver's data dir. */
const seccompProfileFile = "seccomp-default.json";

export function containerNameFor(replicaId: string): string {
  return `cloudless-${replicaId}`;
}

/** Where to look for an engine when no socket is configured, in order of preference. */
export function defaultSocketCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  const candidates: string[] = [];
  const dockerHost = env.DOCKER_HOST;
  if (dockerHost?.startsWith("unix://")) candidates.push(dockerHost.slice("unix://".length));
  candidates.push("/var/run/docker.sock", "/run/podman/podman.sock");
  return [...new Set(candidates)];
}

export interface ContainerDriver extends RuntimeDriver {
  readonly name: "container";
  /** The socket in use once an engine has answered; undefined before that. */
  readonly socketPath: string | undefined;
}

export function createContainerDriver(options: ContainerDriverOptions = {}): ContainerDriver {
  return new DockerContainerDriver(options);
}

interface Engine {
  docker: Docker;
  socketPath: string;
  /** Whether it is Podman (asked once per engine): it takes the seccomp profile as a path. */
  podman?: Promise<boolean>;
}

/**
 * The `SecurityOpt` entry of the seccomp profile. Podman's compatible API takes the path
 * of a file on its host (its `seccomp=` is the profile path); Docker's daemon takes the
 * JSON itself, as its CLI sends it after reading the file.
 */
export function seccompSecurityOpt(
  profile: { path: string; json: string } | undefined,
  enginePodman: boolean,
): string {
  if (!profile) return "seccomp=unconfined";
  return `seccomp=${enginePodman ? profile.path : profile.json}`;
}

/** Podman names itself among the version's components; Docker does not. */
function isPodmanVersion(version: unknown): boolean {
  const components = (version as { Components?: Array<{ Name?: unknown }> } | null)?.Components;
  return (components ?? []).some(
    (component) => typeof component.Name === "string" && /podman/i.test(component.Name),
  );
}

/** HTTP status of a dockerode error, looking through a DriverError's cause. */
function statusCodeOf(error: unknown): number | undefined {
  const direct = (error as { statusCode?: unknown } | null)?.statusCode;
  if (typeof direct === "number") return direct;
  if (error instanceof DriverError) return statusCodeOf(error.cause);
  return undefined;
}

/** The engine's own message (dockerode prefixes it with the HTTP status and a reason). */
function engineMessage(error: unknown): string {
  const json = (error as { json?: unknown } | null)?.json;
  if (json && typeof json === "object") {
    const message = (json as { message?: unknown }).message;
    if (typeof message === "string" && message.length > 0) return message;
  }
  if (Buffer.isBuffer(json) && json.length > 0) return json.toString("utf8").trim();
  return describeError(error);
}

const unreachableCodes = new Set([
  "ECONNREFUSED",
  "ENOENT",
  "EACCES",
  "ECONNRESET",
  "EPIPE",
  "ENOTSOCK",
  "ETIMEDOUT",
]);

function parseEngineTime(value: string | undefined): number | undefined {
  if (!value || value.startsWith("0001-")) return undefined;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? undefined : ms;
}

class DockerContainerDriver implements ContainerDriver {
  readonly name = "container" as const;
  private engine: Engine | undefined;
  private readonly logger: Logger;
  private readonly callTimeoutMs: number;
  private readonly pingTimeoutMs: number;
  private readonly pullTimeoutMs: number;
  /**
   * The host ports each running container publishes, read once per container run: a
   * running container's port bindings cannot change, and start/stop/remove forget them.
   */
  private readonly published = new Map<string, Promise<Set<number> | undefined>>();
  /** The seccomp profile and where it was written (once per driver). */
  private profile: Promise<{ path: string; json: string }> | undefined;

  constructor(private readonly options: ContainerDriverOptions) {
    this.logger = (options.logger ?? silentLogger).child({ driver: "container" });
    this.callTimeoutMs = options.callTimeoutMs ?? 15_000;
    this.pingTimeoutMs = options.pingTimeoutMs ?? 2_000;
    this.pullTimeoutMs = options.pullTimeoutMs ?? 120_000;
  }

  get socketPath(): string | undefined {
    return this.engine?.socketPath;
  }

  private async ping(docker: Docker, socketPath: string): Promise<void> {
    // The typings omit ping's options, but dockerode passes abortSignal through.
    const ping = docker.ping.bind(docker) as unknown as (opts: {
      abortSignal: AbortSignal;
    }) => Promise<unknown>;
    await withDeadline(
      `ping of the container engine at ${socketPath}`,
      this.pingTimeoutMs,
      (signal) => ping({ abortSignal: signal }),
    );
  }

  /** The first socket that answers a ping; remembered until the engine stops answering. */
  private async connect(): Promise<Engine> {
    if (this.engine) return this.engine;
    const candidates = this.options.socketPath
      ? [this.options.socketPath]
      : defaultSocketCandidates();
    const failures: string[] = [];
    for (const socketPath of candidates) {
      if (!existsSync(socketPath)) {
        failures.push(`${socketPath}: no such socket`);
        continue;
      }
      const docker = new Docker({ socketPath });
      try {
        await this.ping(docker, socketPath);
        this.engine = { docker, socketPath };
        this.logger.debug({ socketPath }, "container engine answered");
        return this.engine;
      } catch (error) {
        failures.push(`${socketPath}: ${this.describe(error)}`);
      }
    }
    throw new DriverError(
      "unavailable",
      `no container engine is reachable (${failures.join("; ")})`,
    );
  }

  private describe(error: unknown): string {
    const code = errnoCode(error);
    if (code && unreachableCodes.has(code)) return `${code} (${describeError(error)})`;
    return engineMessage(error);
  }

  /**
   * One engine call with a deadline; connection failures become "unavailable" (and
   * forget the engine so the next call looks again), engine errors become "failed"
   * with the raw error as cause so callers can look at its status code.
   */
  private async call<T>(
    what: string,
    fn: (docker: Docker, signal: AbortSignal) => Promise<T>,
    timeoutMs = this.callTimeoutMs,
  ): Promise<T> {
    const engine = await this.connect();
    try {
      return await withDeadline(what, timeoutMs, (signal) => fn(engine.docker, signal));
    } catch (error) {
      throw this.mapError(what, engine, error);
    }
  }

  private mapError(what: string, engine: Engine, error: unknown): DriverError {
    if (error instanceof DriverError) {
      if (error.kind === "unavailable") this.engine = undefined;
      return error;
    }
    const code = errnoCode(error);
    if (code && unreachableCodes.has(code)) {
      this.engine = undefined;
      return new DriverError(
        "unavailable",
        `${what}: the container engine at ${engine.socketPath} is not reachable (${code})`,
        { cause: error },
      );
    }
    return new DriverError("failed", `${what}: ${engineMessage(error)}`, { cause: error });
  }

  async health(): Promise<{ ok: true } | { ok: false; reason: string }> {
    try {
      // connect() pings when it (re)discovers; a remembered engine is pinged here.
      const known = this.engine;
      if (known) await this.ping(known.docker, known.socketPath);
      else await this.connect();
      return { ok: true };
    } catch (error) {
      this.engine = undefined;
      return { ok: false, reason: describeError(error) };
    }
  }

  private get nodeName(): string | undefined {
    return this.options.owner?.nodeName ?? this.options.nodeName;
  }

  /** Whether a container with these labels is this agent's to touch. */
  private owns(labels: Record<string, string> | undefined, replicaId: string): boolean {
    const owner = this.options.owner;
    if (!owner) return true;
    return owner.judge(marksOf(labels), replicaId) !== "foreign";
  }

  /**
   * The replica's container, "foreign" when a container of that name exists but is not
   * this agent's (another cluster's on a shared engine), undefined when there is none.
   */
  private async inspect(
    replicaId: string,
  ): Promise<Docker.ContainerInspectInfo | "foreign" | undefined> {
    const name = containerNameFor(replicaId);
    let info: Docker.ContainerInspectInfo;
    try {
      info = await this.call(`inspecting container ${name}`, (docker, signal) =>
        docker.getContainer(name).inspect({ abortSignal: signal }),
      );
    } catch (error) {
      if (statusCodeOf(error) === 404) return undefined;
      throw error;
    }
    return this.owns(info.Config?.Labels ?? undefined, replicaId) ? info : "foreign";
  }

  /** Refuses to act on a container this agent does not own (DriverError "failed"). */
  private foreignError(replicaId: string): DriverError {
    return new DriverError(
      "failed",
      `container ${containerNameFor(replicaId)} belongs to another cluster or node on this engine; Cloudless leaves it alone (remove it by hand if it is stale)`,
    );
  }

  async start(spec: ReplicaRunSpec): Promise<void> {
    checkReplicaId(spec.replicaId);
    this.published.delete(spec.replicaId);
    const image = spec.image;
    if (!image) throw new DriverError("invalid", "the container driver needs an image");
    // Validated before anything is allocated or written.
    this.createOptions(spec, image, { uid: fallbackUid, seccomp: "seccomp=unconfined" });
    const name = containerNameFor(spec.replicaId);

    const existing = await this.inspect(spec.replicaId);
    if (existing === "foreign") throw this.foreignError(spec.replicaId);
    if (existing?.State.Running) {
      this.logger.debug({ replica: spec.replicaId }, "already running");
      return;
    }
    if (existing) {
      // An exited container of an earlier attempt: start fresh, as the spec may differ.
      await this.removeContainer(spec.replicaId);
    }
    await this.ensureImage(image);
    const profile = spec.security?.seccomp === false ? undefined : await this.seccompProfile();
    const create = this.createOptions(spec, image, {
      uid: this.userOf(spec),
      seccomp: seccompSecurityOpt(profile, await this.enginePodman()),
    });

    const container = await this.call(`creating container ${name}`, (docker, signal) =>
      docker.createContainer({ ...create, abortSignal: signal }),
    ).catch((error: unknown) => {
      throw this.startError(name, error);
    });
    try {
      // Egress (ADR 0057): with Podman the network is set up by init, before the
      // container's process exists, so its rules are in the kernel before its first
      // packet; Docker has no init, and its container runs unjudged until admitted.
      const initialized = this.options.egress ? await this.initContainer(name) : false;
      if (initialized) await this.admitEgress(spec, name);
      await this.call(`starting container ${name}`, (_docker, signal) =>
        container.start({ abortSignal: signal }),
      );
      if (this.options.egress && !initialized) await this.admitEgress(spec, name);
    } catch (error) {
      // A container that never ran holds the name and its port reservations; drop it so
      // the status line carries the reason and the next attempt starts clean.
      await this.removeContainer(spec.replicaId).catch(() => undefined);
      await this.options.egress?.releaseContainer(spec.replicaId).catch(() => undefined);
      throw this.startError(name, error);
    }
    this.logger.info({ replica: spec.replicaId, image }, "container started");
  }

  /**
   * Podman's `init` (libpod API, same socket): creates the container's namespaces and
   * network without starting its process. False on an engine without it (Docker).
   */
  private async initContainer(name: string): Promise<boolean> {
    if (!(await this.enginePodman())) return false;
    await this.call(
      `initializing container ${name}`,
      (docker, signal) =>
        new Promise<void>((resolve, reject) => {
          docker.modem.dial(
            {
              path: `/v4.0.0/libpod/containers/${encodeURIComponent(name)}/init`,
              method: "POST",
              statusCodes: { 204: true, 304: true, 404: "no such container", 500: "server error" },
              abortSignal: signal,
            } as never,
            (error: unknown) => (error ? reject(error) : resolve()),
          );
        }),
    );
    return true;
  }

  /** Tells the egress module the container's address; its rejection fails the start. */
  private async admitEgress(spec: ReplicaRunSpec, name: string): Promise<void> {
    const info = await this.inspect(spec.replicaId);
    const address = info && info !== "foreign" ? containerAddressOf(info) : undefined;
    try {
      await this.options.egress?.admitContainer(
        spec.replicaId,
        `${spec.namespace}/${spec.workload}`,
        address,
      );
    } catch (error) {
      throw new DriverError("failed", `${name}: ${describeError(error)}`, { cause: error });
    }
  }

  /** Errors the spec caused (missing binary, taken port) are "invalid"; others stay as they are. */
  private startError(name: string, error: unknown): DriverError {
    const mapped =
      error instanceof DriverError
        ? error
        : new DriverError("failed", `${name}: ${describeError(error)}`, { cause: error });
    if (mapped.kind !== "failed") return mapped;
    const text = mapped.message;
    if (
      /executable file not found|no such file or directory|permission denied|address already in use|port is already allocated|invalid/i.test(
        text,
      )
    ) {
      return new DriverError("invalid", text, { cause: mapped.cause });
    }
    return mapped;
  }

  /**
   * The user the replica will run as, so its secret files can be its own before it starts
   * (ADR 0055): the same uid `start` gives the container.
   */
  async replicaUser(spec: ReplicaRunSpec): Promise<{ uid: number; gid: number }> {
    const uid = this.userOf(spec);
    return { uid, gid: uid };
  }

  /** The uid the replica runs as: its securityContext's, else its workload's dynamic user. */
  private userOf(spec: ReplicaRunSpec): number {
    const explicit = spec.security?.runAsUser;
    if (explicit !== undefined) {
      const problem = this.options.users?.().explicitUidProblem(explicit);
      if (problem) throw new DriverError("invalid", problem);
      return explicit;
    }
    if (!this.options.users) return fallbackUid;
    try {
      return this.options.users().acquire(`${spec.namespace}/${spec.workload}`, spec.replicaId);
    } catch (error) {
      throw new DriverError("failed", `container user: ${describeError(error)}`, { cause: error });
    }
  }

  /**
   * The default seccomp profile (the process sandbox's deny list as an OCI profile, ADR
   * 0054) and the file it is written to, once per driver. 0644 in a dir the engine can
   * pass: the engine reads it, and it holds nothing secret. Written to a temporary name
   * and renamed, so an engine never reads half a profile.
   */
  private async seccompProfile(): Promise<{ path: string; json: string }> {
    this.profile ??= (async () => {
      const arch = hostSeccompArch();
      if (!arch) {
        throw new DriverError(
          "failed",
          `no seccomp profile for ${process.arch} (x86_64 and aarch64 only); set securityContext.seccompProfile: unconfined to run without one`,
        );
      }
      const json = JSON.stringify(ociSeccompProfile(arch));
      const dir = this.options.dataDir ?? mkdtempSync(path.join(tmpdir(), "cloudless-seccomp-"));
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const file = path.join(path.resolve(dir), seccompProfileFile);
      const temporary = `${file}.${process.pid}.tmp`;
      await writeFile(temporary, `${json}\n`, { mode: 0o644 });
      // Whatever the umask: an engine that is not root must read it too.
      await chmod(temporary, 0o644);
      await rename(temporary, file);
      return { path: file, json };
    })();
    try {
      return await this.profile;
    } catch (error) {
      this.profile = undefined;
      if (error instanceof DriverError) throw error;
      throw new DriverError("failed", `seccomp profile: ${describeError(error)}`, { cause: error });
    }
  }

  /** Whether the engine is Podman, asked once per engine connection (with a deadline). */
  private async enginePodman(): Promise<boolean> {
    const engine = await this.connect();
    // version() takes no abort signal in dockerode's typings; the deadline still bounds it.
    engine.podman ??= this.call("asking the container engine its version", (docker) =>
      docker.version(),
    ).then(isPodmanVersion);
    try {
      return await engine.podman;
    } catch (error) {
      engine.podman = undefined;
      throw error;
    }
  }

  private createOptions(
    spec: ReplicaRunSpec,
    image: string,
    security: { uid: number; seccomp: string },
  ): Docker.ContainerCreateOptions {
    const env: string[] = [];
    for (const [key, value] of Object.entries(spec.env)) {
      if (key.length === 0 || key.includes("=") || key.includes("\0") || value.includes("\0")) {
        throw new DriverError(
          "invalid",
          `environment variable "${key}" has an invalid name or value`,
        );
      }
      env.push(`${key}=${value}`);
    }
    const exposedPorts: Record<string, object> = {};
    const portBindings: Record<string, Array<{ HostIp: string; HostPort: string }>> = {};
    for (const port of spec.ports) {
      for (const value of [port.containerPort, port.hostPort]) {
        if (!Number.isInteger(value) || value < 1 || value > 65535) {
          throw new DriverError("invalid", `port "${port.name}" has an invalid number ${value}`);
        }
      }
      const key = `${port.containerPort}/${port.protocol}`;
      exposedPorts[key] = {};
      const bindings = portBindings[key] ?? [];
      // An empty HostIp means every address of the node, as 0.0.0.0 does for Docker.
      // Podman 4.x (netavark) turns an explicit "0.0.0.0" into a DNAT rule matching
      // only destination 0.0.0.0, and connections then hang on its port reservation.
      bindings.push({ HostIp: port.hostIP ?? "", HostPort: String(port.hostPort) });
      portBindings[key] = bindings;
    }
    const { cpuMillicores, memoryMiB } = spec.resources;
    if (!(cpuMillicores >= 0) || !(memoryMiB >= 0)) {
      throw new DriverError("invalid", "cpu and memory reservations must not be negative");
    }
    const memoryBytes = Math.round(memoryMiB * 1024 * 1024);
    return {
      name: containerNameFor(spec.replicaId),
      Image: image,
      Labels: {
        [replicaLabel]: spec.replicaId,
        [workloadLabel]: spec.workload,
        [namespaceLabel]: spec.namespace,
        ...(this.nodeName ? { [nodeLabel]: this.nodeName } : {}),
        ...this.ownerLabels(),
      },
      Env: env,
      // The workload's user, never the image's: an image that needs root says so in its
      // spec (securityContext.runAsUser: 0), where policies can see it (ADR 0054).
      User: `${security.uid}:${security.uid}`,
      // An explicit entrypoint must not pick up the image's CMD as its arguments, so
      // Cmd is set (possibly empty) whenever the entrypoint is overridden.
      ...(spec.command ? { Entrypoint: spec.command, Cmd: spec.args ?? [] } : {}),
      ...(!spec.command && spec.args ? { Cmd: spec.args } : {}),
      ExposedPorts: exposedPorts,
      Tty: false,
      OpenStdin: false,
      HostConfig: {
        NetworkMode: "bridge",
        PortBindings: portBindings,
        // The agent's supervisor owns restarts (with backoff and status reporting).
        RestartPolicy: { Name: "no" },
        // 0 means "no limit" to the engine; swap equal to memory means no swap on top,
        // so the limit behaves like the process driver's (OOM kill at the limit).
        ...(memoryBytes > 0 ? { Memory: memoryBytes, MemorySwap: memoryBytes } : {}),
        ...(cpuMillicores > 0 ? { NanoCpus: Math.round(cpuMillicores * 1_000_000) } : {}),
        // Service DNS (issue 14): the agent's name server through its VIP.
        ...(spec.dns
          ? { Dns: spec.dns.servers, DnsSearch: spec.dns.search, DnsOptions: spec.dns.options }
          : {}),
        // Secrets and configs (ADR 0055): the directory, not its files, so the agent's
        // atomic swap of `..data` is seen inside; read-only.
        ...(spec.mounts && spec.mounts.length > 0
          ? {
              Mounts: spec.mounts.map((mount) => ({
                Type: "bind",
                Source: mount.source,
                Target: mount.target,
                ReadOnly: true,
              })),
            }
          : {}),
        // Least privilege (REQ-062, ADR 0054): see the constants at the top.
        SecurityOpt: ["no-new-privileges", security.seccomp],
        CapDrop: ["ALL"],
        CapAdd: spec.security?.capabilitiesAdd ?? [],
        ReadonlyRootfs: spec.security?.readOnlyRootFilesystem === true,
        Tmpfs: { "/tmp": `rw,nosuid,nodev,mode=1777,size=${tmpfsMiB}m` },
        PidsLimit: containerPidsLimit,
        Ulimits: containerUlimits(),
      },
    };
  }

  /** The owner marks as labels (cluster id, node uid once known). */
  private ownerLabels(): Record<string, string> {
    const marks = this.options.owner?.marks();
    if (!marks) return {};
    return {
      ...(marks.cluster ? { [clusterLabel]: marks.cluster } : {}),
      ...(marks.nodeUid ? { [nodeUidLabel]: marks.nodeUid } : {}),
    };
  }

  /** Makes sure the image is local, pulling it once (with a deadline) when it is not. */
  private async ensureImage(image: string): Promise<void> {
    try {
      // Image inspect takes no abort signal in dockerode; the deadline still bounds it.
      await this.call(`inspecting image ${image}`, (docker) => docker.getImage(image).inspect());
      return;
    } catch (error) {
      if (statusCodeOf(error) !== 404) throw error;
    }
    this.logger.info({ image }, "image not present, pulling");
    try {
      await this.call(
        `pulling image ${image}`,
        async (docker, signal) => {
          const stream = (await docker.pull(image, { abortSignal: signal })) as Readable;
          await consumePullProgress(stream);
        },
        this.pullTimeoutMs,
      );
    } catch (error) {
      // An engine that went away is "unavailable"; a registry that is unreachable, slow
      // or does not know the image means the image cannot be had here.
      if (
        error instanceof DriverError &&
        error.kind === "unavailable" &&
        !(error instanceof DeadlineExceeded)
      ) {
        throw error;
      }
      const reason =
        error instanceof DriverError && error.cause !== undefined
          ? engineMessage(error.cause)
          : describeError(error);
      throw new DriverError(
        "imageNotFound",
        `image "${image}" is not present on this node and could not be pulled: ${reason}`,
        { cause: error },
      );
    }
  }

  async stop(replicaId: string, graceMs: number, hurry?: AbortSignal): Promise<void> {
    checkReplicaId(replicaId);
    this.published.delete(replicaId);
    const name = containerNameFor(replicaId);
    // Another cluster's container of that name is not ours to stop: for us it is gone.
    if (this.options.owner && (await this.inspect(replicaId)) === "foreign") return;
    const graceSeconds = hurry?.aborted ? 0 : Math.max(0, Math.ceil(graceMs / 1000));
    // A hurry during the grace period kills the container while the stop waits; the
    // engine then ends the stop too.
    const kill = () => {
      this.call(`killing container ${name}`, (docker, signal) =>
        docker.getContainer(name).kill({ signal: "SIGKILL", abortSignal: signal }),
      ).catch(() => undefined); // already stopped or gone: the stop reports how it ended
    };
    if (graceSeconds > 0) hurry?.addEventListener("abort", kill, { once: true });
    try {
      await this.call(
        `stopping container ${name}`,
        (docker, signal) =>
          docker.getContainer(name).stop({ t: graceSeconds, abortSignal: signal }),
        graceSeconds * 1000 + this.callTimeoutMs,
      );
    } catch (error) {
      const status = statusCodeOf(error);
      // 304: already stopped; 404: already gone. Both mean "stopped".
      if (status === 304 || status === 404) {
        await this.releaseEgress(replicaId);
        return;
      }
      throw error;
    } finally {
      hurry?.removeEventListener("abort", kill);
    }
    // Stopped: the engine frees its address for the next container, whoever's it is.
    await this.releaseEgress(replicaId);
  }

  private async releaseEgress(replicaId: string): Promise<void> {
    await this.options.egress?.releaseContainer(replicaId).catch((error: unknown) => {
      this.logger.warn(
        { replica: replicaId, err: describeError(error) },
        "cannot drop the container's egress rules",
      );
    });
  }

  async remove(replicaId: string): Promise<void> {
    if (!(await this.removeContainer(replicaId))) return;
    // Its workload's uid is free again once no replica on the node uses it.
    this.options.users?.().release(replicaId);
    // After the uid: the egress table is compiled again without either.
    await this.releaseEgress(replicaId);
  }

  /**
   * Removes the container, keeping the replica's uid (a start replacing an exited
   * container keeps its user); false when the container is another agent's.
   */
  private async removeContainer(replicaId: string): Promise<boolean> {
    checkReplicaId(replicaId);
    this.published.delete(replicaId);
    const name = containerNameFor(replicaId);
    if (this.options.owner && (await this.inspect(replicaId)) === "foreign") return false;
    try {
      await this.call(`removing container ${name}`, (docker, signal) =>
        docker.getContainer(name).remove({ force: true, v: true, abortSignal: signal }),
      );
    } catch (error) {
      if (statusCodeOf(error) !== 404) throw error;
    }
    return true;
  }

  async status(replicaId: string): Promise<ReplicaRuntimeStatus> {
    checkReplicaId(replicaId);
    const info = await this.inspect(replicaId);
    if (!info || info === "foreign") return { state: "missing" };
    const state = info.State;
    const startedAtMs = parseEngineTime(state.StartedAt);
    if (state.Running) return { state: "running", ...(startedAtMs ? { startedAtMs } : {}) };
    const finishedAtMs = parseEngineTime(state.FinishedAt);
    // A container that was created but never started has no meaningful exit code.
    const neverRan = startedAtMs === undefined;
    return {
      state: "exited",
      ...(neverRan ? {} : { exitCode: state.ExitCode }),
      ...(startedAtMs ? { startedAtMs } : {}),
      ...(finishedAtMs ? { finishedAtMs } : {}),
      oomKilled: state.OOMKilled === true,
    };
  }

  async list(): Promise<string[]> {
    const containers = await this.call("listing containers", (docker, signal) =>
      docker.listContainers({
        all: true,
        filters: {
          label: [replicaLabel, ...(this.nodeName ? [`${nodeLabel}=${this.nodeName}`] : [])],
        },
        abortSignal: signal,
      }),
    );
    const ids = new Set<string>();
    for (const container of containers) {
      const id = container.Labels?.[replicaLabel];
      // Same node name, another cluster (or enrollment): not this agent's to adopt or remove.
      if (id && this.owns(container.Labels, id)) ids.add(id);
    }
    return [...ids].sort();
  }

  /**
   * Who answers on host port `port`: the replica when its running container publishes
   * the port. The engine holds a published port for the container's life (rootful
   * Podman's conmon, rootless Podman's rootlessport, Docker's docker-proxy bind it) and
   * forwards it into the container (netavark/iptables DNAT also catches 127.0.0.1), so
   * no other program can listen on it meanwhile and a probe of it reaches this
   * container. A port the container does not publish belongs to someone else.
   */
  async portOwner(replicaId: string, port: number): Promise<PortOwner> {
    checkReplicaId(replicaId);
    let lookup = this.published.get(replicaId);
    if (!lookup) {
      lookup = this.publishedPorts(replicaId);
      this.published.set(replicaId, lookup);
      // A failed lookup is not remembered: the next probe asks again.
      lookup.catch(() => this.published.delete(replicaId));
    }
    const ports = await lookup;
    if (ports === undefined) {
      this.published.delete(replicaId);
      return { kind: "nobody" };
    }
    if (ports.has(port)) return { kind: "replica" };
    const list = [...ports].sort((a, b) => a - b).join(", ") || "none";
    return {
      kind: "other",
      holder: `whatever listens there: container ${containerNameFor(replicaId)} does not publish it (it publishes ${list})`,
    };
  }

  /** Host ports the running container publishes; undefined when it does not run. */
  private async publishedPorts(replicaId: string): Promise<Set<number> | undefined> {
    const info = await this.inspect(replicaId);
    // Another owner's container publishes nothing of this replica's.
    if (!info || info === "foreign" || !info.State.Running) return undefined;
    const ports = new Set<number>();
    for (const bindings of Object.values(info.NetworkSettings?.Ports ?? {})) {
      for (const binding of bindings ?? []) {
        const hostPort = Number(binding.HostPort);
        if (Number.isInteger(hostPort) && hostPort > 0) ports.add(hostPort);
      }
    }
    return ports;
  }

  async *logs(
    replicaId: string,
    options: { follow: boolean; tailLines?: number; signal?: AbortSignal },
  ): AsyncIterable<LogLine> {
    // Lines arrive in batches (a read, a frame); none is handed out after the abort.
    for await (const line of this.readLogs(replicaId, options)) {
      if (options.signal?.aborted) return;
      yield line;
    }
  }

  private async *readLogs(
    replicaId: string,
    options: { follow: boolean; tailLines?: number; signal?: AbortSignal },
  ): AsyncGenerator<LogLine> {
    checkReplicaId(replicaId);
    const name = containerNameFor(replicaId);
    if (this.options.owner && (await this.inspect(replicaId)) === "foreign") {
      throw this.foreignError(replicaId);
    }
    const tail = options.tailLines !== undefined ? { tail: Math.max(0, options.tailLines) } : {};
    const demuxer = new DockerStreamDemuxer();
    const missing = (error: unknown): unknown =>
      statusCodeOf(error) === 404
        ? new DriverError("failed", `replica "${replicaId}" has no container on this node`)
        : error;

    if (!options.follow) {
      const buffer = await this.call(`reading logs of ${name}`, (docker, signal) =>
        docker
          .getContainer(name)
          .logs({ stdout: true, stderr: true, follow: false, ...tail, abortSignal: signal }),
      ).catch((error: unknown) => {
        throw missing(error);
      });
      yield* demuxer.pushLines(Buffer.isBuffer(buffer) ? buffer : Buffer.from(String(buffer)));
      yield* demuxer.flushLines();
      return;
    }

    if (options.signal?.aborted) return;
    // The stream lives until the caller aborts (or the container stops), so only opening
    // it has a deadline; the caller's signal tears down the request itself.
    const streamController = new AbortController();
    const onAbort = (): void => streamController.abort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let stream: Readable | undefined;
    try {
      stream = (await this.call(`following logs of ${name}`, (docker, deadline) => {
        deadline.addEventListener("abort", onAbort, { once: true });
        return docker.getContainer(name).logs({
          stdout: true,
          stderr: true,
          follow: true,
          ...tail,
          abortSignal: streamController.signal,
        });
      }).catch((error: unknown) => {
        throw missing(error);
      })) as Readable;
      const openStream = stream;
      streamController.signal.addEventListener("abort", () => openStream.destroy(), { once: true });
      try {
        for await (const chunk of openStream) {
          yield* demuxer.pushLines(chunk as Buffer);
        }
      } catch (error) {
        if (!streamController.signal.aborted) throw error;
      }
      yield* demuxer.flushLines();
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      stream?.destroy();
    }
  }

  async exec(replicaId: string, command: string[], timeoutMs: number): Promise<ExecResult> {
    checkReplicaId(replicaId);
    if (command.length === 0) throw new DriverError("invalid", "exec needs a command");
    const name = containerNameFor(replicaId);
    if (this.options.owner && (await this.inspect(replicaId)) === "foreign") {
      throw this.foreignError(replicaId);
    }
    const exec = await this.call(`creating exec in ${name}`, (docker, signal) =>
      docker.getContainer(name).exec({
        Cmd: command,
        AttachStdout: true,
        AttachStderr: true,
        Tty: false,
        abortSignal: signal,
      }),
    ).catch((error: unknown) => {
      const status = statusCodeOf(error);
      if (status === 404 || status === 409) {
        throw new DriverError("failed", `replica "${replicaId}" is not running`, { cause: error });
      }
      throw error;
    });

    const output = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
    const sizes = { stdout: 0, stderr: 0 };
    const engine = await this.connect();
    try {
      await withDeadline(
        `exec of "${command.join(" ")}" in replica ${replicaId}`,
        timeoutMs,
        async (signal) => {
          const stream = (await exec.start({
            hijack: false,
            Detach: false,
            Tty: false,
            abortSignal: signal,
          })) as unknown as Readable;
          signal.addEventListener("abort", () => stream.destroy(), { once: true });
          const demuxer = new DockerStreamDemuxer();
          for await (const chunk of stream) {
            for (const frame of demuxer.push(chunk as Buffer)) {
              const room = maxExecOutputBytes - sizes[frame.stream];
              if (room <= 0) continue;
              const kept = frame.payload.subarray(0, room);
              output[frame.stream].push(Buffer.from(kept));
              sizes[frame.stream] += kept.length;
            }
          }
        },
        "failed",
      );
    } catch (error) {
      // The command may keep running inside the container: the Docker API cannot kill an exec.
      throw this.mapError(`exec in ${name}`, engine, error);
    }

    // The stream can end a moment before the engine records the exit code.
    const elapsedMs = startStopwatch();
    for (;;) {
      const info = await this.call(`inspecting exec in ${name}`, (_docker, signal) =>
        exec.inspect({ abortSignal: signal }),
      );
      if (!info.Running && typeof info.ExitCode === "number") {
        return {
          exitCode: info.ExitCode,
          stdout: Buffer.concat(output.stdout).toString("utf8"),
          stderr: Buffer.concat(output.stderr).toString("utf8"),
        };
      }
      if (elapsedMs() > this.callTimeoutMs) {
        throw new DriverError("failed", `exec in ${name} finished but reported no exit code`);
      }
      await sleep(50);
    }
  }
}

/**
 * Reads a pull's progress stream (JSON objects, one per line) to its end. The engine
 * reports a failed pull in-band with an `error` field and a 200 status, so the stream
 * must be read to know whether the pull worked.
 */
async function consumePullProgress(stream: Readable): Promise<void> {
  let pending = "";
  let failure: string | undefined;
  const handle = (line: string): void => {
    if (line.trim().length === 0) return;
    try {
      const event = JSON.parse(line) as { error?: unknown; errorDetail?: { message?: unknown } };
      const message = event.errorDetail?.message ?? event.error;
      if (typeof message === "string" && message.length > 0) failure = message;
    } catch {
      // Not JSON: progress output from an engine that does not frame it; ignore.
    }
  };
  for await (const chunk of stream) {
    pending += (chunk as Buffer).toString("utf8");
    const lines = pending.split("\n");
    pending = lines.pop() ?? "";
    for (const line of lines) handle(line);
  }
  handle(pending);
  if (failure !== undefined) throw new Error(failure);
}

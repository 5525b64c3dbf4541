/**
 * Runtime drivers run replicas on a node (DESIGN.md decision 7). `container` speaks
 * the Docker Engine API (Docker or Podman's compatible service); `process` runs a
 * child process in its own cgroup and working directory. The agent's replica
 * supervisor talks only to this interface.
 */
export type DriverName = "container" | "process";

export interface PortMapping {
  name: string;
  /** Port the workload listens on inside its network namespace (container) or on the host (process). */
  containerPort: number;
  /** Port on the node where it is reachable; for the process driver equal to containerPort. */
  hostPort: number;
  protocol: "tcp" | "udp";
  /** Container driver: the node address the port is published on; absent: every address. */
  hostIP?: string;
}

export interface ReplicaRunSpec {
  replicaId: string;
  namespace: string;
  workload: string;
  driver: DriverName;
  /** Container image (container driver). */
  image?: string;
  /** Entrypoint override (container) or the program and its leading arguments (process). */
  command?: string[];
  args?: string[];
  env: Record<string, string>;
  ports: PortMapping[];
  resources: { cpuMillicores: number; memoryMiB: number; storageGiB: number };
  /**
   * Container driver: the name server and search list the engine writes into the
   * container's resolv.conf (service DNS, issue 14); absent: the engine's default.
   */
  dns?: { servers: string[]; search: string[]; options: string[] };
  /**
   * Secrets and configs the replica reads (REQ-063, ADR 0055): names and where, never
   * values. The agent's replica files turn them into `mounts` and `env` before each start.
   */
  files?: ReplicaFileSource[];
  /** Host directories bound read-only into the replica (its secrets and configs, ADR 0055). */
  mounts?: ReadOnlyMount[];
  /**
   * How far the least-privilege defaults are loosened (REQ-062, ADR 0054); absent: the
   * defaults (the workload's dynamic user, no capabilities, the default seccomp filter).
   */
  security?: ReplicaSecurity;
}

/** A secret or config a replica references (spec.secrets[], spec.configs[]). */
export interface ReplicaFileSource {
  kind: "secret" | "config";
  name: string;
  /** Absolute path inside the replica (default /run/secrets/<name>, /run/configs/<name>). */
  mountPath: string;
  /** Secrets: environment variables set from keys at start. */
  env?: { name: string; key: string }[];
  /** Configs: swap the files in place (reload) or leave it to a rolling restart. */
  onChange?: "reload" | "restart";
}

/** A directory of the host seen read-only at `target` inside the replica. */
export interface ReadOnlyMount {
  source: string;
  target: string;
}

/** A workload's `securityContext`, decoded for the drivers. */
export interface ReplicaSecurity {
  /** The uid and gid to run as; absent: the workload's dynamic user. */
  runAsUser?: number;
  /** Capabilities kept, bare upper-case names ("NET_BIND_SERVICE"), no duplicates. */
  capabilitiesAdd?: string[];
  readOnlyRootFilesystem?: boolean;
  /** false: seccompProfile unconfined. */
  seccomp?: boolean;
}

export type DriverErrorKind =
  /** The image is not present locally and could not be pulled. */
  | "imageNotFound"
  /** The spec cannot run on this driver (bad command, missing binary, bad port…). */
  | "invalid"
  /** The engine is not reachable (socket gone, daemon down). */
  | "unavailable"
  /** Anything else the driver could not do. */
  | "failed";

/** A driver failure with a message fit for a replica's status line. */
export class DriverError extends Error {
  constructor(
    readonly kind: DriverErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "DriverError";
  }
}

export interface ReplicaRuntimeStatus {
  state: "running" | "exited" | "missing";
  exitCode?: number;
  startedAtMs?: number;
  finishedAtMs?: number;
  /** The kernel's OOM killer ended it (memory limit reached). */
  oomKilled?: boolean;
}

export interface LogLine {
  stream: "stdout" | "stderr";
  line: string;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/**
 * Who answers on a host port, as far as the driver can tell: a probe that reached
 * something other than its replica must not pass (REQ-032, ADR 0032).
 */
export type PortOwner =
  /** The replica listens on it (process), or the engine publishes it for the replica (container). */
  | { kind: "replica" }
  /** Nothing listens on it now. */
  | { kind: "nobody" }
  /** Something else holds it; `holder` says what, for a status line: "pid 4242 (python3)". */
  | { kind: "other"; holder: string };

export interface RuntimeDriver {
  readonly name: DriverName;
  /** Whether the driver can run replicas here now, and why not. */
  health(): Promise<{ ok: true } | { ok: false; reason: string }>;
  /** Creates and starts the replica; idempotent for a replica that already runs. */
  start(spec: ReplicaRunSpec): Promise<void>;
  /**
   * Stops the replica: SIGTERM, then SIGKILL after graceMs, or at once when `hurry`
   * aborts during the grace period (a second Ctrl-C, ADR 0028). Idempotent.
   */
  stop(replicaId: string, graceMs: number, hurry?: AbortSignal): Promise<void>;
  /** Removes everything the replica left behind (container, working directory, cgroup). Idempotent. */
  remove(replicaId: string): Promise<void>;
  status(replicaId: string): Promise<ReplicaRuntimeStatus>;
  /** Replica ids this driver has resources for on this node (to adopt after an agent restart). */
  list(): Promise<string[]>;
  /** Log lines, the last `tailLines` first; with follow, keeps going until the signal aborts. */
  logs(
    replicaId: string,
    options: { follow: boolean; tailLines?: number; signal?: AbortSignal },
  ): AsyncIterable<LogLine>;
  /** Runs a command inside the replica (its container, or its working directory and cgroup). */
  exec(replicaId: string, command: string[], timeoutMs: number): Promise<ExecResult>;
  /**
   * Who answers on host port `port` of the replica. Optional: a driver without it
   * cannot tell, and its replicas' probes trust whatever answers.
   */
  portOwner?(replicaId: string, port: number): Promise<PortOwner>;
  /**
   * Who must own the replica's secret files for it alone to read them (its sandbox user,
   * ADR 0055). Optional: absent or undefined, the files stay the agent's (root's).
   */
  replicaUser?(spec: ReplicaRunSpec): Promise<{ uid: number; gid: number } | undefined>;
}

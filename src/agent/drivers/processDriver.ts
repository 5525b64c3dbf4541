/**
 * The process driver: a replica is a child process of the agent, in its own process
 * group, cgroup(s) with the replica's cpu and memory limits (REQ-011) and private
 * working directory (REQ-052). Its state lives under <dataDir>/replicas/<replicaId>:
 *
 *   work/                the working directory (cwd and HOME), mode 0700
 *   stdout.log, stderr.log  the output, written by the process itself; rotated to *.1
 *   owner.json           whose it is (cluster id, node name, node uid; ADR 0030)
 *   pid, process.json    who it is (pid, start time, cgroup), to adopt it after a restart
 *   exit.json            how it ended, when the agent saw it end
 *
 * With an owner, cgroups live under <cgroupParent>/<cluster id>/<replicaId>, so agents of
 * two clusters on one host never share one, and the driver lists, adopts, stops and
 * removes only replicas whose owner.json is its agent's.
 *
 * The process does not depend on the agent: its output goes straight to files and it
 * leads its own session, so an agent restart neither kills it nor loses its logs.
 * It shares the node's network, so ports are used as given (hostPort = containerPort).
 * Disk use (storageGiB) is not limited.
 *
 * Sandboxed by default (REQ-062, ADR 0050, src/agent/sandbox/): each workload's replicas
 * run as the workload's own user from the dynamic uid range, with no capabilities, no
 * new privileges, the default seccomp filter, a read-only view of the host, a private
 * /tmp, the work dir (owned by that user, 0700) as the only writable path and the
 * agent's data dir hidden. With `sandbox: "off"` (development) they run as the agent's
 * user, as before.
 */
import { type ChildProcess, spawn } from "node:child_process";
import {
  closeSync,
  existsSync,
  openSync,
  readFileSync,
  readlinkSync,
  writeFileSync,
} from "node:fs";
import {
  access,
  chmod,
  constants,
  copyFile,
  lchown,
  mkdir,
  open,
  readdir,
  readFile,
  rm,
  stat,
  truncate,
  writeFile,
} from "node:fs/promises";
import { constants as osConstants } from "node:os";
import * as path from "node:path";
import { type Clock, systemClock } from "../../lib/clock.js";
import { startStopwatch } from "../../lib/stopwatch.js";
import type { Logger } from "../../observe/logger.js";
import { silentLogger } from "../../observe/logger.js";
import { readProcStat } from "../procfs.js";
import { DynamicUsers, defaultUidRange, type UidRange } from "../sandbox/dynamicUsers.js";
import { findSandboxBinaries, type SandboxBinaries, sandboxArgv } from "../sandbox/launch.js";
import { hostSeccompArch, seccompFilterBytes } from "../sandbox/seccomp.js";
import {
  type CgroupLayout,
  type CgroupPaths,
  cgroupPathsFor,
  cgroupSuffix,
  createReplicaCgroup,
  detectCgroupLayout,
  isInCgroup,
  killMembers,
  prepareParent,
  readOomKillCount,
  readProcs,
  removeReplicaCgroup,
} from "./cgroups.js";
import {
  DriverError,
  type ExecResult,
  type LogLine,
  type PortOwner,
  type ReadOnlyMount,
  type ReplicaRunSpec,
  type ReplicaRuntimeStatus,
  type RuntimeDriver,
} from "./driver.js";
import { LineSplitter } from "./lineSplitter.js";
import { listeningInodes, SocketOwners } from "./listeningSockets.js";
import type { OwnerMarks, Ownership, ReplicaOwner } from "./ownership.js";
import { checkReplicaId, DeadlineExceeded, describeError, errnoCode, sleep } from "./util.js";

export type { CgroupPaths } from "./cgroups.js";

export interface ProcessDriverOptions {
  /** The agent's data directory; replicas live in <dataDir>/replicas/<replicaId>. */
  dataDir: string;
  /** Where the cgroup filesystem is mounted (default /sys/fs/cgroup). */
  cgroupRoot?: string;
  /**
   * Name of the cgroup replicas are created under (default "cloudless"); with an owner,
   * replicas go one level deeper, under <cgroupParent>/<cluster id>.
   */
  cgroupParent?: string;
  /**
   * The agent the replicas belong to (ADR 0030): written to each replica's owner.json;
   * the driver touches only replicas that are its own. The agent always sets it.
   */
  owner?: ReplicaOwner;
  /**
   * Refuse to start replicas when cgroup limits cannot be applied (default true).
   * With false, replicas run without limits where cgroups are not writable.
   */
  enforceLimits?: boolean;
  logger?: Logger;
  /** A log file larger than this is rotated to <file>.1 (one generation kept). */
  maxLogBytes?: number;
  /** How often log sizes are checked. */
  logCheckIntervalMs?: number;
  /**
   * The time replicas' starts and ends are stamped with, and port-owner answers are
   * remembered by (default the system clock). Waits on a real process (its cgroup join,
   * its exit) keep real time: they sleep between looks at /proc, and a deadline on a
   * clock that only tests move would never pass.
   */
  clock?: Clock;
  /**
   * "on" (default): replicas run in the sandbox (REQ-062); where it cannot be built (no
   * root, no bwrap or setpriv) they are refused with the reason. "off": replicas run as
   * the agent's user without a sandbox (development only; the agent logs a warning).
   */
  sandbox?: "on" | "off";
  /** The uids workloads' users are taken from (default systemd's 61184-65519). */
  replicaUidRange?: UidRange;
  /**
   * The uid table shared with the container driver (a workload's replicas share its user,
   * whichever driver runs them); absent: the driver loads its own from the data dir.
   */
  users?: () => DynamicUsers;
  /**
   * More directories the sandbox hides besides the agent's data dir (e.g. a coordinator's
   * data dir with the CA on the same host).
   */
  hiddenDirs?: string[];
  /**
   * Called with a sandboxed replica's workload key and uid before it is launched; the
   * launch waits for it, and a rejection fails the start (the egress policy's rules must
   * be in the kernel first, REQ-061, ADR 0057).
   */
  beforeLaunch?: (workloadKey: string, uid: number) => Promise<void>;
}

export interface ProcessDriver extends RuntimeDriver {
  readonly name: "process";
  /** The replica's cgroup directories, or undefined where cgroups are not usable. */
  cgroupPaths(replicaId: string): CgroupPaths | undefined;
  /** <dataDir>/replicas/<replicaId>: pid, exit status and log files. */
  replicaDir(replicaId: string): string;
  /** The replica's private working directory (REQ-052), its cwd and HOME. */
  workDir(replicaId: string): string;
  /** Stops background timers; replicas keep running (they outlive the agent). */
  close(): void;
}

export function createProcessDriver(options: ProcessDriverOptions): ProcessDriver {
  return new CgroupProcessDriver(options);
}

/**
 * How long a port found held by its replica alone is trusted without reading the host's
 * listeners again. Reading /proc/net/tcp walks the kernel's socket tables (milliseconds
 * on a large or busy host); what can slip in meanwhile is only a listener added beside
 * the replica's own (SO_REUSEPORT of the same user, an address the replica's does not
 * cover), since the replica's bound port keeps every other bind out.
 */
const portRecheckMs = 10_000;
/** Confirmed ports remembered; the oldest goes first. */
const maxConfirmedPorts = 4096;

interface ConfirmedPort {
  sockets: Array<{ inode: number; pid: number; fd: string }>;
  checkedAtMs: number;
}
/** Whose a replica is, in its directory (ADR 0030). */
const ownerFileName = "owner.json";

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const maxExecOutputBytes = 4 * 1024 * 1024;
const logPollIntervalMs = 200;
/** How far up a process's parents are followed to find the replica's sandbox (bwrap, its init, the workload: 3). */
const maxAncestorDepth = 32;

/**
 * Joins the cgroups named by the leading arguments, then becomes the workload. The
 * shell's pid is the workload's pid (exec keeps it), so the workload and everything it
 * forks are inside the cgroups from their first instruction. Arguments travel as
 * positional parameters, never through the script text, so nothing needs quoting.
 */
const joinAndExec = [
  'n="$1"; shift',
  'while [ "$n" -gt 0 ]; do',
  '  echo $$ > "$1" || { echo "cloudless: cannot join cgroup $1" >&2; exit 125; }',
  "  shift; n=$((n - 1))",
  "done",
  'exec "$@"',
].join("\n");

/**
 * The same for a sandboxed replica, but the shell stays as bwrap's parent instead of
 * becoming it: bwrap runs with --die-with-parent, so killing the replica's process
 * (this shell, whoever does it) takes the whole sandbox along, while an agent that
 * dies (the shell's parent) leaves it running (ADR 0031). The exit status is bwrap's,
 * which is the workload's.
 */
const joinAndRun = joinAndExec.replace(/exec "\$@"$/, '"$@"; exit $?');

/** What a securityContext changes in a replica's sandbox. */
interface SandboxSecurity {
  capabilities?: string[];
  rootRequested?: boolean;
  /** false: seccompProfile unconfined. */
  seccomp?: boolean;
}

/** What a replica's process.json records so a later agent can recognise its process. */
interface ProcessRecord {
  pid: number;
  /** The workload's user the replica runs as in its sandbox; absent: unsandboxed. */
  sandboxUid?: number;
  /** Read-only mounts of its secrets and configs (paths only), for `exec` in its sandbox. */
  mounts?: ReadOnlyMount[];
  /** Its securityContext's loosening of the sandbox (ADR 0054); `exec` gets the same. */
  sandboxSecurity?: SandboxSecurity;
  /** Start time in clock ticks since boot (/proc/<pid>/stat field 22): guards against pid reuse. */
  startTicks: string | undefined;
  startedAtMs: number;
  cgroup: CgroupPaths | undefined;
}

interface ExitRecord {
  exitCode: number | undefined;
  finishedAtMs: number | undefined;
  oomKilled: boolean;
}

interface Tracked extends ProcessRecord {
  replicaId: string;
  /** Set when this driver instance spawned the process (so it gets the exit code). */
  child: ChildProcess | undefined;
  exit: ExitRecord | undefined;
  /** Resolves when the process is known to have exited. */
  exited: Promise<void>;
  markExited: () => void;
}

/** readlink(2) now: /proc links are answered from memory, faster than a thread-pool trip. */
function readLinkNow(file: string): string | undefined {
  try {
    return readlinkSync(file);
  } catch {
    return undefined;
  }
}

function exitCodeOf(code: number | null, signal: NodeJS.Signals | null): number | undefined {
  if (code !== null) return code;
  if (signal !== null) {
    const number = osConstants.signals[signal];
    return typeof number === "number" ? 128 + number : undefined;
  }
  return undefined;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  for (const target of [-pid, pid]) {
    try {
      // The replica leads its own process group (spawned detached); the direct signal
      // covers a workload that moved itself into another group.
      process.kill(target, signal);
    } catch {
      // ESRCH: already gone.
    }
  }
}

/** Reads the last `lines` lines of a file (all of it when undefined) and the size read up to. */
async function readTail(
  file: string,
  lines: number | undefined,
): Promise<{ bytes: Buffer; size: number }> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(file, "r");
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return { bytes: Buffer.alloc(0), size: 0 };
    throw error;
  }
  try {
    const { size } = await handle.stat();
    if (lines !== undefined && lines <= 0) return { bytes: Buffer.alloc(0), size };
    if (lines === undefined) {
      const bytes = Buffer.alloc(size);
      const { bytesRead } = await handle.read(bytes, 0, size, 0);
      return { bytes: bytes.subarray(0, bytesRead), size };
    }
    // Read backwards in chunks until enough newlines are seen. A final newline ends
    // the last line rather than starting an empty one, so it is not counted.
    const chunkBytes = 64 * 1024;
    let start = size;
    let buffer = Buffer.alloc(0);
    for (;;) {
      const end = size - buffer.length;
      start = Math.max(0, end - chunkBytes);
      const chunk = Buffer.alloc(end - start);
      await handle.read(chunk, 0, chunk.length, start);
      buffer = Buffer.concat([chunk, buffer]);
      const body = buffer[buffer.length - 1] === 0x0a ? buffer.subarray(0, -1) : buffer;
      let seen = 0;
      for (let index = body.length - 1; index >= 0; index -= 1) {
        if (body[index] === 0x0a) {
          seen += 1;
          if (seen === lines) return { bytes: buffer.subarray(index + 1), size };
        }
      }
      if (start === 0) return { bytes: buffer, size };
    }
  } finally {
    await handle.close();
  }
}

class CgroupProcessDriver implements ProcessDriver {
  readonly name = "process" as const;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly layout: CgroupLayout;
  private readonly cgroupParent: string;
  private readonly enforceLimits: boolean;
  private readonly maxLogBytes: number;
  private readonly logCheckIntervalMs: number;
  private readonly replicasDir: string;
  private readonly tracked = new Map<string, Tracked>();
  private readonly owner: ReplicaOwner | undefined;
  private readonly queues = new Map<string, Promise<unknown>>();
  private cgroupsReady: Promise<string | undefined> | undefined;
  private logTimer: NodeJS.Timeout | undefined;
  private readonly socketOwners = new SocketOwners();
  /**
   * Ports found held by their replica alone, by "replica:port": the sockets and who
   * held them. While each still is (one readlink per socket) and the check is younger
   * than portRecheckMs, the listeners are not read again (see portOwner).
   */
  private readonly confirmedPorts = new Map<string, ConfirmedPort>();
  private readonly sandboxMode: "on" | "off";
  private readonly hiddenDirs: string[];
  private readonly replicaUidRange: UidRange;
  private readonly beforeLaunch: ProcessDriverOptions["beforeLaunch"];
  private dynamicUsers: DynamicUsers | undefined;
  /** Names each exec's seccomp file apart (see exec). */
  private execFilterCount = 0;
  private readonly sharedUsers: (() => DynamicUsers) | undefined;

  constructor(options: ProcessDriverOptions) {
    this.sharedUsers = options.users;
    this.logger = (options.logger ?? silentLogger).child({ driver: "process" });
    this.clock = options.clock ?? systemClock;
    this.layout = detectCgroupLayout(options.cgroupRoot ?? "/sys/fs/cgroup");
    this.owner = options.owner;
    const parent = options.cgroupParent ?? "cloudless";
    this.cgroupParent = options.owner ? `${parent}/${options.owner.clusterId}` : parent;
    this.enforceLimits = options.enforceLimits ?? true;
    this.maxLogBytes = options.maxLogBytes ?? 10 * 1024 * 1024;
    this.logCheckIntervalMs = options.logCheckIntervalMs ?? 2_000;
    this.replicasDir = path.join(path.resolve(options.dataDir), "replicas");
    this.dataDir = path.resolve(options.dataDir);
    this.sandboxMode = options.sandbox ?? "on";
    this.replicaUidRange = options.replicaUidRange ?? defaultUidRange;
    this.beforeLaunch = options.beforeLaunch;
    this.hiddenDirs = [this.dataDir, ...(options.hiddenDirs ?? []).map((dir) => path.resolve(dir))];
    if (this.sandboxMode === "off") {
      this.logger.warn(
        "process sandbox is off: replicas run as the agent's user with its privileges (development only)",
      );
    }
  }

  private readonly dataDir: string;

  /** The uid table, loaded on first use (the data dir may not exist before). */
  private users(): DynamicUsers {
    if (this.sharedUsers) return this.sharedUsers();
    this.dynamicUsers ??= new DynamicUsers(
      path.join(this.dataDir, "replica-uids.json"),
      this.replicaUidRange,
    );
    return this.dynamicUsers;
  }

  /** The sandbox's programs, or the one-line reason replicas cannot be sandboxed here. */
  private sandboxBinaries(): SandboxBinaries | undefined {
    if (this.sandboxMode === "off") return undefined;
    const found = findSandboxBinaries();
    if ("problem" in found) throw new DriverError("failed", `process sandbox: ${found.problem}`);
    return found;
  }

  /**
   * Makes the work dir reachable by the replica's user and by nobody else: the dirs
   * above it may be passed through (o+x: no listing; their files keep their own 0600),
   * the work dir itself is the user's, 0700. An ancestor the user cannot pass is named.
   */
  private async prepareSandboxDirs(
    replicaDir: string,
    workDir: string,
    uid: number,
  ): Promise<void> {
    for (const dir of [this.dataDir, this.replicasDir, replicaDir]) {
      const mode = (await stat(dir)).mode & 0o7777;
      if ((mode & 0o001) === 0) await chmod(dir, mode | 0o111);
    }
    for (let dir = path.dirname(this.dataDir); ; dir = path.dirname(dir)) {
      const mode = (await stat(dir)).mode & 0o7777;
      if ((mode & 0o001) === 0) {
        throw new DriverError(
          "failed",
          `process sandbox: the replica's user cannot pass ${dir} (mode ${mode.toString(8)}) to reach its work dir; allow it with chmod o+x ${dir} or use a --data-dir elsewhere`,
        );
      }
      if (dir === path.dirname(dir)) break;
    }
    const info = await stat(workDir);
    if (info.uid !== uid || info.gid !== uid) await chownTree(workDir, uid);
    await chmod(workDir, 0o700);
  }

  /**
   * The workload's sandbox user, allocated now if it has none, so the replica's secret
   * files can be its own before it starts (ADR 0055); undefined without the sandbox.
   * start() acquires the same uid; remove() releases it.
   */
  async replicaUser(spec: ReplicaRunSpec): Promise<{ uid: number; gid: number } | undefined> {
    checkReplicaId(spec.replicaId);
    if (this.sandboxMode === "off") return undefined;
    // securityContext.runAsUser (ADR 0054) is the user start() runs it as.
    const explicit = spec.security?.runAsUser;
    if (explicit !== undefined) return { uid: explicit, gid: explicit };
    const uid = this.users().acquire(`${spec.namespace}/${spec.workload}`, spec.replicaId);
    return { uid, gid: uid };
  }

  cgroupPaths(replicaId: string): CgroupPaths | undefined {
    checkReplicaId(replicaId);
    return cgroupPathsFor(this.layout, this.cgroupParent, replicaId);
  }

  replicaDir(replicaId: string): string {
    checkReplicaId(replicaId);
    return path.join(this.replicasDir, replicaId);
  }

  workDir(replicaId: string): string {
    return path.join(this.replicaDir(replicaId), "work");
  }

  close(): void {
    clearInterval(this.logTimer);
    this.logTimer = undefined;
  }

  /** Runs operations on one replica one at a time (start/stop/remove must not interleave). */
  private serialize<T>(replicaId: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.queues.get(replicaId) ?? Promise.resolve();
    const next = previous.then(fn);
    const settled = next.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(replicaId, settled);
    void settled.then(() => {
      if (this.queues.get(replicaId) === settled) this.queues.delete(replicaId);
    });
    return next;
  }

  /** Whether cgroups can be used here; the reason when not. Success is remembered. */
  private cgroupProblem(): Promise<string | undefined> {
    if (!this.cgroupsReady) {
      const attempt = prepareParent(this.layout, this.cgroupParent);
      this.cgroupsReady = attempt;
      void attempt.then((problem) => {
        // Retry later: permissions or mounts may be fixed while the agent runs.
        if (problem !== undefined && this.cgroupsReady === attempt) this.cgroupsReady = undefined;
      });
    }
    return this.cgroupsReady;
  }

  async health(): Promise<{ ok: true } | { ok: false; reason: string }> {
    try {
      await mkdir(this.replicasDir, { recursive: true, mode: 0o700 });
      await access(this.replicasDir, constants.W_OK);
    } catch (error) {
      return { ok: false, reason: `data directory is not writable: ${describeError(error)}` };
    }
    if (!existsSync("/bin/sh")) return { ok: false, reason: "/bin/sh is missing" };
    if (this.enforceLimits) {
      const problem = await this.cgroupProblem();
      if (problem !== undefined) {
        return {
          ok: false,
          reason: `cgroup limits cannot be enforced: ${problem} (configure enforceLimits: false to run without limits)`,
        };
      }
    }
    return { ok: true };
  }

  private newTracked(replicaId: string, record: ProcessRecord, child?: ChildProcess): Tracked {
    let markExited = (): void => undefined;
    const exited = new Promise<void>((resolve) => {
      markExited = resolve;
    });
    return { ...record, replicaId, child, exit: undefined, exited, markExited };
  }

  /**
   * The replica's process as this instance knows it, or as a previous agent left it on
   * disk (adoption): the pid counts as the replica only if it is alive, started at the
   * recorded time and sits in the replica's cgroup, so a reused pid is never mistaken.
   */
  private async lookup(replicaId: string): Promise<Tracked | undefined> {
    const known = this.tracked.get(replicaId);
    if (known) return known;
    // Another agent's replica (a data dir reused by another cluster or enrollment) is
    // never adopted: for this agent it does not exist.
    if ((await this.ownership(replicaId)) === "foreign") return undefined;
    const dir = this.replicaDir(replicaId);
    let record: ProcessRecord;
    try {
      record = JSON.parse(await readFile(path.join(dir, "process.json"), "utf8")) as ProcessRecord;
    } catch {
      return undefined;
    }
    const tracked = this.newTracked(replicaId, record);
    if (!this.isAlive(tracked)) {
      // It ended while no agent watched, unless the one that spawned it saw the end.
      tracked.exit = (await this.readExitRecord(replicaId)) ?? {
        exitCode: undefined,
        finishedAtMs: undefined,
        oomKilled: tracked.cgroup ? readOomKillCount(tracked.cgroup) > 0 : false,
      };
      tracked.markExited();
    } else {
      this.logger.info({ replica: replicaId, pid: record.pid }, "adopted running replica");
      this.ensureLogTimer();
    }
    this.tracked.set(replicaId, tracked);
    return tracked;
  }

  /**
   * Whose the replica's directory is: "absent" when there is none; without an owner
   * configured every replica counts as this driver's (tests). A directory without
   * owner.json was made by an older agent (see ReplicaOwner.judge).
   */
  private async ownership(replicaId: string): Promise<Ownership | "absent"> {
    if (this.tracked.has(replicaId)) return "own";
    const dir = this.replicaDir(replicaId);
    const owner = this.owner;
    if (!owner) return existsSync(dir) ? "own" : "absent";
    let text: string;
    try {
      text = await readFile(path.join(dir, ownerFileName), "utf8");
    } catch (error) {
      if (errnoCode(error) !== "ENOENT") return "foreign";
      return existsSync(dir) ? owner.judge({}, replicaId) : "absent";
    }
    return owner.judge(parseOwnerMarks(text), replicaId);
  }

  private isAlive(tracked: Tracked): boolean {
    if (tracked.exit) return false;
    if (tracked.child) return true;
    const stat = readProcStat(tracked.pid);
    if (!stat || stat.state === "Z" || stat.state === "X") return false;
    if (tracked.startTicks !== undefined && stat.startTicks !== tracked.startTicks) return false;
    if (tracked.cgroup) {
      return isInCgroup(tracked.pid, tracked.cgroup, cgroupSuffix(this.layout, tracked.cgroup));
    }
    return true;
  }

  /** Checks an adopted process and records its end once it is gone. */
  private async refresh(tracked: Tracked): Promise<boolean> {
    if (this.isAlive(tracked)) return true;
    if (!tracked.exit) {
      // Not our child, so no exit code — unless the agent that spawned it wrote one.
      const written = await this.readExitRecord(tracked.replicaId);
      tracked.exit = {
        exitCode: written?.exitCode,
        finishedAtMs: written?.finishedAtMs ?? this.clock.nowMs(),
        oomKilled:
          written?.oomKilled ?? (tracked.cgroup ? readOomKillCount(tracked.cgroup) > 0 : false),
      };
      tracked.markExited();
    }
    return false;
  }

  private async readExitRecord(replicaId: string): Promise<ExitRecord | undefined> {
    try {
      const text = await readFile(path.join(this.replicaDir(replicaId), "exit.json"), "utf8");
      return JSON.parse(text) as ExitRecord;
    } catch {
      return undefined;
    }
  }

  async start(spec: ReplicaRunSpec): Promise<void> {
    checkReplicaId(spec.replicaId);
    this.forgetPorts(spec.replicaId);
    return this.serialize(spec.replicaId, () => this.startLocked(spec));
  }

  private async startLocked(spec: ReplicaRunSpec): Promise<void> {
    const replicaId = spec.replicaId;
    const argv = [...(spec.command ?? []), ...(spec.args ?? [])];
    const program = argv[0];
    if (program === undefined || program.length === 0) {
      throw new DriverError("invalid", "the process driver needs a command");
    }
    const existing = await this.lookup(replicaId);
    if (existing && (await this.refresh(existing))) return;
    if ((spec.mounts?.length ?? 0) > 0 && this.sandboxMode === "off") {
      // Without the sandbox there is no mount namespace to show them at their paths.
      throw new DriverError(
        "invalid",
        "secrets and configs are mounted only into sandboxed process replicas; start the agent without --process-sandbox off",
      );
    }
    if (!existing && (await this.ownership(replicaId)) === "foreign") {
      throw new DriverError(
        "failed",
        `${this.replicaDir(replicaId)} holds replica ${replicaId} of another cluster or node; Cloudless leaves it alone (move it away if it is stale)`,
      );
    }

    for (const port of spec.ports) {
      // The process shares the node's network: it listens on the port it is told
      // (through env), so there is nothing that could map one port onto another.
      if (port.hostPort !== port.containerPort) {
        throw new DriverError(
          "invalid",
          `port "${port.name}": the process driver cannot map host port ${port.hostPort} to ${port.containerPort}`,
        );
      }
    }

    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(spec.env)) {
      if (key.length === 0 || key.includes("=") || key.includes("\0") || value.includes("\0")) {
        throw new DriverError(
          "invalid",
          `environment variable "${key}" has an invalid name or value`,
        );
      }
      env[key] = value;
    }
    const dir = this.replicaDir(replicaId);
    const workDir = this.workDir(replicaId);
    env.PATH ??= defaultPath;
    env.HOME ??= workDir;
    await this.resolveProgram(program, env.PATH, workDir);

    let cgroup: CgroupPaths | undefined;
    const problem = await this.cgroupProblem();
    if (problem === undefined) {
      cgroup = this.cgroupPaths(replicaId);
      try {
        if (cgroup) await createReplicaCgroup(cgroup, spec.resources);
      } catch (error) {
        const reason = `cannot create the cgroup for replica ${replicaId}: ${describeError(error)}`;
        if (this.enforceLimits) throw new DriverError("failed", reason, { cause: error });
        this.logger.warn({ replica: replicaId, reason }, "running without resource limits");
        if (cgroup) await removeReplicaCgroup(cgroup).catch(() => undefined);
        cgroup = undefined;
      }
    } else if (this.enforceLimits) {
      throw new DriverError("failed", `cgroup limits cannot be enforced: ${problem}`);
    } else {
      this.logger.warn({ replica: replicaId, reason: problem }, "running without resource limits");
    }

    // Private per replica (REQ-052): only the agent's user can enter it. It survives
    // restarts of the replica and goes away with remove().
    await mkdir(this.replicasDir, { recursive: true, mode: 0o700 });
    await mkdir(workDir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    await chmod(workDir, 0o700);
    // Whose it is, before there is a process: a start that fails half-way leaves a
    // directory this agent still recognises as its own (and one made by an older agent
    // is stamped when it restarts).
    const marks = this.owner?.marks();
    if (marks) {
      await writeFile(path.join(dir, ownerFileName), JSON.stringify(marks), { mode: 0o600 });
    }
    await rm(path.join(dir, "exit.json"), { force: true });
    await this.rotateIfLarge(replicaId);

    let sandboxUid: number | undefined;
    let sandboxSecurity: SandboxSecurity | undefined;
    let launchArgv = argv;
    let seccompFile: string | undefined;
    try {
      const binaries = this.sandboxBinaries();
      if (binaries) {
        const arch = hostSeccompArch();
        if (!arch) {
          throw new DriverError(
            "failed",
            `process sandbox: no seccomp filter for ${process.arch} (x86_64 and aarch64 only); start the agent with --process-sandbox off`,
          );
        }
        // securityContext (ADR 0054): its user instead of the workload's dynamic one, its
        // capabilities, no filter when unconfined. Policies judged it before the start.
        const security = spec.security;
        sandboxSecurity = {
          ...(security?.capabilitiesAdd?.length
            ? { capabilities: [...security.capabilitiesAdd] }
            : {}),
          ...(security?.runAsUser === 0 ? { rootRequested: true } : {}),
          ...(security?.seccomp === false ? { seccomp: false } : {}),
        };
        const problem =
          security?.runAsUser !== undefined
            ? this.users().explicitUidProblem(security.runAsUser)
            : undefined;
        if (problem) throw new DriverError("invalid", problem);
        sandboxUid =
          security?.runAsUser ??
          this.users().acquire(`${spec.namespace}/${spec.workload}`, replicaId);
        await this.beforeLaunch?.(`${spec.namespace}/${spec.workload}`, sandboxUid);
        await this.prepareSandboxDirs(dir, workDir, sandboxUid);
        if (sandboxSecurity.seccomp !== false) {
          seccompFile = path.join(dir, "seccomp.bpf");
          await writeFile(seccompFile, seccompFilterBytes(arch), { mode: 0o600 });
        }
        launchArgv = sandboxArgv({
          binaries,
          uid: sandboxUid,
          gid: sandboxUid,
          workDir,
          hiddenDirs: this.hiddenDirs,
          seccomp: sandboxSecurity.seccomp !== false,
          ...(sandboxSecurity.capabilities ? { capabilities: sandboxSecurity.capabilities } : {}),
          ...(sandboxSecurity.rootRequested ? { rootRequested: true } : {}),
          argv,
          mounts: spec.mounts ?? [],
          // Its parent is the wrapper shell (joinAndRun), not the agent.
          dieWithParent: true,
        });
      }
    } catch (error) {
      if (cgroup) await removeReplicaCgroup(cgroup).catch(() => undefined);
      if (error instanceof DriverError) throw error;
      throw new DriverError(
        "failed",
        `process sandbox for replica ${replicaId}: ${describeError(error)}`,
        { cause: error },
      );
    }

    // The workload writes its output straight into the log files (O_APPEND), so it keeps
    // logging — and keeps running — while the agent restarts.
    const stdoutFd = openSync(path.join(dir, "stdout.log"), "a", 0o600);
    let stderrFd: number | undefined;
    let filterFd: number | undefined;
    let child: ChildProcess;
    try {
      stderrFd = openSync(path.join(dir, "stderr.log"), "a", 0o600);
      // bwrap reads the filter from fd 3 (seccompFd); the file is root's, the fd is open.
      if (seccompFile) filterFd = openSync(seccompFile, "r");
      const procs = cgroup?.procsFiles ?? [];
      child = spawn(
        "/bin/sh",
        [
          "-c",
          sandboxUid !== undefined ? joinAndRun : joinAndExec,
          "cloudless",
          String(procs.length),
          ...procs,
          ...launchArgv,
        ],
        {
          cwd: workDir,
          env,
          detached: true,
          stdio: ["ignore", stdoutFd, stderrFd, ...(filterFd !== undefined ? [filterFd] : [])],
        },
      );
    } finally {
      closeSync(stdoutFd);
      if (stderrFd !== undefined) closeSync(stderrFd);
      if (filterFd !== undefined) closeSync(filterFd);
    }
    const mounts = spec.mounts && spec.mounts.length > 0 ? { mounts: spec.mounts } : {};
    const record: ProcessRecord = {
      pid: 0,
      ...(sandboxUid !== undefined ? { sandboxUid } : {}),
      ...mounts,
      ...(sandboxSecurity && Object.keys(sandboxSecurity).length > 0 ? { sandboxSecurity } : {}),
      startTicks: undefined,
      startedAtMs: this.clock.nowMs(),
      cgroup,
    };
    const tracked = this.newTracked(replicaId, record, child);
    child.on("exit", (code, signal) => this.onExit(tracked, code, signal));
    try {
      await new Promise<void>((resolve, reject) => {
        child.once("spawn", resolve);
        child.once("error", reject);
      });
    } catch (error) {
      if (cgroup) await removeReplicaCgroup(cgroup).catch(() => undefined);
      throw new DriverError(
        "failed",
        `cannot start replica ${replicaId}: ${describeError(error)}`,
        { cause: error },
      );
    }
    // The agent may exit before its replicas; it must not wait for them.
    child.unref();
    tracked.pid = child.pid ?? 0;
    tracked.startTicks = readProcStat(tracked.pid)?.startTicks;
    const persisted: ProcessRecord = {
      pid: tracked.pid,
      ...(sandboxUid !== undefined ? { sandboxUid } : {}),
      ...mounts,
      ...(record.sandboxSecurity ? { sandboxSecurity: record.sandboxSecurity } : {}),
      startTicks: tracked.startTicks,
      startedAtMs: tracked.startedAtMs,
      cgroup,
    };
    await writeFile(path.join(dir, "pid"), `${tracked.pid}\n`, { mode: 0o600 });
    await writeFile(path.join(dir, "process.json"), JSON.stringify(persisted), { mode: 0o600 });
    this.tracked.set(replicaId, tracked);
    this.ensureLogTimer();
    if (cgroup) await this.waitJoined(tracked, cgroup);
    this.logger.info({ replica: replicaId, pid: tracked.pid, cgroup: cgroup?.cpuDir }, "started");
  }

  /**
   * Returns once the wrapper has moved itself into the replica's cgroups (the memory one
   * is joined last) or has already ended, so a started replica is always under its limits.
   */
  private async waitJoined(tracked: Tracked, cgroup: CgroupPaths): Promise<void> {
    const suffix = cgroupSuffix(this.layout, cgroup);
    // Real time, not this.clock: it bounds sleeps between looks at a real process.
    const elapsedMs = startStopwatch();
    while (!tracked.exit && !isInCgroup(tracked.pid, cgroup, suffix)) {
      if (elapsedMs() > 5_000) {
        signalGroup(tracked.pid, "SIGKILL");
        throw new DriverError(
          "failed",
          `replica ${tracked.replicaId} (pid ${tracked.pid}) did not join its cgroup within 5 s`,
        );
      }
      await sleep(5);
    }
  }

  private onExit(tracked: Tracked, code: number | null, signal: NodeJS.Signals | null): void {
    // Read synchronously so a status() right after the exit already sees the OOM kill.
    const exit: ExitRecord = {
      exitCode: exitCodeOf(code, signal),
      finishedAtMs: this.clock.nowMs(),
      oomKilled: tracked.cgroup ? readOomKillCount(tracked.cgroup) > 0 : false,
    };
    tracked.exit = exit;
    tracked.child = undefined;
    tracked.markExited();
    try {
      // Kept on disk so an agent restarted later still knows how the replica ended.
      writeFileSync(
        path.join(this.replicaDir(tracked.replicaId), "exit.json"),
        JSON.stringify(exit),
        { mode: 0o600 },
      );
    } catch {
      // The replica was removed meanwhile.
    }
    this.logger.info({ replica: tracked.replicaId, ...exit }, "exited");
  }

  /** Checks the program exists and is executable, for a clear "invalid" rather than exit 127. */
  private async resolveProgram(
    program: string,
    searchPath: string,
    workDir: string,
  ): Promise<void> {
    const candidates = program.includes("/")
      ? [path.resolve(workDir, program)]
      : searchPath
          .split(":")
          .filter((dir) => dir.length > 0)
          .map((dir) => path.join(dir, program));
    for (const candidate of candidates) {
      try {
        const info = await stat(candidate);
        if (!info.isFile()) continue;
        await access(candidate, constants.X_OK);
        return;
      } catch {
        // Next candidate.
      }
    }
    // A relative path may point into the work dir, which does not exist before the first start.
    if (program.includes("/") && !path.isAbsolute(program)) return;
    throw new DriverError("invalid", `command "${program}" was not found or is not executable`);
  }

  async stop(replicaId: string, graceMs: number, hurry?: AbortSignal): Promise<void> {
    checkReplicaId(replicaId);
    this.forgetPorts(replicaId);
    return this.serialize(replicaId, () => this.stopLocked(replicaId, graceMs, hurry));
  }

  private async stopLocked(replicaId: string, graceMs: number, hurry?: AbortSignal): Promise<void> {
    const tracked = await this.lookup(replicaId);
    if (!tracked) return;
    if (await this.refresh(tracked)) {
      // A sandboxed workload leads its own session below bwrap (--new-session): found
      // by its cgroup, or without one among the replica's descendants.
      const sandboxed = tracked.sandboxUid !== undefined;
      if (sandboxed) {
        await signalWorkload(tracked, "SIGTERM");
      } else {
        signalGroup(tracked.pid, "SIGTERM");
      }
      if (!(await this.waitExit(tracked, hurry?.aborted ? 0 : graceMs, hurry))) {
        if (sandboxed) await signalWorkload(tracked, "SIGKILL");
        signalGroup(tracked.pid, "SIGKILL");
        if (!(await this.waitExit(tracked, 5_000))) {
          throw new DriverError("failed", `replica ${replicaId} (pid ${tracked.pid}) did not die`);
        }
      }
    }
    // Whatever the workload left behind (daemonised children) goes with it, as the
    // processes of a container go with its init.
    if (tracked.cgroup) await killMembers(tracked.cgroup);
  }

  /** Whether the process exited within timeoutMs; false at once when `cutShort` aborts. */
  private async waitExit(
    tracked: Tracked,
    timeoutMs: number,
    cutShort?: AbortSignal,
  ): Promise<boolean> {
    // Real time, not this.clock: it bounds sleeps between looks at a real process.
    const elapsedMs = startStopwatch();
    if (tracked.child) {
      let timer: NodeJS.Timeout | undefined;
      let onCut: (() => void) | undefined;
      const timeout = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
        onCut = () => resolve(false);
        cutShort?.addEventListener("abort", onCut, { once: true });
      });
      const done = await Promise.race([tracked.exited.then(() => true), timeout]);
      clearTimeout(timer);
      if (onCut) cutShort?.removeEventListener("abort", onCut);
      return done;
    }
    for (;;) {
      if (!(await this.refresh(tracked))) return true;
      if (elapsedMs() >= timeoutMs || cutShort?.aborted) return false;
      await sleep(25);
    }
  }

  async remove(replicaId: string): Promise<void> {
    checkReplicaId(replicaId);
    this.forgetPorts(replicaId);
    return this.serialize(replicaId, async () => {
      // Not this agent's: its directory, cgroup and process stay as they are.
      if ((await this.ownership(replicaId)) === "foreign") return;
      await this.stopLocked(replicaId, 0);
      const tracked = this.tracked.get(replicaId);
      const cgroup = tracked?.cgroup ?? this.cgroupPaths(replicaId);
      let cgroupError: unknown;
      if (cgroup) {
        await removeReplicaCgroup(cgroup).catch((error: unknown) => {
          cgroupError = error;
        });
      }
      await rm(this.replicaDir(replicaId), { recursive: true, force: true });
      this.tracked.delete(replicaId);
      // Its workload's user is freed with its last replica on this node.
      if (this.sandboxMode === "on") this.users().release(replicaId);
      if (cgroupError !== undefined) {
        throw new DriverError(
          "failed",
          `cannot remove the cgroup of replica ${replicaId}: ${describeError(cgroupError)}`,
          { cause: cgroupError },
        );
      }
    });
  }

  async status(replicaId: string): Promise<ReplicaRuntimeStatus> {
    checkReplicaId(replicaId);
    const tracked = await this.lookup(replicaId);
    if (!tracked) {
      // A directory without a process record: a start that failed half-way — if it is ours.
      const owned = await this.ownership(replicaId);
      return owned === "absent" || owned === "foreign" ? { state: "missing" } : { state: "exited" };
    }
    if (await this.refresh(tracked)) {
      return { state: "running", startedAtMs: tracked.startedAtMs };
    }
    const exit = tracked.exit;
    return {
      state: "exited",
      startedAtMs: tracked.startedAtMs,
      ...(exit?.exitCode !== undefined ? { exitCode: exit.exitCode } : {}),
      ...(exit?.finishedAtMs !== undefined ? { finishedAtMs: exit.finishedAtMs } : {}),
      oomKilled: exit?.oomKilled ?? false,
    };
  }

  async list(): Promise<string[]> {
    const ids = new Set<string>();
    try {
      for (const entry of await readdir(this.replicasDir, { withFileTypes: true })) {
        if (entry.isDirectory()) ids.add(entry.name);
      }
    } catch (error) {
      if (errnoCode(error) !== "ENOENT") throw error;
    }
    for (const id of ids) {
      if ((await this.ownership(id)) === "foreign") ids.delete(id);
    }
    for (const id of this.tracked.keys()) ids.add(id);
    return [...ids].sort();
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
    const dir = this.replicaDir(replicaId);
    const owned = await this.ownership(replicaId);
    if (owned === "absent" || owned === "foreign") {
      throw new DriverError("failed", `replica "${replicaId}" does not exist on this node`);
    }
    // The two streams go to separate files without timestamps, so their relative order
    // is unknown: each stream's tail comes whole, stdout first. tailLines is per stream.
    const streams = (["stdout", "stderr"] as const).map((stream) => ({
      stream,
      file: path.join(dir, `${stream}.log`),
      splitter: new LineSplitter(stream),
      position: 0,
    }));
    for (const entry of streams) {
      const { bytes, size } = await readTail(entry.file, options.tailLines);
      entry.position = size;
      yield* entry.splitter.push(bytes);
    }
    if (!options.follow) {
      for (const entry of streams) yield* entry.splitter.flush();
      return;
    }
    const tracked = await this.lookup(replicaId);
    let finalPass = false;
    while (!options.signal?.aborted) {
      // Once the process is gone, read what it wrote last and end, like `docker logs -f`.
      const running = tracked ? await this.refresh(tracked) : false;
      for (const entry of streams) {
        let size: number;
        try {
          size = (await stat(entry.file)).size;
        } catch {
          continue;
        }
        // Rotation truncated the file: what was appended since is at its start.
        if (size < entry.position) entry.position = 0;
        if (size === entry.position) continue;
        const handle = await open(entry.file, "r");
        try {
          const chunk = Buffer.alloc(size - entry.position);
          const { bytesRead } = await handle.read(chunk, 0, chunk.length, entry.position);
          entry.position += bytesRead;
          yield* entry.splitter.push(chunk.subarray(0, bytesRead));
        } finally {
          await handle.close();
        }
      }
      if (finalPass) break;
      if (!running) {
        finalPass = true;
        continue;
      }
      await sleep(logPollIntervalMs, options.signal);
    }
    for (const entry of streams) yield* entry.splitter.flush();
  }

  async exec(replicaId: string, command: string[], timeoutMs: number): Promise<ExecResult> {
    checkReplicaId(replicaId);
    if (command.length === 0) throw new DriverError("invalid", "exec needs a command");
    const tracked = await this.lookup(replicaId);
    if (!tracked || !(await this.refresh(tracked))) {
      throw new DriverError("failed", `replica "${replicaId}" is not running`);
    }
    const env = this.replicaEnv(tracked);
    const procs = tracked.cgroup?.procsFiles ?? [];
    // A sandboxed replica's commands run in a sandbox like its own: its user, its
    // filter, its work dir — never as the agent's root.
    let argv = command;
    let filterFd: number | undefined;
    if (tracked.sandboxUid !== undefined) {
      const binaries = this.sandboxBinaries() ?? findSandboxBinaries();
      const arch = hostSeccompArch();
      if ("problem" in binaries || !arch) {
        throw new DriverError(
          "failed",
          `exec in replica ${replicaId}: the sandbox is not available`,
        );
      }
      const security = tracked.sandboxSecurity ?? {};
      const seccomp = security.seccomp !== false;
      argv = sandboxArgv({
        binaries,
        uid: tracked.sandboxUid,
        gid: tracked.sandboxUid,
        workDir: this.workDir(replicaId),
        hiddenDirs: this.hiddenDirs,
        seccomp,
        ...(security.capabilities ? { capabilities: security.capabilities } : {}),
        ...(security.rootRequested ? { rootRequested: true } : {}),
        argv: command,
        mounts: tracked.mounts ?? [],
        // A timed-out exec kills its process group: the command (in bwrap's own session)
        // must go with it.
        dieWithParent: true,
      });
      if (seccomp) {
        // A file of its own, unlinked once open: rewriting the replica's seccomp.bpf in
        // place would truncate it under a replica whose bwrap has not read its fd 3 yet
        // (an exec right after a start on a busy node), and that replica would die.
        const seccompFile = path.join(
          this.replicaDir(replicaId),
          `exec-seccomp-${process.pid}-${++this.execFilterCount}.bpf`,
        );
        await writeFile(seccompFile, seccompFilterBytes(arch), { mode: 0o600 });
        try {
          filterFd = openSync(seccompFile, "r");
        } finally {
          await rm(seccompFile, { force: true });
        }
      }
    }
    let child: ChildProcess;
    try {
      child = spawn(
        "/bin/sh",
        ["-c", joinAndExec, "cloudless-exec", String(procs.length), ...procs, ...argv],
        {
          cwd: this.workDir(replicaId),
          env,
          // Its own process group, so a timeout kills the whole command tree.
          detached: true,
          stdio: ["ignore", "pipe", "pipe", ...(filterFd !== undefined ? [filterFd] : [])],
        },
      );
    } finally {
      if (filterFd !== undefined) closeSync(filterFd);
    }
    const output = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
    const sizes = { stdout: 0, stderr: 0 };
    const collect = (stream: "stdout" | "stderr") => (chunk: Buffer) => {
      const room = maxExecOutputBytes - sizes[stream];
      if (room <= 0) return;
      const kept = chunk.subarray(0, room);
      output[stream].push(kept);
      sizes[stream] += kept.length;
    };
    child.stdout?.on("data", collect("stdout"));
    child.stderr?.on("data", collect("stderr"));
    return new Promise<ExecResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (child.pid !== undefined) signalGroup(child.pid, "SIGKILL");
        reject(
          new DeadlineExceeded(
            "failed",
            `exec of "${command.join(" ")}" in replica ${replicaId} did not finish within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      child.once("error", (error) => {
        clearTimeout(timer);
        reject(new DriverError("failed", `exec in replica ${replicaId}: ${describeError(error)}`));
      });
      // "close" rather than "exit": all output has been read by then.
      child.once("close", (code, signal) => {
        clearTimeout(timer);
        resolve({
          exitCode: exitCodeOf(code, signal) ?? 1,
          stdout: Buffer.concat(output.stdout).toString("utf8"),
          stderr: Buffer.concat(output.stderr).toString("utf8"),
        });
      });
    });
  }

  /**
   * Who listens on `port`: the replica when every listening socket on it is held by
   * one of the replica's processes (a member of its cgroup, or of its session where it
   * has no cgroup), something else as soon as one is not. Sockets are found by inode
   * (see listeningSockets.ts), so a check costs a read of the host's listeners, a
   * readlink per socket and a read of the holder's cgroup while the holders stay the same.
   */
  async portOwner(replicaId: string, port: number): Promise<PortOwner> {
    checkReplicaId(replicaId);
    const key = `${replicaId}:${port}`;
    const confirmed = this.confirmedPorts.get(key);
    if (
      confirmed &&
      this.clock.nowMs() - confirmed.checkedAtMs < portRecheckMs &&
      confirmed.sockets.every(
        (socket) =>
          readLinkNow(`/proc/${socket.pid}/fd/${socket.fd}`) === `socket:[${socket.inode}]`,
      )
    ) {
      return { kind: "replica" };
    }
    this.confirmedPorts.delete(key);
    const inodes = await listeningInodes(port);
    if (inodes.length === 0) return { kind: "nobody" };
    const tracked = await this.lookup(replicaId);
    const running = tracked !== undefined && (await this.refresh(tracked));
    const sockets: ConfirmedPort["sockets"] = [];
    for (const inode of inodes) {
      const holder = await this.socketOwners.holderOf(inode, () =>
        running ? this.likelyMembers(tracked) : Promise.resolve([]),
      );
      if (!holder) {
        return {
          kind: "other",
          holder: `a process this agent cannot see (socket inode ${inode})`,
        };
      }
      if (!running || !this.isMember(holder.pid, tracked)) {
        return { kind: "other", holder: holder.description };
      }
      sockets.push({ inode, pid: holder.pid, fd: holder.fd });
    }
    if (this.confirmedPorts.size >= maxConfirmedPorts) {
      const oldest = this.confirmedPorts.keys().next().value;
      if (oldest !== undefined) this.confirmedPorts.delete(oldest);
    }
    this.confirmedPorts.set(key, { sockets, checkedAtMs: this.clock.nowMs() });
    return { kind: "replica" };
  }

  /** Forgets what portOwner confirmed for a replica (it starts, stops or goes). */
  private forgetPorts(replicaId: string): void {
    for (const key of this.confirmedPorts.keys()) {
      if (key.startsWith(`${replicaId}:`)) this.confirmedPorts.delete(key);
    }
  }

  /** Whether `pid` is one of the replica's processes: in its cgroup, else in its session. */
  private isMember(pid: number, tracked: Tracked): boolean {
    if (pid === tracked.pid) return true;
    if (tracked.cgroup) {
      return isInCgroup(pid, tracked.cgroup, `/${this.cgroupParent}/${tracked.replicaId}`);
    }
    // The replica leads its own session (spawned detached); what it forks stays in it
    // unless it calls setsid itself.
    const stat = readProcStat(pid);
    if (stat?.session === tracked.pid) return true;
    // A sandboxed workload leads a session of its own (bwrap --new-session) under the
    // replica's process: it is the replica's when that process is among its ancestors.
    if (tracked.sandboxUid === undefined) return false;
    let parent = stat?.ppid;
    for (
      let depth = 0;
      depth < maxAncestorDepth && parent !== undefined && parent > 1;
      depth += 1
    ) {
      if (parent === tracked.pid) return true;
      parent = readProcStat(parent)?.ppid;
    }
    return false;
  }

  /** Where the replica's sockets are looked for first: its cgroup's members, or its main process. */
  private async likelyMembers(tracked: Tracked): Promise<number[]> {
    const pids = [tracked.pid];
    const procsFile = tracked.cgroup?.procsFiles[0];
    if (!procsFile) return pids;
    try {
      for (const line of (await readFile(procsFile, "utf8")).split("\n")) {
        const pid = Number(line);
        if (line.length > 0 && Number.isInteger(pid) && pid !== tracked.pid) pids.push(pid);
      }
    } catch {
      // The cgroup is gone (the replica ended meanwhile).
    }
    return pids;
  }

  /** The replica's own environment (as it started), so exec sees what the workload sees. */
  private replicaEnv(tracked: Tracked): Record<string, string> {
    const env: Record<string, string> = {};
    try {
      for (const entry of readFileSync(`/proc/${tracked.pid}/environ`, "utf8").split("\0")) {
        const at = entry.indexOf("=");
        if (at > 0) env[entry.slice(0, at)] = entry.slice(at + 1);
      }
    } catch {
      // Unreadable (gone meanwhile): fall back to the basics below.
    }
    env.PATH ??= defaultPath;
    env.HOME ??= this.workDir(tracked.replicaId);
    return env;
  }

  private ensureLogTimer(): void {
    if (this.logTimer) return;
    this.logTimer = setInterval(() => {
      void this.rotateAll();
    }, this.logCheckIntervalMs);
    // Log housekeeping must never keep the agent alive.
    this.logTimer.unref();
  }

  private async rotateAll(): Promise<void> {
    for (const tracked of this.tracked.values()) {
      if (!tracked.exit) await this.rotateIfLarge(tracked.replicaId).catch(() => undefined);
    }
  }

  /**
   * Bounds a replica's log files: one larger than maxLogBytes is copied to <file>.1 and
   * truncated in place. Renaming would not work, as the workload holds the file open
   * and would keep writing to the renamed one; with O_APPEND its next write lands at
   * the start of the truncated file. Lines written between copy and truncate are lost.
   */
  private async rotateIfLarge(replicaId: string): Promise<void> {
    const dir = this.replicaDir(replicaId);
    for (const name of ["stdout.log", "stderr.log"]) {
      const file = path.join(dir, name);
      const size = await stat(file).then(
        (info) => info.size,
        () => 0,
      );
      if (size <= this.maxLogBytes) continue;
      await copyFile(file, `${file}.1`);
      await truncate(file, 0);
    }
  }
}

/**
 * Signals a sandboxed replica's workload processes — the members of its cgroup, or
 * without one the descendants of its process — and, for SIGTERM, not bwrap's own:
 * bwrap does not pass signals on, and it exits when its child does.
 */
async function signalWorkload(
  tracked: { pid: number; cgroup: CgroupPaths | undefined },
  signal: NodeJS.Signals,
): Promise<void> {
  const pids = tracked.cgroup ? await readProcs(tracked.cgroup) : await descendantsOf(tracked.pid);
  for (const pid of pids) {
    // The wrapper shell and bwrap: their death would SIGKILL the workload at once.
    if (signal === "SIGTERM" && (pid === tracked.pid || readProcStat(pid)?.comm === "bwrap")) {
      continue;
    }
    try {
      process.kill(pid, signal);
    } catch {
      // Gone meanwhile.
    }
  }
}

/** The processes below `root` (one pass over /proc; bounded by the host's process count). */
async function descendantsOf(root: number): Promise<number[]> {
  const children = new Map<number, number[]>();
  for (const entry of await readdir("/proc")) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    const parent = readProcStat(pid)?.ppid;
    if (parent === undefined) continue;
    const siblings = children.get(parent) ?? [];
    siblings.push(pid);
    children.set(parent, siblings);
  }
  const found: number[] = [];
  const queue = [...(children.get(root) ?? [])];
  while (queue.length > 0) {
    const pid = queue.shift() as number;
    found.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return found;
}

/** Gives a directory tree to a user (lchown: a symlink in it never redirects the change). */
async function chownTree(root: string, uid: number): Promise<void> {
  await lchown(root, uid, uid);
  for (const entry of await readdir(root, { recursive: true })) {
    await lchown(path.join(root, entry), uid, uid);
  }
}

/** The marks in an owner.json; a malformed file yields marks nobody owns. */
function parseOwnerMarks(text: string): OwnerMarks {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { cluster: "" };
  }
  if (typeof value !== "object" || value === null) return { cluster: "" };
  const record = value as Record<string, unknown>;
  const marks: OwnerMarks = {};
  for (const key of ["cluster", "node", "nodeUid"] as const) {
    const field = record[key];
    if (field === undefined) continue;
    if (typeof field !== "string") return { cluster: "" };
    marks[key] = field;
  }
  return marks;
}

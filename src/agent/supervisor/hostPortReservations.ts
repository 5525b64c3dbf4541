/**
 * Host-wide reservations of host ports (ADR 0032). Every agent on a machine reserves a
 * port in one directory before it gives the port to a replica, so two agents on one
 * host never hand out the same port, even when both check it at the same moment (a
 * bind-and-release check alone cannot see a port another agent has chosen but its
 * replica has not bound yet).
 *
 * A reservation is a file named after the port, created whole with link(2) (which
 * fails when the name exists, like O_EXCL, and never shows a half-written file). It
 * names the agent process holding it (pid and start time, so a reused pid is not
 * mistaken for it) and the owner, "<node>/<replica>". A reservation whose process is
 * gone is stale: it is taken over under a per-port breaker file, so two agents that
 * find the same stale file cannot both take it. The breaker of an agent that died
 * while holding it (it is held for microseconds) is removed by the next one to find it.
 * A reservation is released when its replica is removed; an agent that exits without
 * removing its replicas leaves them, and the next agent of the same node (same owner)
 * takes them over when it restores its replicas.
 *
 * Reservations only coordinate Cloudless agents: every port is also checked free by
 * binding it, and the supervisor moves a replica whose port turns out to be held by
 * something else (see the probes' port-ownership check).
 */
// biome-ignore lint/style/noRestrictedImports: random temporary names in a directory every agent of the host shares (see createFile)
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { access, link, lstat, mkdir, readdir, readFile, unlink, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import * as path from "node:path";
import { isProcessAlive, readProcStat } from "../procfs.js";

/** Hands out host ports to replicas; `owner` is the replica id. */
export interface HostPortAllocator {
  /** A free port reserved for `owner`: `preferred` when non-zero and free, else any. */
  allocate(preferred: number, owner: string): Promise<number>;
  /**
   * Whether a port `owner` had before can serve it again for a new start: reserved for
   * it (taken over when its earlier holder is gone) and free to bind. False means
   * someone else has it now: the replica needs another port.
   */
  reuse(port: number, owner: string): Promise<boolean>;
  /** Re-asserts the reservation of a port a running replica holds (after an agent restart). */
  claim(port: number, owner: string): Promise<boolean>;
  /** Gives up `owner`'s reservation; a port reserved by someone else is left alone. */
  release(port: number, owner: string): Promise<void>;
}

/** Which process holds a reservation. */
export interface ProcessIdentity {
  pid: number;
  startTicks: string;
}

interface ReservationFile extends ProcessIdentity {
  owner: string;
  reservedAt: string;
}

export interface FileReservationOptions {
  /** The directory every agent of the host uses (default: defaultReservationDir(), found on first use). */
  dir?: string;
  /** This agent's node: owners are "<node>/<replica>". */
  nodeName: string;
  /** This process; injected by tests that play several agents in one process. */
  self?: ProcessIdentity;
  /** Whether a holder is alive; default: its pid runs and started at startTicks. */
  isAlive?: (holder: ProcessIdentity) => boolean;
  /** Whether a port can be bound now; default: bind 0.0.0.0:port and release it. */
  isFree?: (port: number) => Promise<boolean>;
  /** Any free port, held until `use` returns (so no one takes it meanwhile); default: the kernel's. */
  withKernelPort?: <T>(use: (port: number) => Promise<T>) => Promise<T>;
}

/** Ports tried from the kernel before giving up (each one lost to a race costs one). */
const maxKernelPortAttempts = 8;
/** Reservation reads tried while the file changes under us (created, taken over). */
const maxReserveAttempts = 3;
/** How long binding a local port may take (it is normally instant). */
const bindTimeoutMs = 5000;
/** Largest reservation file read; a real one is ~150 bytes. */
const maxReservationBytes = 4096;

/**
 * /run/cloudless/ports for root (shared by every agent of the host); for other users a
 * private directory under the OS temp dir, as /run is root's. Agents of different users
 * therefore do not share reservations; the bind check still keeps them apart.
 */
export async function defaultReservationDir(): Promise<string> {
  const uid = process.getuid?.() ?? -1;
  if (uid === 0) {
    const dir = "/run/cloudless/ports";
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await access(dir, constants.W_OK);
      return dir;
    } catch {
      // /run is read-only or missing here: fall through to the temp dir.
    }
  }
  const dir = path.join(os.tmpdir(), `cloudless-ports-${uid < 0 ? "user" : uid}`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // The temp dir is shared: refuse a directory (or symlink) another user planted there.
  const info = await lstat(dir);
  if (!info.isDirectory() || (uid >= 0 && info.uid !== uid) || (info.mode & 0o077) !== 0) {
    throw new Error(
      `port reservation directory ${dir} is not a private directory of this user; remove it and restart the agent`,
    );
  }
  return dir;
}

export function createFileReservationAllocator(options: FileReservationOptions): HostPortAllocator {
  return new FileReservationAllocator(options);
}

class FileReservationAllocator implements HostPortAllocator {
  private dir = "";
  private readonly self: ProcessIdentity;
  private readonly isAlive: (holder: ProcessIdentity) => boolean;
  private readonly isFree: (port: number) => Promise<boolean>;
  private readonly withKernelPort: <T>(use: (port: number) => Promise<T>) => Promise<T>;
  private ready: Promise<void> | undefined;

  constructor(private readonly options: FileReservationOptions) {
    this.self = options.self ?? ownIdentity();
    this.isAlive = options.isAlive ?? ((holder) => isProcessAlive(holder.pid, holder.startTicks));
    this.isFree = options.isFree ?? canBind;
    this.withKernelPort = options.withKernelPort ?? withKernelChosenPort;
  }

  async allocate(preferred: number, owner: string): Promise<number> {
    await this.prepare();
    if (preferred > 0 && (await this.reserveIfFree(preferred, owner))) return preferred;
    for (let attempt = 0; attempt < maxKernelPortAttempts; attempt++) {
      // The kernel's port stays bound while it is reserved, so nothing else can take it
      // between the kernel's choice and the reservation.
      const port = await this.withKernelPort(async (candidate) =>
        (await this.reserve(candidate, owner)) ? candidate : 0,
      );
      if (port > 0) return port;
    }
    throw new Error(
      `no free host port after ${maxKernelPortAttempts} attempts (every port the kernel offered is reserved by another agent); free some ports and retry`,
    );
  }

  async reuse(port: number, owner: string): Promise<boolean> {
    await this.prepare();
    return this.reserveIfFree(port, owner);
  }

  async claim(port: number, owner: string): Promise<boolean> {
    await this.prepare();
    return this.reserve(port, owner);
  }

  async release(port: number, owner: string): Promise<void> {
    await this.prepare();
    const file = this.fileOf(port);
    const raw = await readSmall(file);
    if (raw === undefined) return;
    const holder = parseReservation(raw);
    if (holder?.owner !== this.ownerName(owner)) return;
    if (sameProcess(holder, this.self)) {
      // Ours: nobody else removes a live holder's file, so no one can have replaced it.
      await unlink(file).catch(() => undefined);
    } else if (!this.isAlive(holder)) {
      // Left by this node's previous agent.
      await this.removeStale(port, raw);
    }
  }

  // --- internals -------------------------------------------------------------------

  /** Finds the directory and sweeps it, once; a failure is retried on the next call. */
  private prepare(): Promise<void> {
    if (!this.ready) {
      const attempt = this.sweep();
      this.ready = attempt;
      attempt.catch(() => {
        if (this.ready === attempt) this.ready = undefined;
      });
    }
    return this.ready;
  }

  /**
   * Clears what agents that are gone left behind: temporary files, breakers, and
   * reservations whose port nothing holds any more (a replica left running by its agent
   * still binds its port, so its reservation stays for that node's next agent).
   */
  private async sweep(): Promise<void> {
    this.dir = this.options.dir ?? (await defaultReservationDir());
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return;
    }
    for (const name of names) {
      const file = path.join(this.dir, name);
      const temporary = /^\.tmp-(\d+)-(\d+)-/.exec(name);
      if (temporary) {
        const holder = { pid: Number(temporary[1]), startTicks: temporary[2] as string };
        if (!this.isAlive(holder)) await unlink(file).catch(() => undefined);
        continue;
      }
      const reserved = /^(\d+)(\.breaker)?$/.exec(name);
      if (!reserved) continue;
      const raw = await readSmall(file);
      const holder = raw === undefined ? undefined : parseReservation(raw);
      if (raw === undefined || (holder && this.isAlive(holder))) continue;
      const port = Number(reserved[1]);
      if (reserved[2]) await unlink(file).catch(() => undefined);
      else if (await this.isFree(port)) await this.removeStale(port, raw);
    }
  }

  private async reserveIfFree(port: number, owner: string): Promise<boolean> {
    if (!(await this.reserve(port, owner))) return false;
    if (await this.isFree(port)) return true;
    await this.release(port, owner);
    return false;
  }

  /** Reserves `port` for `owner`: true when it is (now) owner's, false when someone else's. */
  private async reserve(port: number, owner: string): Promise<boolean> {
    const file = this.fileOf(port);
    const ownerName = this.ownerName(owner);
    for (let attempt = 0; attempt < maxReserveAttempts; attempt++) {
      if (await this.createFile(file, ownerName)) return true;
      const raw = await readSmall(file);
      if (raw === undefined) continue; // released meanwhile: try to create it again
      const holder = parseReservation(raw);
      if (holder && sameProcess(holder, this.self)) return holder.owner === ownerName;
      if (holder && this.isAlive(holder)) return false;
      // Stale (its agent is gone) or unreadable garbage: take it over, then create ours.
      if (!(await this.removeStale(port, raw))) return false;
    }
    return false;
  }

  /**
   * Removes the reservation file of `port` if it still holds `staleRaw`, under the
   * port's breaker so that two agents finding the same stale file cannot both remove
   * it (the second would remove the first's new reservation). False when another agent
   * is breaking it right now: the caller treats the port as taken.
   */
  private async removeStale(port: number, staleRaw: string): Promise<boolean> {
    const breaker = `${this.fileOf(port)}.breaker`;
    if (!(await this.createFile(breaker, "breaker"))) {
      const holder = parseReservation((await readSmall(breaker)) ?? "");
      if (!holder || !this.isAlive(holder)) {
        // Its agent died while breaking; the next attempt may break again.
        await unlink(breaker).catch(() => undefined);
      }
      return false;
    }
    try {
      if ((await readSmall(this.fileOf(port))) === staleRaw) {
        await unlink(this.fileOf(port)).catch(() => undefined);
      }
      return true;
    } finally {
      await unlink(breaker).catch(() => undefined);
    }
  }

  /** Creates `file` holding a reservation of this process; false if the name exists. */
  private async createFile(file: string, owner: string): Promise<boolean> {
    const content: ReservationFile = {
      pid: this.self.pid,
      startTicks: this.self.startTicks,
      owner,
      // biome-ignore lint/plugin/clockAndRng: a note for the operator reading the file, never compared
      reservedAt: new Date().toISOString(),
    };
    // Random bytes, not the injected rng: they only keep apart the temporary names of
    // reservations one process writes at the same time, in a directory every agent of the
    // host shares; no decision depends on them, and a seeded rng would repeat its names.
    const temporary = path.join(
      this.dir,
      `.tmp-${this.self.pid}-${this.self.startTicks}-${randomBytes(6).toString("hex")}`,
    );
    await writeFile(temporary, `${JSON.stringify(content)}\n`, { mode: 0o600 });
    try {
      await link(temporary, file);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw error;
    } finally {
      await unlink(temporary).catch(() => undefined);
    }
  }

  private fileOf(port: number): string {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new Error(`host port ${port} is not a port number (1-65535)`);
    }
    return path.join(this.dir, String(port));
  }

  private ownerName(replicaId: string): string {
    return `${this.options.nodeName}/${replicaId}`;
  }
}

function ownIdentity(): ProcessIdentity {
  const stat = readProcStat("self");
  return { pid: process.pid, startTicks: stat?.startTicks ?? "0" };
}

function sameProcess(a: ProcessIdentity, b: ProcessIdentity): boolean {
  return a.pid === b.pid && a.startTicks === b.startTicks;
}

function parseReservation(raw: string): ReservationFile | undefined {
  try {
    const value = JSON.parse(raw) as Partial<ReservationFile>;
    if (
      typeof value.pid === "number" &&
      typeof value.startTicks === "string" &&
      typeof value.owner === "string"
    ) {
      return value as ReservationFile;
    }
  } catch {
    // Garbage: treated as stale by the caller.
  }
  return undefined;
}

async function readSmall(file: string): Promise<string | undefined> {
  try {
    const raw = await readFile(file, "utf8");
    return raw.slice(0, maxReservationBytes);
  } catch {
    return undefined;
  }
}

/** Binds 0.0.0.0:port and releases it: whether the port is free now. */
export async function canBind(port: number): Promise<boolean> {
  try {
    await holdPort(port, async () => undefined);
    return true;
  } catch {
    return false;
  }
}

/** Binds a port the kernel chooses and keeps it bound while `use` runs. */
export function withKernelChosenPort<T>(use: (port: number) => Promise<T>): Promise<T> {
  return holdPort(0, use);
}

function holdPort<T>(port: number, use: (port: number) => Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    const timer = setTimeout(() => {
      server.close();
      reject(new Error(`binding port ${port} did not finish within ${bindTimeoutMs} ms`));
    }, bindTimeoutMs);
    server.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    server.listen({ port, host: "0.0.0.0", exclusive: true }, () => {
      clearTimeout(timer);
      const address = server.address();
      const bound = typeof address === "object" && address ? address.port : 0;
      const done = bound > 0 ? use(bound) : Promise.reject(new Error("no port was bound"));
      done.then(
        (value) => server.close(() => resolve(value)),
        (error: unknown) => server.close(() => reject(error)),
      );
    });
  });
}

/**
 * Who listens on a TCP port of this host (Linux /proc), for the probes' check that
 * they reach the replica they belong to (REQ-032, ADR 0032).
 *
 * The listening sockets of the agent's network namespace are read from
 * /proc/net/tcp and /proc/net/tcp6. The kernel lists listening sockets before every
 * other one (its listening hash, then the established one), so a read stops at the
 * first line that is not listening: its cost is the number of listeners, not the
 * number of connections on the host. A socket's owner is the process holding its
 * inode as a file descriptor (/proc/<pid>/fd/<n> → "socket:[inode]"); the owner found
 * is remembered by inode, and a remembered one is checked again with one readlink.
 */
import { open, readdir, readlink } from "node:fs/promises";
import { processName } from "../procfs.js";

export interface ListeningSocket {
  port: number;
  inode: number;
}

/** The TCP state number of LISTEN in /proc/net/tcp. */
const listenState = "0A";
/** Bytes read per chunk of /proc/net/tcp (the kernel hands out whole lines). */
const readChunkBytes = 16 * 1024;
/** Bounds one read: a host with more listeners than fit here is not served by this check. */
const maxProcNetBytes = 4 * 1024 * 1024;
/** Owners remembered by inode; the oldest is forgotten first. */
const maxCachedOwners = 4096;
/** Processes looked at when searching the whole host for a socket's holder. */
const maxProcessesScanned = 20_000;

/**
 * The listening sockets in the text of /proc/net/tcp or tcp6, up to the first line
 * that is not listening (see the module comment). Lines that do not parse are skipped.
 */
export function parseListeningSockets(text: string): {
  sockets: ListeningSocket[];
  pastListeners: boolean;
} {
  const sockets: ListeningSocket[] = [];
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
    const local = fields[1];
    const state = fields[3];
    const inodeText = fields[9];
    if (!fields[0]?.endsWith(":") || local === undefined || state === undefined) continue;
    if (state !== listenState) return { sockets, pastListeners: true };
    const portHex = local.slice(local.lastIndexOf(":") + 1);
    const port = Number.parseInt(portHex, 16);
    const inode = Number(inodeText);
    if (Number.isInteger(port) && Number.isInteger(inode) && inode > 0) {
      sockets.push({ port, inode });
    }
  }
  return { sockets, pastListeners: false };
}

/** Inodes of the sockets listening on TCP `port` (IPv4 and IPv6) in this network namespace. */
export async function listeningInodes(port: number, procNet = "/proc/net"): Promise<number[]> {
  const inodes: number[] = [];
  for (const file of ["tcp", "tcp6"]) {
    for (const socket of await readListeners(`${procNet}/${file}`)) {
      if (socket.port === port) inodes.push(socket.inode);
    }
  }
  return inodes;
}

async function readListeners(file: string): Promise<ListeningSocket[]> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(file, "r");
  } catch {
    return []; // no IPv6, or no /proc: nothing to see
  }
  try {
    const sockets: ListeningSocket[] = [];
    const buffer = Buffer.alloc(readChunkBytes);
    let pending = "";
    let total = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      total += bytesRead;
      const text = pending + buffer.subarray(0, bytesRead).toString("latin1");
      const end = text.lastIndexOf("\n");
      pending = text.slice(end + 1);
      const parsed = parseListeningSockets(text.slice(0, end + 1));
      sockets.push(...parsed.sockets);
      if (parsed.pastListeners || total >= maxProcNetBytes) return sockets;
    }
    sockets.push(...parseListeningSockets(pending).sockets);
    return sockets;
  } finally {
    await handle.close();
  }
}

/** A process holding a socket, and which descriptor it is. */
export interface SocketHolder {
  pid: number;
  fd: string;
  /** "pid 4242 (python3)", for a status line. */
  description: string;
}

/**
 * Finds who holds listening sockets, remembering the answer by inode (whoever asks:
 * whether the holder is some replica's is the caller's question). The likely holders
 * the caller names are searched first (a handful of descriptors); only a socket none
 * of them holds leads to a search of the whole host.
 */
export class SocketOwners {
  private readonly known = new Map<number, SocketHolder>();

  constructor(private readonly proc = "/proc") {}

  /**
   * The holder of `inode`; `likely` is called only when the remembered answer no
   * longer holds. Undefined when no visible process holds it (another user's process
   * the agent may not look into, or a socket that closed meanwhile).
   */
  async holderOf(
    inode: number,
    likely: () => Promise<Iterable<number>>,
  ): Promise<SocketHolder | undefined> {
    const target = `socket:[${inode}]`;
    const cached = this.known.get(inode);
    if (cached && (await this.linkOf(cached.pid, cached.fd)) === target) return cached;
    this.known.delete(inode);
    const searched = new Set<number>();
    for (const pid of await likely()) {
      searched.add(pid);
      const fd = await this.findFd(pid, target);
      if (fd !== undefined) return this.remember(inode, pid, fd);
    }
    let scanned = 0;
    for (const entry of await readdir(this.proc).catch(() => [] as string[])) {
      if (!/^\d+$/.test(entry)) continue;
      const pid = Number(entry);
      if (searched.has(pid)) continue;
      if (++scanned > maxProcessesScanned) break;
      const fd = await this.findFd(pid, target);
      if (fd !== undefined) return this.remember(inode, pid, fd);
    }
    return undefined;
  }

  private remember(inode: number, pid: number, fd: string): SocketHolder {
    const name = processName(pid);
    const holder = { pid, fd, description: name ? `pid ${pid} (${name})` : `pid ${pid}` };
    if (this.known.size >= maxCachedOwners) {
      const oldest = this.known.keys().next().value;
      if (oldest !== undefined) this.known.delete(oldest);
    }
    this.known.set(inode, holder);
    return holder;
  }

  private async findFd(pid: number, target: string): Promise<string | undefined> {
    let fds: string[];
    try {
      fds = await readdir(`${this.proc}/${pid}/fd`);
    } catch {
      return undefined; // gone, or another user's process
    }
    for (const fd of fds) {
      if ((await this.linkOf(pid, fd)) === target) return fd;
    }
    return undefined;
  }

  private async linkOf(pid: number, fd: string): Promise<string | undefined> {
    try {
      return await readlink(`${this.proc}/${pid}/fd/${fd}`);
    } catch {
      return undefined;
    }
  }
}

/**
 * How a process replica is launched in its sandbox (REQ-062, ADR 0050):
 *
 *   setpriv --reuid=U --regid=G --clear-groups --no-new-privs --inh-caps=-all
 *           --bounding-set=-all --
 *   bwrap --unshare-user --unshare-ipc --unshare-pid --unshare-uts --new-session --ro-bind / /
 *         --dev /dev --proc /proc --tmpfs /tmp --tmpfs <hidden dir>…
 *         --bind <work dir> <work dir> --chdir <work dir> --cap-drop ALL --seccomp 3 -- cmd
 *
 * setpriv drops to the replica's user first: bwrap run as root with a user namespace
 * would still touch host files as uid 0. After it, nothing the replica does can gain a
 * capability (empty bounding set, no_new_privs), and bwrap — unprivileged — builds its
 * namespaces inside a user namespace owned by the replica's user.
 *
 * A securityContext that adds capabilities or asks for root (ADR 0054) turns the order
 * round: capabilities held in a user namespace act only on what that namespace owns, so
 * NET_BIND_SERVICE there could not bind a host port below 1024. Then bwrap runs as root
 * without a user namespace (it only mounts), keeps just what setpriv needs plus the added
 * capabilities, loads the filter, and setpriv inside drops to the user with exactly the
 * added capabilities (inheritable, ambient and bounding), no_new_privs, before the workload:
 *
 *   bwrap …same mounts… --cap-drop ALL --cap-add CAP_SETUID,SETGID,SETPCAP,DAC_READ_SEARCH,<added>
 *         --seccomp 3 --
 *   setpriv --reuid=U --regid=U --clear-groups --no-new-privs --inh-caps=-all,+<added>
 *           --ambient-caps=-all,+<added> --bounding-set=-all,+<added> -- cmd
 */
import { accessSync, constants, lstatSync, readdirSync, readlinkSync } from "node:fs";
import * as path from "node:path";

/** The seccomp program is handed to bwrap on this descriptor (stdio index 3 of the spawn). */
export const seccompFd = 3;

export interface SandboxBinaries {
  setpriv: string;
  bwrap: string;
}

export interface SandboxLaunch {
  binaries: SandboxBinaries;
  uid: number;
  gid: number;
  /** The only writable host path the replica sees. */
  workDir: string;
  /** Directories replaced by an empty tmpfs (the agent's data dir: node key, CA, other replicas). */
  hiddenDirs: readonly string[];
  /** Load the default seccomp filter from fd 3 (false: seccompProfile unconfined). */
  seccomp: boolean;
  /** Capabilities the workload keeps (securityContext.capabilitiesAdd), bare upper-case names. */
  capabilities?: readonly string[];
  /** uid 0 is refused unless the spec asked for it (securityContext.runAsUser: 0). */
  rootRequested?: boolean;
  /** The workload's program and arguments. */
  argv: readonly string[];
  /**
   * Host directories seen read-only at a path inside (secrets and configs, ADR 0055), and
   * how the host looks (injected by tests; default the real file system).
   */
  mounts?: readonly { source: string; target: string }[];
  hostView?: HostView;
  /**
   * End the sandbox when its parent (the agent) dies or kills it: for `exec` commands,
   * never for replicas, which outlive agent restarts (ADR 0031).
   */
  dieWithParent?: boolean;
}

/**
 * What the privileged order keeps until setpriv drops them with root: setpriv needs SETUID,
 * SETGID and SETPCAP to become the user with only the added capabilities, and bwrap —
 * root without DAC_OVERRIDE — needs DAC_READ_SEARCH to enter the work dir (0700, the
 * user's). None of them is in the bounding, inheritable or ambient set setpriv leaves.
 */
const setprivNeeds = ["SETUID", "SETGID", "SETPCAP", "DAC_READ_SEARCH"];
const capabilityNamePattern = /^[A-Z_]{2,32}$/;

/** The argv (program first) that runs `launch.argv` sandboxed. */
export function sandboxArgv(launch: SandboxLaunch): string[] {
  const root = launch.rootRequested === true && launch.uid === 0 && launch.gid === 0;
  for (const id of [launch.uid, launch.gid]) {
    // 0 would make the sandbox pointless unless asked for; the allocator never hands it out.
    if (!Number.isInteger(id) || id < 0 || (id === 0 && !root)) {
      throw new Error(`sandbox: invalid uid/gid ${id}`);
    }
  }
  const capabilities = launch.capabilities ?? [];
  for (const name of capabilities) {
    if (!capabilityNamePattern.test(name)) throw new Error(`sandbox: invalid capability ${name}`);
  }
  const hidden = launch.hiddenDirs.flatMap((dir) => ["--tmpfs", path.resolve(dir)]);
  const plan = planMounts(launch.mounts ?? [], {
    workDir: launch.workDir,
    hiddenDirs: launch.hiddenDirs,
    host: launch.hostView ?? realHostView,
  });
  const privileged = root || capabilities.length > 0;
  const setprivCaps = (flag: string): string =>
    `${flag}=-all${capabilities.map((name) => `,+${name.toLowerCase()}`).join("")}`;
  const setpriv = [
    launch.binaries.setpriv,
    `--reuid=${launch.uid}`,
    `--regid=${launch.gid}`,
    "--clear-groups",
    "--no-new-privs",
    setprivCaps("--inh-caps"),
    // Ambient: kept across the exec of a program without file capabilities.
    ...(privileged ? [setprivCaps("--ambient-caps")] : []),
    setprivCaps("--bounding-set"),
    "--",
  ];
  const bwrap = [
    launch.binaries.bwrap,
    // Every namespace but the network (replicas of the process driver use the node's
    // ports as given) and the cgroup one: the host's /sys/fs/cgroup is what the replica
    // sees, so its /proc/self/cgroup must name its real cgroup, or runtimes that read
    // their limits there (JVM, Go, Node) would read the host root's. The privileged order
    // has no user namespace: capabilities must act on the host's network namespace.
    ...(privileged ? [] : ["--unshare-user"]),
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-uts",
    // Killing bwrap's parent kills the sandbox. The driver makes that parent a wrapper
    // shell for replicas, never the agent: replicas outlive agent restarts (ADR 0031).
    ...(launch.dieWithParent ? ["--die-with-parent"] : []),
    // No controlling terminal to inject input into (TIOCSTI).
    "--new-session",
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--tmpfs",
    "/tmp",
    // Mount points for secrets and configs under read-only dirs (before the hidden dirs,
    // which may lie in a dir split here).
    ...plan.splitArgs,
    // After /tmp: a data dir under /tmp is hidden inside the new tmpfs as well.
    ...hidden,
    "--bind",
    launch.workDir,
    launch.workDir,
    ...plan.mountArgs,
    ...plan.sealArgs,
    "--chdir",
    launch.workDir,
    "--cap-drop",
    "ALL",
    ...(privileged
      ? [...setprivNeeds, ...capabilities].flatMap((name) => ["--cap-add", `CAP_${name}`])
      : []),
    ...(launch.seccomp ? ["--seccomp", String(seccompFd)] : []),
    "--",
  ];
  return privileged
    ? [...bwrap, ...setpriv, ...launch.argv]
    : [...setpriv, ...bwrap, ...launch.argv];
}

/** What the mount planner needs to know of the host's file system. */
export interface HostView {
  kind(file: string): "dir" | "symlink" | "other" | "missing";
  children(dir: string): string[];
  readlink(file: string): string;
}

const realHostView: HostView = {
  kind(file) {
    try {
      const info = lstatSync(file);
      return info.isSymbolicLink() ? "symlink" : info.isDirectory() ? "dir" : "other";
    } catch {
      return "missing";
    }
  },
  children: (dir) => readdirSync(dir),
  readlink: (file) => readlinkSync(file),
};

/**
 * Entries of one host dir re-created in its place: a dir with more is refused rather
 * than turned into thousands of mounts (/run, /etc and /opt hold far fewer).
 */
const maxSplitChildren = 512;

/**
 * The bwrap arguments that show each mount's source read-only at its target.
 *
 * bwrap creates a missing mount point with mkdir, which fails under the read-only bind
 * of `/` (the node has no /run/secrets). Creating it on the host would leave directories
 * behind, and a tmpfs over all of /run would hide what replicas need (resolv.conf's
 * target, for one). So the deepest existing parent of a missing target is "split": a
 * tmpfs is put over it in the sandbox, each of its host entries is bound (or linked)
 * back read-only, the mount points are made in the tmpfs, and the tmpfs is then made
 * read-only. Under /tmp and the work dir (writable in the sandbox) nothing needs
 * splitting. A target in the agent's hidden dirs, under a symlink, or whose only
 * existing parent is `/` is refused with a line naming it.
 */
export function planMounts(
  mounts: readonly { source: string; target: string }[],
  context: { workDir: string; hiddenDirs: readonly string[]; host: HostView },
): { splitArgs: string[]; mountArgs: string[]; sealArgs: string[] } {
  const { host } = context;
  const workDir = path.resolve(context.workDir);
  const splits = new Set<string>();
  const mountArgs: string[] = [];
  for (const mount of mounts) {
    const target = path.resolve(mount.target);
    const refuse = (why: string) => new Error(`mountPath ${mount.target}: ${why}`);
    if (target !== mount.target.replace(/\/+$/, "") || target === "/") {
      throw refuse("must be an absolute path without '.' or '..' segments");
    }
    if (
      !isWithin(target, workDir) &&
      context.hiddenDirs.some((dir) => isWithin(target, path.resolve(dir)))
    ) {
      throw refuse("lies in the agent's data dir, which replicas never see; choose another path");
    }
    mountArgs.push("--ro-bind", mount.source, target);
    if (isWithin(target, "/tmp") || isWithin(target, workDir)) continue;
    // The deepest existing parent; no symlink on the way (it would redirect the mount).
    let existing = "/";
    for (const segment of target.split("/").filter(Boolean)) {
      const next = path.join(existing, segment);
      const kind = host.kind(next);
      if (kind === "missing") break;
      if (kind === "symlink") {
        throw refuse(`${next} is a symlink on this node; use the path it points to`);
      }
      if (kind !== "dir") throw refuse(`${next} is a file on this node, not a directory`);
      existing = next;
    }
    if (existing === target) continue;
    if (existing === "/") {
      throw refuse(
        `the node has no ${path.join("/", target.split("/")[1] ?? "")} and the replica's / is read-only; choose a path under an existing directory, such as /run/secrets/<name>`,
      );
    }
    splits.add(existing);
  }
  const splitArgs: string[] = [];
  // Parents first: a split inside a split overlays what the outer one bound back.
  for (const dir of [...splits].sort((a, b) => a.length - b.length)) {
    const children = host.children(dir);
    if (children.length > maxSplitChildren) {
      throw new Error(
        `mountPath under ${dir}: it has ${children.length} entries on this node, more than ${maxSplitChildren} the sandbox re-creates; choose a path under another directory`,
      );
    }
    splitArgs.push("--tmpfs", dir);
    for (const child of children.sort()) {
      const file = path.join(dir, child);
      if (host.kind(file) === "symlink") splitArgs.push("--symlink", host.readlink(file), file);
      // -try: an entry gone between the listing and the launch is no reason to fail.
      else splitArgs.push("--ro-bind-try", file, file);
    }
  }
  const sealArgs = [...splits].flatMap((dir) => ["--remount-ro", dir]);
  return { splitArgs, mountArgs, sealArgs };
}

function isWithin(file: string, dir: string): boolean {
  return file === dir || file.startsWith(dir.endsWith("/") ? dir : `${dir}/`);
}

const searchDirs = ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"];

function findExecutable(name: string): string | undefined {
  for (const dir of searchDirs) {
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Next directory.
    }
  }
  return undefined;
}

/**
 * The sandbox's programs, or why process replicas cannot be sandboxed here (a one-line
 * reason for the driver's health and the replica's status).
 */
export function findSandboxBinaries(
  uid: number = process.getuid?.() ?? -1,
): SandboxBinaries | { problem: string } {
  if (uid !== 0) {
    return {
      problem: `the agent runs as uid ${uid}, not root, so it cannot give replicas their own users (run it as root, or start it with --process-sandbox off for development)`,
    };
  }
  const setpriv = findExecutable("setpriv");
  const bwrap = findExecutable("bwrap");
  const missing = [
    ...(setpriv ? [] : ["setpriv (Debian package util-linux)"]),
    ...(bwrap ? [] : ["bwrap (Debian package bubblewrap)"]),
  ];
  if (!setpriv || !bwrap) {
    return {
      problem: `${missing.join(" and ")} not found: install it, or start the agent with --process-sandbox off for development`,
    };
  }
  return { setpriv, bwrap };
}

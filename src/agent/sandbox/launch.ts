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
import { accessSync, constants } from "node:fs";
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
    // After /tmp: a data dir under /tmp is hidden inside the new tmpfs as well.
    ...hidden,
    "--bind",
    launch.workDir,
    launch.workDir,
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

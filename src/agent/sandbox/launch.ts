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
  /** The workload's program and arguments. */
  argv: readonly string[];
  /**
   * End the sandbox when its parent (the agent) dies or kills it: for `exec` commands,
   * never for replicas, which outlive agent restarts (ADR 0031).
   */
  dieWithParent?: boolean;
}

/** The argv (program first) that runs `launch.argv` sandboxed. */
export function sandboxArgv(launch: SandboxLaunch): string[] {
  for (const id of [launch.uid, launch.gid]) {
    // 0 would make the sandbox pointless; the allocator never hands it out.
    if (!Number.isInteger(id) || id <= 0) throw new Error(`sandbox: invalid uid/gid ${id}`);
  }
  const hidden = launch.hiddenDirs.flatMap((dir) => ["--tmpfs", path.resolve(dir)]);
  return [
    launch.binaries.setpriv,
    `--reuid=${launch.uid}`,
    `--regid=${launch.gid}`,
    "--clear-groups",
    "--no-new-privs",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--",
    launch.binaries.bwrap,
    // Every namespace but the network (replicas of the process driver use the node's
    // ports as given) and the cgroup one: the host's /sys/fs/cgroup is what the replica
    // sees, so its /proc/self/cgroup must name its real cgroup, or runtimes that read
    // their limits there (JVM, Go, Node) would read the host root's.
    "--unshare-user",
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
    ...(launch.seccomp ? ["--seccomp", String(seccompFd)] : []),
    "--",
    ...launch.argv,
  ];
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

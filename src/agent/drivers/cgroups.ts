import { existsSync, readFileSync } from "node:fs";
import { access, constants, mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { startStopwatch } from "../../lib/stopwatch.js";
import { describeError, errnoCode, sleep } from "./util.js";

/**
 * Cgroup handling for the process driver (REQ-011), for both kernel interfaces:
 *
 * - v2 (unified): one directory per replica holding cpu.max and memory.max; the cpu
 *   and memory controllers must be enabled in the parent's cgroup.subtree_control
 *   (at the root and in our own parent), or the files do not exist.
 * - v1 (separate hierarchies): a directory per replica in the cpu hierarchy
 *   (cpu.cfs_period_us / cpu.cfs_quota_us) and in the memory hierarchy
 *   (memory.limit_in_bytes, and memory.memsw.limit_in_bytes when swap accounting is on).
 *
 * A hybrid host (v1 controllers plus an empty cgroup2 mount at <root>/unified) is v1:
 * v2 is chosen only when <root>/cgroup.controllers exists and offers cpu and memory.
 */
export type CgroupLayout =
  | { version: 2; root: string }
  | { version: 1; cpuRoot: string; memoryRoot: string }
  | { version: 0; reason: string };

export interface CgroupPaths {
  version: 1 | 2;
  /** Directory whose cpu.* files limit the replica. */
  cpuDir: string;
  /** Directory whose memory.* files limit the replica (the same as cpuDir on v2). */
  memoryDir: string;
  /** The cgroup.procs files a process writes its pid to, to join (one per hierarchy). */
  procsFiles: string[];
}

/** CFS period for cpu limits: 100 ms, the kernel default, so 1000 millicores = 100000 µs. */
export const cpuPeriodUs = 100_000;
/** The kernel rejects CFS quotas below 1 ms. */
const minCpuQuotaUs = 1_000;

export function detectCgroupLayout(root: string): CgroupLayout {
  const controllersFile = path.join(root, "cgroup.controllers");
  if (existsSync(controllersFile)) {
    let controllers: string[];
    try {
      controllers = readFileSync(controllersFile, "utf8").trim().split(/\s+/);
    } catch (error) {
      return { version: 0, reason: `cannot read ${controllersFile}: ${describeError(error)}` };
    }
    const missing = ["cpu", "memory"].filter((name) => !controllers.includes(name));
    if (missing.length > 0) {
      return {
        version: 0,
        reason: `cgroup v2 at ${root} does not offer the ${missing.join(" and ")} controller`,
      };
    }
    return { version: 2, root };
  }
  const cpuRoot = path.join(root, "cpu");
  const memoryRoot = path.join(root, "memory");
  if (
    existsSync(path.join(cpuRoot, "cpu.cfs_quota_us")) &&
    existsSync(path.join(memoryRoot, "memory.limit_in_bytes"))
  ) {
    return { version: 1, cpuRoot, memoryRoot };
  }
  return {
    version: 0,
    reason: `no cgroup v2 (cgroup.controllers) nor v1 cpu and memory hierarchies under ${root}`,
  };
}

export function cgroupPathsFor(
  layout: CgroupLayout,
  parent: string,
  replicaId: string,
): CgroupPaths | undefined {
  if (layout.version === 2) {
    const dir = path.join(layout.root, parent, replicaId);
    return {
      version: 2,
      cpuDir: dir,
      memoryDir: dir,
      procsFiles: [path.join(dir, "cgroup.procs")],
    };
  }
  if (layout.version === 1) {
    const cpuDir = path.join(layout.cpuRoot, parent, replicaId);
    const memoryDir = path.join(layout.memoryRoot, parent, replicaId);
    return {
      version: 1,
      cpuDir,
      memoryDir,
      procsFiles: [path.join(cpuDir, "cgroup.procs"), path.join(memoryDir, "cgroup.procs")],
    };
  }
  return undefined;
}

async function enableControllers(dir: string, controllers: string[]): Promise<void> {
  const file = path.join(dir, "cgroup.subtree_control");
  const enabled = (await readFile(file, "utf8")).trim().split(/\s+/);
  const wanted = controllers.filter((name) => !enabled.includes(name));
  if (wanted.length === 0) return;
  await writeFile(file, wanted.map((name) => `+${name}`).join(" "));
}

/**
 * Creates the parent cgroup(s) replicas live under; `parent` may be nested
 * ("cloudless/<cluster id>"). Returns why it cannot, or undefined when the hierarchy is
 * ready and writable.
 */
export async function prepareParent(
  layout: CgroupLayout,
  parent: string,
): Promise<string | undefined> {
  if (layout.version === 0) return layout.reason;
  const dirs =
    layout.version === 2
      ? [path.join(layout.root, parent)]
      : [path.join(layout.cpuRoot, parent), path.join(layout.memoryRoot, parent)];
  try {
    if (layout.version === 2) await enableControllers(layout.root, ["cpu", "memory"]);
    for (const dir of dirs) {
      await mkdir(dir, { recursive: true });
      // mkdir of an existing directory succeeds even on a read-only mount.
      await access(dir, constants.W_OK);
    }
    if (layout.version === 2) {
      // v2 hands a controller down one level at a time: every level from the root to the
      // parent must enable it for the replicas below to get cpu.max and memory.max.
      const segments = parent.split("/").filter((segment) => segment.length > 0);
      for (let depth = 1; depth <= segments.length; depth++) {
        await enableControllers(path.join(layout.root, ...segments.slice(0, depth)), [
          "cpu",
          "memory",
        ]);
      }
    }
    return undefined;
  } catch (error) {
    const code = errnoCode(error);
    const hint =
      code === "EBUSY"
        ? " (the cgroup holds processes, so controllers cannot be delegated below it)"
        : code === "EROFS" || code === "EACCES" || code === "EPERM"
          ? " (the cgroup filesystem is not writable: run the agent as root with a writable /sys/fs/cgroup)"
          : "";
    return `cannot prepare cgroups under ${dirs.join(", ")}: ${describeError(error)}${hint}`;
  }
}

export async function readProcs(paths: CgroupPaths): Promise<number[]> {
  const pids = new Set<number>();
  for (const file of paths.procsFiles) {
    const text = await readFile(file, "utf8").catch(() => "");
    for (const line of text.split("\n")) {
      const pid = Number(line);
      if (line.length > 0 && Number.isInteger(pid) && pid > 0) pids.add(pid);
    }
  }
  return [...pids];
}

/** SIGKILLs every process in the replica's cgroups and waits (bounded) until they are gone. */
export async function killMembers(paths: CgroupPaths, timeoutMs = 5_000): Promise<boolean> {
  const elapsedMs = startStopwatch();
  for (;;) {
    const pids = await readProcs(paths);
    if (pids.length === 0) return true;
    if (elapsedMs() > timeoutMs) return false;
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
    await sleep(25);
  }
}

/**
 * Creates the replica's cgroup(s) with its limits. A leftover directory from an earlier
 * run is emptied and recreated so counters (OOM kills) start from zero.
 */
export async function createReplicaCgroup(
  paths: CgroupPaths,
  limits: { cpuMillicores: number; memoryMiB: number },
): Promise<void> {
  await removeReplicaCgroup(paths);
  const quotaUs =
    limits.cpuMillicores > 0
      ? Math.max(minCpuQuotaUs, Math.round(limits.cpuMillicores * (cpuPeriodUs / 1000)))
      : undefined;
  const memoryBytes = limits.memoryMiB > 0 ? Math.round(limits.memoryMiB * 1024 * 1024) : undefined;

  if (paths.version === 2) {
    await mkdir(paths.cpuDir);
    await writeFile(path.join(paths.cpuDir, "cpu.max"), `${quotaUs ?? "max"} ${cpuPeriodUs}`);
    await writeFile(path.join(paths.memoryDir, "memory.max"), String(memoryBytes ?? "max"));
    // No swap on top of the limit, so hitting it means an OOM kill as with the container driver.
    const swapMax = path.join(paths.memoryDir, "memory.swap.max");
    if (memoryBytes !== undefined && existsSync(swapMax)) await writeFile(swapMax, "0");
    return;
  }
  await mkdir(paths.cpuDir);
  await mkdir(paths.memoryDir);
  await writeFile(path.join(paths.cpuDir, "cpu.cfs_period_us"), String(cpuPeriodUs));
  await writeFile(path.join(paths.cpuDir, "cpu.cfs_quota_us"), String(quotaUs ?? -1));
  if (memoryBytes !== undefined) {
    await writeFile(path.join(paths.memoryDir, "memory.limit_in_bytes"), String(memoryBytes));
    // memory+swap must be >= memory, hence after it; present only with swap accounting.
    const memsw = path.join(paths.memoryDir, "memory.memsw.limit_in_bytes");
    if (existsSync(memsw)) await writeFile(memsw, String(memoryBytes));
  }
}

/** Removes the replica's cgroup directories, killing what is left inside first. */
export async function removeReplicaCgroup(paths: CgroupPaths): Promise<void> {
  const dirs = [...new Set([paths.cpuDir, paths.memoryDir])].filter((dir) => existsSync(dir));
  if (dirs.length === 0) return;
  await killMembers(paths);
  const elapsedMs = startStopwatch();
  for (const dir of dirs) {
    for (;;) {
      try {
        await rmdir(dir);
        break;
      } catch (error) {
        const code = errnoCode(error);
        if (code === "ENOENT") break;
        // EBUSY: the kernel has not finished tearing down the last member yet.
        if (code !== "EBUSY" || elapsedMs() > 5_000) throw error;
        await sleep(25);
      }
    }
  }
}

/** How many times the kernel's OOM killer struck inside the replica's memory cgroup. */
export function readOomKillCount(paths: CgroupPaths): number {
  const file = path.join(
    paths.memoryDir,
    paths.version === 2 ? "memory.events" : "memory.oom_control",
  );
  try {
    const match = /^oom_kill (\d+)$/m.exec(readFileSync(file, "utf8"));
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

/**
 * The path of a replica's (memory) cgroup as /proc/<pid>/cgroup shows it, e.g.
 * "/cloudless/<cluster id>/<replica id>": what isInCgroup matches.
 */
export function cgroupSuffix(layout: CgroupLayout, paths: CgroupPaths): string {
  const root =
    layout.version === 2 ? layout.root : layout.version === 1 ? layout.memoryRoot : undefined;
  if (root !== undefined && paths.memoryDir.startsWith(`${root}/`)) {
    return `/${path.relative(root, paths.memoryDir)}`;
  }
  // Recorded under another mount than this host's now: its last two segments.
  return `/${path.basename(path.dirname(paths.memoryDir))}/${path.basename(paths.memoryDir)}`;
}

/** Whether /proc/<pid>/cgroup places the process in this replica's (memory) cgroup. */
export function isInCgroup(pid: number, paths: CgroupPaths, suffix: string): boolean {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/cgroup`, "utf8");
  } catch {
    return false;
  }
  for (const line of text.split("\n")) {
    const [, controllers, cgroupPath] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    if (cgroupPath === undefined || controllers === undefined) continue;
    const relevant =
      paths.version === 2 ? controllers === "" : controllers.split(",").includes("memory");
    if (relevant && (cgroupPath === suffix || cgroupPath.endsWith(suffix))) return true;
  }
  return false;
}

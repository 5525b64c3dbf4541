/**
 * What this node can offer the scheduler (REQ-010), measured from the machine so that an
 * operator does not have to describe each node by hand. Overrides exist for the cases a
 * measurement cannot know about, e.g. keeping half of a workstation for its owner.
 */
// biome-ignore lint/style/noRestrictedImports: the probe file's name must differ from other processes' probes, seeded or not
import { randomUUID } from "node:crypto";
import { type FileHandle, mkdir, open, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { startStopwatch } from "../../lib/stopwatch.js";
import { statStorageGiB } from "./storage.js";

export type IopsClass = "hdd" | "ssd" | "nvme";

export interface MeasuredCapacity {
  cpuMillicores: number;
  memoryMiB: number;
  storageGiB: number;
  storageFreeGiB: number;
  iopsClass: IopsClass;
  measuredIops: number;
  egressMbps: number;
  egressSource: "configured" | "measured" | "unknown";
  /** "configured" when any of cpu, memory or storage came from an override. */
  source: "measured" | "configured";
}

export interface CapacityOverrides {
  cpuMillicores?: number;
  memoryMiB?: number;
  storageGiB?: number;
  egressMbps?: number;
}

/** The CLI flag behind each override, so validation errors point at what the operator typed. */
export const CAPACITY_OVERRIDE_FLAGS: Readonly<Record<keyof CapacityOverrides, string>> = {
  cpuMillicores: "--cpu-millicores",
  memoryMiB: "--memory-mib",
  storageGiB: "--storage-gib",
  egressMbps: "--egress-mbps",
};

/** Millicores and MiB are whole units in the scheduler; GiB and Mbps may be fractional. */
const OVERRIDE_IS_INTEGER: Readonly<Record<keyof CapacityOverrides, boolean>> = {
  cpuMillicores: true,
  memoryMiB: true,
  storageGiB: false,
  egressMbps: false,
};

export const DEFAULT_IOPS_PROBE_MS = 200;
/** Bounds the probe on fast disks: 500 syncs already separate the classes clearly. */
export const MAX_IOPS_PROBE_WRITES = 500;
const IOPS_PROBE_BLOCK_BYTES = 4096;

const BYTES_PER_MIB = 1024 * 1024;
/** cgroup v1 and v2 both default to a 100 ms CFS period. */
const DEFAULT_CFS_PERIOD_US = 100_000;

/** Throws a one-line error naming the flag of the first invalid override. */
export function validateCapacityOverrides(overrides: CapacityOverrides): void {
  for (const key of Object.keys(CAPACITY_OVERRIDE_FLAGS) as (keyof CapacityOverrides)[]) {
    const value: unknown = overrides[key];
    if (value === undefined) continue;
    const integer = OVERRIDE_IS_INTEGER[key];
    const valid =
      typeof value === "number" &&
      Number.isFinite(value) &&
      value > 0 &&
      (!integer || Number.isInteger(value));
    if (!valid) {
      const kind = integer ? "a positive integer" : "a positive number";
      throw new Error(`${CAPACITY_OVERRIDE_FLAGS[key]} must be ${kind}, got "${String(value)}"`);
    }
  }
}

export async function measureCapacity(options: {
  dataDir: string;
  overrides?: CapacityOverrides;
  measureEgressMbps?: () => Promise<number>;
  iopsProbeMs?: number;
}): Promise<MeasuredCapacity> {
  const overrides = options.overrides ?? {};
  // Validate before probing so a typo fails fast instead of after disk and network probes.
  validateCapacityOverrides(overrides);
  const iopsProbeMs = options.iopsProbeMs ?? DEFAULT_IOPS_PROBE_MS;
  if (!Number.isFinite(iopsProbeMs) || iopsProbeMs < 0) {
    throw new RangeError(`iopsProbeMs must be a non-negative number, got "${iopsProbeMs}"`);
  }

  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });

  const hostMemoryBytes = os.totalmem();
  const limits = await detectCgroupLimits({ hostMemoryBytes });
  const hostCpuMillicores = os.availableParallelism() * 1000;
  const measuredCpuMillicores = Math.min(hostCpuMillicores, limits.cpuMillicores ?? Infinity);
  const measuredMemoryMiB = Math.floor(
    Math.min(hostMemoryBytes, limits.memoryBytes ?? Infinity) / BYTES_PER_MIB,
  );

  const storage = await statStorageGiB(options.dataDir);
  const measuredIops = await probeIops(options.dataDir, { durationMs: iopsProbeMs });
  const egress = await resolveEgress(overrides.egressMbps, options.measureEgressMbps);

  const storageGiB = overrides.storageGiB ?? storage.totalGiB;
  const configured =
    overrides.cpuMillicores !== undefined ||
    overrides.memoryMiB !== undefined ||
    overrides.storageGiB !== undefined;
  return {
    cpuMillicores: overrides.cpuMillicores ?? measuredCpuMillicores,
    memoryMiB: overrides.memoryMiB ?? measuredMemoryMiB,
    storageGiB,
    // A storage override caps what the scheduler may place here, so free space cannot exceed it.
    storageFreeGiB: Math.min(storage.freeGiB, storageGiB),
    iopsClass: classifyIops(measuredIops),
    measuredIops: Math.round(measuredIops),
    egressMbps: egress.mbps,
    egressSource: egress.source,
    source: configured ? "configured" : "measured",
  };
}

async function resolveEgress(
  configuredMbps: number | undefined,
  measure: (() => Promise<number>) | undefined,
): Promise<{ mbps: number; source: MeasuredCapacity["egressSource"] }> {
  if (configuredMbps !== undefined) return { mbps: configuredMbps, source: "configured" };
  if (measure === undefined) return { mbps: 0, source: "unknown" };
  try {
    const mbps = await measure();
    // A failed or nonsensical probe must not stop the node from joining; it reports "unknown".
    if (!Number.isFinite(mbps) || mbps <= 0) return { mbps: 0, source: "unknown" };
    return { mbps: Math.max(1, Math.round(mbps)), source: "measured" };
  } catch {
    return { mbps: 0, source: "unknown" };
  }
}

export function classifyIops(iops: number): IopsClass {
  if (iops < 500) return "hdd";
  if (iops < 10_000) return "ssd";
  return "nvme";
}

/**
 * Synchronous 4 KiB writes per second in dir: each write is followed by fdatasync, so the
 * number reflects device flush latency rather than the page cache. The probe file is
 * removed whether or not the probe succeeds.
 */
export async function probeIops(
  dir: string,
  options: {
    durationMs?: number;
    maxWrites?: number;
    /** Test seam: opens the probe file. */
    openFile?: typeof open;
  } = {},
): Promise<number> {
  const durationMs = options.durationMs ?? DEFAULT_IOPS_PROBE_MS;
  const maxWrites = options.maxWrites ?? MAX_IOPS_PROBE_WRITES;
  const openFile = options.openFile ?? open;
  const probePath = path.join(dir, `.cloudless-iops-probe-${process.pid}-${randomUUID()}`);
  const block = new Uint8Array(IOPS_PROBE_BLOCK_BYTES).fill(0xa5);

  let handle: FileHandle | undefined;
  try {
    // "wx": never reuse (and later delete) a file that this probe did not create.
    handle = await openFile(probePath, "wx", 0o600);
    const elapsed = startStopwatch();
    let writes = 0;
    let elapsedMs = 0;
    // At least one write, so that a zero duration still yields a measurement.
    do {
      await handle.write(block, 0, block.length, writes * IOPS_PROBE_BLOCK_BYTES);
      await handle.datasync();
      writes += 1;
      elapsedMs = elapsed();
    } while (elapsedMs < durationMs && writes < maxWrites);
    // Floor the elapsed time: on tmpfs a sync is nearly free and the division would explode.
    return writes / (Math.max(elapsedMs, 0.001) / 1000);
  } finally {
    if (handle !== undefined) {
      await handle.close().catch(() => undefined);
      await rm(probePath, { force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// cgroups: a node inside a container or a systemd slice may own less than the host has.

export interface ProcCgroupEntry {
  hierarchyId: number;
  /** Controllers of a v1 hierarchy (e.g. ["cpu", "cpuacct"]); empty for the v2 entry. */
  controllers: string[];
  path: string;
}

/** Parses /proc/self/cgroup: "hierarchy-ID:controller-list:cgroup-path" per line. */
export function parseProcSelfCgroup(text: string): ProcCgroupEntry[] {
  const entries: ProcCgroupEntry[] = [];
  for (const line of text.split("\n")) {
    const first = line.indexOf(":");
    const second = first < 0 ? -1 : line.indexOf(":", first + 1);
    if (second < 0) continue;
    const idText = line.slice(0, first);
    if (!/^\d+$/.test(idText)) continue;
    // The path may itself contain ':', so everything after the second colon is the path.
    const cgroupPath = line.slice(second + 1).trim();
    if (!cgroupPath.startsWith("/")) continue;
    const controllerList = line.slice(first + 1, second);
    entries.push({
      hierarchyId: Number(idText),
      controllers: controllerList === "" ? [] : controllerList.split(","),
      path: cgroupPath,
    });
  }
  return entries;
}

export interface CgroupMount {
  /** The directory of the cgroup hierarchy that is mounted (not always "/"). */
  root: string;
  mountPoint: string;
  fsType: "cgroup" | "cgroup2";
  /** Super options; for cgroup v1 these name the controllers, e.g. ["rw", "cpu", "cpuacct"]. */
  superOptions: string[];
}

/** Extracts the cgroup mounts from /proc/self/mountinfo (see proc(5)). */
export function parseCgroupMounts(mountInfoText: string): CgroupMount[] {
  const mounts: CgroupMount[] = [];
  for (const line of mountInfoText.split("\n")) {
    const fields = line.trim().split(" ");
    // The optional fields end with a lone "-"; fstype, source and super options follow it.
    const separator = fields.indexOf("-", 6);
    if (separator < 0) continue;
    const root = fields[3];
    const mountPoint = fields[4];
    const fsType = fields[separator + 1];
    const superOptions = fields[separator + 3] ?? "";
    if (root === undefined || mountPoint === undefined) continue;
    if (fsType !== "cgroup" && fsType !== "cgroup2") continue;
    mounts.push({
      root: unescapeMountField(root),
      mountPoint: unescapeMountField(mountPoint),
      fsType,
      superOptions: superOptions.split(","),
    });
  }
  return mounts;
}

/** mountinfo escapes space, tab, newline and backslash as three-digit octal. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) =>
    String.fromCharCode(Number.parseInt(octal, 8)),
  );
}

function parseNonNegativeInteger(text: string): number | undefined {
  const trimmed = text.trim();
  if (!/^\d+$/.test(trimmed)) return undefined;
  return Number(trimmed);
}

function quotaToMillicores(quotaUs: number, periodUs: number): number | undefined {
  if (quotaUs <= 0 || periodUs <= 0) return undefined;
  // A quota below one millicore still grants some CPU; never report zero.
  return Math.max(1, Math.round((quotaUs / periodUs) * 1000));
}

/** cgroup v2 cpu.max: "max 100000" (no limit) or "<quota> <period>"; returns millicores. */
export function parseCgroupV2CpuMax(text: string): number | undefined {
  const [quotaText, periodText, ...rest] = text.trim().split(/\s+/);
  if (quotaText === undefined || quotaText === "max" || rest.length > 0) return undefined;
  const quotaUs = parseNonNegativeInteger(quotaText);
  const periodUs =
    periodText === undefined ? DEFAULT_CFS_PERIOD_US : parseNonNegativeInteger(periodText);
  if (quotaUs === undefined || periodUs === undefined) return undefined;
  return quotaToMillicores(quotaUs, periodUs);
}

/** cgroup v1 cpu.cfs_quota_us ("-1" means no limit) and cpu.cfs_period_us; returns millicores. */
export function parseCgroupV1CpuQuota(quotaText: string, periodText: string): number | undefined {
  const quotaUs = parseNonNegativeInteger(quotaText);
  const periodUs = parseNonNegativeInteger(periodText);
  if (quotaUs === undefined || periodUs === undefined) return undefined;
  return quotaToMillicores(quotaUs, periodUs);
}

/**
 * cgroup v2 memory.max or v1 memory.limit_in_bytes, in bytes. "max" and anything at or above
 * the host's memory (v1 reports "unlimited" as a huge page-aligned number) mean no limit.
 */
export function parseCgroupMemoryLimit(text: string, hostTotalBytes: number): number | undefined {
  const trimmed = text.trim();
  if (trimmed === "max") return undefined;
  const bytes = parseNonNegativeInteger(trimmed);
  if (bytes === undefined || bytes <= 0 || bytes >= hostTotalBytes) return undefined;
  return bytes;
}

export interface CgroupLimits {
  cpuMillicores?: number;
  memoryBytes?: number;
}

/** Reads a file as text, or undefined when it is absent or unreadable. */
export type ReadText = (filePath: string) => Promise<string | undefined>;

const readTextFile: ReadText = async (filePath) => {
  try {
    return await readFile(filePath, "utf8");
  } catch {
    return undefined;
  }
};

interface HierarchyBase {
  root: string;
  mountPoint: string;
}

function withoutTrailingSlash(dir: string): string {
  return dir.length > 1 ? dir.replace(/\/+$/, "") : dir;
}

/**
 * The cgroup directories that constrain this process in one hierarchy: its own and every
 * ancestor up to the mount point, since a limit set on a parent applies to its children.
 */
export function cgroupDirectories(base: HierarchyBase, cgroupPath: string): string[] {
  const top = withoutTrailingSlash(path.posix.normalize(base.mountPoint));
  const root = base.root.replace(/\/+$/, "");
  // Without a cgroup namespace the path may lie outside the mounted subtree; then the mount
  // itself is the closest directory we can see.
  let relative = "";
  if (root === "") relative = cgroupPath;
  else if (cgroupPath === root || cgroupPath.startsWith(`${root}/`)) {
    relative = cgroupPath.slice(root.length);
  }
  let dir = withoutTrailingSlash(path.posix.join(top, relative));
  if (dir !== top && !dir.startsWith(top === "/" ? "/" : `${top}/`)) dir = top;
  const dirs: string[] = [dir];
  while (dir !== top && dir.length > top.length) {
    dir = path.posix.dirname(dir);
    dirs.push(dir);
  }
  return dirs;
}

function hierarchyBases(
  mounts: CgroupMount[],
  matches: (mount: CgroupMount) => boolean,
  fallbackMountPoints: string[],
): HierarchyBase[] {
  const found = mounts.filter(matches);
  if (found.length > 0) return found;
  return fallbackMountPoints.map((mountPoint) => ({ root: "/", mountPoint }));
}

/**
 * The tightest CPU and memory limits that cgroups (v1, v2 or a hybrid of both) place on this
 * process. cpuset restrictions are not read here: os.availableParallelism() already honours
 * the CPU affinity mask they produce.
 */
export async function detectCgroupLimits(options: {
  hostMemoryBytes: number;
  readText?: ReadText;
}): Promise<CgroupLimits> {
  const read = options.readText ?? readTextFile;
  const entries = parseProcSelfCgroup((await read("/proc/self/cgroup")) ?? "");
  const mounts = parseCgroupMounts((await read("/proc/self/mountinfo")) ?? "");
  const cpuLimits: number[] = [];
  const memoryLimits: number[] = [];

  const collect = async (
    bases: HierarchyBase[],
    cgroupPath: string,
    readDir: (dir: string) => Promise<void>,
  ): Promise<void> => {
    const seen = new Set<string>();
    for (const base of bases) {
      for (const dir of cgroupDirectories(base, cgroupPath)) {
        if (seen.has(dir)) continue;
        seen.add(dir);
        await readDir(dir);
      }
    }
  };

  const unified = entries.find((e) => e.hierarchyId === 0 && e.controllers.length === 0);
  if (unified !== undefined) {
    const bases = hierarchyBases(mounts, (m) => m.fsType === "cgroup2", [
      "/sys/fs/cgroup",
      "/sys/fs/cgroup/unified",
    ]);
    await collect(bases, unified.path, async (dir) => {
      const cpuMax = await read(path.posix.join(dir, "cpu.max"));
      const cpu = cpuMax === undefined ? undefined : parseCgroupV2CpuMax(cpuMax);
      if (cpu !== undefined) cpuLimits.push(cpu);
      const memoryMax = await read(path.posix.join(dir, "memory.max"));
      const memory =
        memoryMax === undefined
          ? undefined
          : parseCgroupMemoryLimit(memoryMax, options.hostMemoryBytes);
      if (memory !== undefined) memoryLimits.push(memory);
    });
  }

  const v1Controller = (name: string) => (m: CgroupMount) =>
    m.fsType === "cgroup" && m.superOptions.includes(name);

  const cpuEntry = entries.find((e) => e.hierarchyId > 0 && e.controllers.includes("cpu"));
  if (cpuEntry !== undefined) {
    const bases = hierarchyBases(mounts, v1Controller("cpu"), [
      "/sys/fs/cgroup/cpu,cpuacct",
      "/sys/fs/cgroup/cpu",
    ]);
    await collect(bases, cpuEntry.path, async (dir) => {
      const quota = await read(path.posix.join(dir, "cpu.cfs_quota_us"));
      const period = await read(path.posix.join(dir, "cpu.cfs_period_us"));
      if (quota === undefined || period === undefined) return;
      const cpu = parseCgroupV1CpuQuota(quota, period);
      if (cpu !== undefined) cpuLimits.push(cpu);
    });
  }

  const memoryEntry = entries.find((e) => e.hierarchyId > 0 && e.controllers.includes("memory"));
  if (memoryEntry !== undefined) {
    const bases = hierarchyBases(mounts, v1Controller("memory"), ["/sys/fs/cgroup/memory"]);
    await collect(bases, memoryEntry.path, async (dir) => {
      const limit = await read(path.posix.join(dir, "memory.limit_in_bytes"));
      const memory =
        limit === undefined ? undefined : parseCgroupMemoryLimit(limit, options.hostMemoryBytes);
      if (memory !== undefined) memoryLimits.push(memory);
    });
  }

  const limits: CgroupLimits = {};
  if (cpuLimits.length > 0) limits.cpuMillicores = Math.min(...cpuLimits);
  if (memoryLimits.length > 0) limits.memoryBytes = Math.min(...memoryLimits);
  return limits;
}

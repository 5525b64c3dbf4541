import { mkdtemp, open, readdir, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  type CapacityOverrides,
  cgroupDirectories,
  classifyIops,
  detectCgroupLimits,
  measureCapacity,
  parseCgroupMemoryLimit,
  parseCgroupMounts,
  parseCgroupV1CpuQuota,
  parseCgroupV2CpuMax,
  parseProcSelfCgroup,
  probeIops,
} from "./capacity.js";
import { measureEgressMbps } from "./egress.js";

const GiB = 1024 ** 3;
const V1_UNLIMITED = "9223372036854771712";

const tempDirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "cloudless-capacity-"));
  tempDirs.push(dir);
  return dir;
}

afterEach(async () => {
  await Promise.all(tempDirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A fake filesystem for cgroup detection: path → contents. */
function files(entries: Record<string, string>) {
  return async (filePath: string) => entries[filePath];
}

describe("parseCgroupV2CpuMax", () => {
  it.each([
    ["max 100000\n", undefined],
    ["max", undefined],
    ["50000 100000\n", 500],
    ["200000 100000", 2000],
    ["150000 50000", 3000],
    ["100000", 1000],
    ["1 100000", 1],
    ["33333 100000", 333],
    ["0 100000", undefined],
    ["-1 100000", undefined],
    ["50000 0", undefined],
    ["50000 100000 7", undefined],
    ["", undefined],
    ["garbage", undefined],
    ["1.5 100000", undefined],
  ])("REQ-010 %j → %s millicores", (text, expected) => {
    expect(parseCgroupV2CpuMax(text)).toBe(expected);
  });
});

describe("parseCgroupV1CpuQuota", () => {
  it.each([
    ["-1\n", "100000\n", undefined],
    ["50000\n", "100000\n", 500],
    ["250000", "100000", 2500],
    ["100000", "50000", 2000],
    ["0", "100000", undefined],
    ["50000", "0", undefined],
    ["abc", "100000", undefined],
    ["50000", "", undefined],
    ["", "", undefined],
  ])("REQ-010 quota %j period %j → %s millicores", (quota, period, expected) => {
    expect(parseCgroupV1CpuQuota(quota, period)).toBe(expected);
  });
});

describe("parseCgroupMemoryLimit", () => {
  const host = 8 * GiB;
  it.each([
    ["max\n", undefined],
    [`${V1_UNLIMITED}\n`, undefined],
    ["536870912\n", 536870912],
    [String(2 * GiB), 2 * GiB],
    [String(8 * GiB), undefined],
    [String(16 * GiB), undefined],
    ["0", undefined],
    ["-1", undefined],
    ["", undefined],
    ["garbage", undefined],
  ])("REQ-010 %j → %s bytes", (text, expected) => {
    expect(parseCgroupMemoryLimit(text, host)).toBe(expected);
  });
});

describe("parseProcSelfCgroup", () => {
  it("REQ-010 parses a cgroup v1 hybrid listing", () => {
    const text = [
      "9:name=systemd:/",
      "4:memory:/process_api/204cdff6",
      "2:cpu,cpuacct:/docker/abc",
      "0::/",
      "",
    ].join("\n");
    expect(parseProcSelfCgroup(text)).toEqual([
      { hierarchyId: 9, controllers: ["name=systemd"], path: "/" },
      { hierarchyId: 4, controllers: ["memory"], path: "/process_api/204cdff6" },
      { hierarchyId: 2, controllers: ["cpu", "cpuacct"], path: "/docker/abc" },
      { hierarchyId: 0, controllers: [], path: "/" },
    ]);
  });

  it("REQ-010 parses a cgroup v2 listing", () => {
    expect(parseProcSelfCgroup("0::/system.slice/cloudless.service\n")).toEqual([
      { hierarchyId: 0, controllers: [], path: "/system.slice/cloudless.service" },
    ]);
  });

  it("keeps colons inside the path and skips garbage lines", () => {
    const text = "garbage\nx:cpu:/a\n3:cpu\n5:cpu:relative\n1:cpu:/a:b\n";
    expect(parseProcSelfCgroup(text)).toEqual([
      { hierarchyId: 1, controllers: ["cpu"], path: "/a:b" },
    ]);
  });
});

describe("parseCgroupMounts", () => {
  it("keeps cgroup mounts only, with root, mount point and controllers", () => {
    const text = [
      "23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw",
      "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
      "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw shared:7 - cgroup cgroup rw,cpu,cpuacct",
      "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate",
      "50 31 0:40 / /mnt/with\\040space rw - cgroup cgroup rw,memory",
      "truncated line",
    ].join("\n");
    expect(parseCgroupMounts(text)).toEqual([
      {
        root: "/docker/abc",
        mountPoint: "/sys/fs/cgroup/cpu,cpuacct",
        fsType: "cgroup",
        superOptions: ["rw", "cpu", "cpuacct"],
      },
      {
        root: "/",
        mountPoint: "/sys/fs/cgroup/unified",
        fsType: "cgroup2",
        superOptions: ["rw", "nsdelegate"],
      },
      {
        root: "/",
        mountPoint: "/mnt/with space",
        fsType: "cgroup",
        superOptions: ["rw", "memory"],
      },
    ]);
  });
});

describe("cgroupDirectories", () => {
  it.each([
    ["/", "/m", "/a/b", ["/m/a/b", "/m/a", "/m"]],
    ["/", "/m/", "/", ["/m"]],
    ["/docker/x", "/m", "/docker/x", ["/m"]],
    ["/docker/x", "/m", "/docker/x/child", ["/m/child", "/m"]],
    // Outside the mounted subtree (no cgroup namespace): only the mount itself is visible.
    ["/docker/x", "/m", "/docker/xy", ["/m"]],
    ["/docker/x", "/m", "/other", ["/m"]],
    ["/", "/m", "/../../etc", ["/m"]],
  ])("root %j at %j, path %j → %j", (root, mountPoint, cgroupPath, expected) => {
    expect(cgroupDirectories({ root, mountPoint }, cgroupPath)).toEqual(expected);
  });
});

describe("classifyIops", () => {
  it.each([
    [0, "hdd"],
    [120, "hdd"],
    [499.9, "hdd"],
    [500, "ssd"],
    [9_999, "ssd"],
    [10_000, "nvme"],
    [250_000, "nvme"],
  ])("REQ-010 %d ops/s → %s", (iops, expected) => {
    expect(classifyIops(iops)).toBe(expected);
  });
});

describe("detectCgroupLimits", () => {
  const hostMemoryBytes = 16 * GiB;

  it("REQ-010 reads v1 quotas on a hybrid host, taking the tightest ancestor", async () => {
    const readText = files({
      "/proc/self/cgroup": "4:memory:/kube/pod1\n2:cpu,cpuacct:/kube/pod1\n0::/\n",
      "/proc/self/mountinfo": [
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",
      ].join("\n"),
      "/sys/fs/cgroup/cpu,cpuacct/kube/pod1/cpu.cfs_quota_us": "300000\n",
      "/sys/fs/cgroup/cpu,cpuacct/kube/pod1/cpu.cfs_period_us": "100000\n",
      "/sys/fs/cgroup/cpu,cpuacct/kube/cpu.cfs_quota_us": "150000\n",
      "/sys/fs/cgroup/cpu,cpuacct/kube/cpu.cfs_period_us": "100000\n",
      "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
      "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
      "/sys/fs/cgroup/memory/kube/pod1/memory.limit_in_bytes": `${2 * GiB}\n`,
      "/sys/fs/cgroup/memory/kube/memory.limit_in_bytes": `${V1_UNLIMITED}\n`,
      "/sys/fs/cgroup/memory/memory.limit_in_bytes": `${V1_UNLIMITED}\n`,
    });
    expect(await detectCgroupLimits({ hostMemoryBytes, readText })).toEqual({
      cpuMillicores: 1500,
      memoryBytes: 2 * GiB,
    });
  });

  it("REQ-010 reads v2 cpu.max and memory.max, ignoring max", async () => {
    const readText = files({
      "/proc/self/cgroup": "0::/system.slice/cloudless.service\n",
      "/proc/self/mountinfo": "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
      "/sys/fs/cgroup/system.slice/cloudless.service/cpu.max": "250000 100000\n",
      "/sys/fs/cgroup/system.slice/cloudless.service/memory.max": "max\n",
      "/sys/fs/cgroup/system.slice/memory.max": `${4 * GiB}\n`,
    });
    expect(await detectCgroupLimits({ hostMemoryBytes, readText })).toEqual({
      cpuMillicores: 2500,
      memoryBytes: 4 * GiB,
    });
  });

  it("REQ-010 reports no limit when every level says max or unlimited", async () => {
    const readText = files({
      "/proc/self/cgroup": "0::/\n",
      "/proc/self/mountinfo": "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
      "/sys/fs/cgroup/cpu.max": "max 100000\n",
      "/sys/fs/cgroup/memory.max": "max\n",
    });
    expect(await detectCgroupLimits({ hostMemoryBytes, readText })).toEqual({});
  });

  it("falls back to the conventional mount points when mountinfo is unreadable", async () => {
    const readText = files({
      "/proc/self/cgroup": "3:cpu:/\n0::/app\n",
      "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "50000",
      "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
      "/sys/fs/cgroup/unified/app/memory.max": String(GiB),
    });
    expect(await detectCgroupLimits({ hostMemoryBytes, readText })).toEqual({
      cpuMillicores: 500,
      memoryBytes: GiB,
    });
  });

  it("uses the mounted subtree when the container sees the host's cgroup path", async () => {
    const readText = files({
      "/proc/self/cgroup": "2:cpu,cpuacct:/docker/abc\n",
      "/proc/self/mountinfo":
        "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup ro,cpu,cpuacct\n",
      "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "100000",
      "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
    });
    expect(await detectCgroupLimits({ hostMemoryBytes, readText })).toEqual({
      cpuMillicores: 1000,
    });
  });

  it("reports no limits where /proc does not exist", async () => {
    expect(await detectCgroupLimits({ hostMemoryBytes, readText: files({}) })).toEqual({});
  });

  it("REQ-010 runs against this machine's real cgroup files", async () => {
    const limits = await detectCgroupLimits({ hostMemoryBytes: os.totalmem() });
    if (limits.cpuMillicores !== undefined) expect(limits.cpuMillicores).toBeGreaterThan(0);
    if (limits.memoryBytes !== undefined) {
      expect(limits.memoryBytes).toBeGreaterThan(0);
      expect(limits.memoryBytes).toBeLessThan(os.totalmem());
    }
  });
});

describe("measureCapacity", () => {
  it("REQ-010 measures cpu, memory, storage and an IOPS class from the machine", async () => {
    const dataDir = await tempDir();
    const capacity = await measureCapacity({ dataDir, iopsProbeMs: 20 });

    expect(capacity.cpuMillicores).toBeGreaterThan(0);
    expect(Number.isInteger(capacity.cpuMillicores)).toBe(true);
    expect(capacity.cpuMillicores).toBeLessThanOrEqual(os.availableParallelism() * 1000);
    expect(capacity.memoryMiB).toBeGreaterThan(0);
    expect(Number.isInteger(capacity.memoryMiB)).toBe(true);
    expect(capacity.memoryMiB).toBeLessThanOrEqual(os.totalmem() / 1024 / 1024);
    expect(capacity.storageGiB).toBeGreaterThan(0);
    expect(capacity.storageFreeGiB).toBeGreaterThanOrEqual(0);
    expect(capacity.storageFreeGiB).toBeLessThanOrEqual(capacity.storageGiB);
    expect(["hdd", "ssd", "nvme"]).toContain(capacity.iopsClass);
    expect(capacity.measuredIops).toBeGreaterThan(0);
    expect(Number.isInteger(capacity.measuredIops)).toBe(true);
    expect(capacity.iopsClass).toBe(classifyIops(capacity.measuredIops));
    expect(capacity.egressMbps).toBe(0);
    expect(capacity.egressSource).toBe("unknown");
    expect(capacity.source).toBe("measured");
  });

  it("REQ-010 leaves no probe file behind", async () => {
    const dataDir = await tempDir();
    await measureCapacity({ dataDir, iopsProbeMs: 10 });
    expect(await readdir(dataDir)).toEqual([]);
  });

  it("creates a missing data directory, private to the agent", async () => {
    const dataDir = path.join(await tempDir(), "nested", "data");
    await measureCapacity({ dataDir, iopsProbeMs: 0 });
    const info = await stat(dataDir);
    expect(info.isDirectory()).toBe(true);
    expect(info.mode & 0o777).toBe(0o700);
  });

  it("REQ-010 lets overrides replace the measured values", async () => {
    const dataDir = await tempDir();
    const capacity = await measureCapacity({
      dataDir,
      iopsProbeMs: 0,
      overrides: { cpuMillicores: 1500, memoryMiB: 2048, storageGiB: 0.5, egressMbps: 250 },
      measureEgressMbps: async () => {
        throw new Error("must not probe when egress is configured");
      },
    });
    expect(capacity).toMatchObject({
      cpuMillicores: 1500,
      memoryMiB: 2048,
      storageGiB: 0.5,
      egressMbps: 250,
      egressSource: "configured",
      source: "configured",
    });
    expect(capacity.storageFreeGiB).toBeLessThanOrEqual(0.5);
  });

  it.each<[CapacityOverrides, string]>([
    [{ cpuMillicores: 500 }, "configured"],
    [{ memoryMiB: 512 }, "configured"],
    [{ storageGiB: 1 }, "configured"],
    [{ egressMbps: 100 }, "measured"],
  ])("REQ-010 override %j sets source %s", async (overrides, source) => {
    const capacity = await measureCapacity({ dataDir: await tempDir(), iopsProbeMs: 0, overrides });
    expect(capacity.source).toBe(source);
  });

  it.each<[CapacityOverrides, string]>([
    [{ cpuMillicores: -5 }, '--cpu-millicores must be a positive integer, got "-5"'],
    [{ cpuMillicores: 1.5 }, '--cpu-millicores must be a positive integer, got "1.5"'],
    [{ memoryMiB: 0 }, '--memory-mib must be a positive integer, got "0"'],
    [{ storageGiB: Number.NaN }, '--storage-gib must be a positive number, got "NaN"'],
    [
      { egressMbps: Number.POSITIVE_INFINITY },
      '--egress-mbps must be a positive number, got "Infinity"',
    ],
    [
      { storageGiB: "10" as unknown as number },
      '--storage-gib must be a positive number, got "10"',
    ],
  ])("REQ-010 rejects override %j naming the flag", async (overrides, message) => {
    const dataDir = path.join(await tempDir(), "never-created");
    await expect(measureCapacity({ dataDir, overrides })).rejects.toThrow(message);
    // Validation comes before any probing, so nothing was touched.
    await expect(stat(dataDir)).rejects.toThrow();
  });

  it("REQ-010 reports measured egress from the supplied probe", async () => {
    const capacity = await measureCapacity({
      dataDir: await tempDir(),
      iopsProbeMs: 0,
      measureEgressMbps: () =>
        measureEgressMbps(async (chunks) => {
          let bytesReceived = 0;
          for await (const chunk of chunks) bytesReceived += chunk.byteLength;
          return { bytesReceived, durationMs: 1000 };
        }),
    });
    expect(capacity.egressSource).toBe("measured");
    expect(capacity.egressMbps).toBe(34);
  });

  it("reports egress as unknown when the probe fails", async () => {
    const capacity = await measureCapacity({
      dataDir: await tempDir(),
      iopsProbeMs: 0,
      measureEgressMbps: async () => {
        throw new Error("coordinator unreachable");
      },
    });
    expect(capacity).toMatchObject({ egressMbps: 0, egressSource: "unknown" });
  });

  it("reports egress as unknown when the probe returns nonsense", async () => {
    const capacity = await measureCapacity({
      dataDir: await tempDir(),
      iopsProbeMs: 0,
      measureEgressMbps: async () => Number.NaN,
    });
    expect(capacity).toMatchObject({ egressMbps: 0, egressSource: "unknown" });
  });
});

describe("probeIops", () => {
  it("stops at the write cap", async () => {
    const dataDir = await tempDir();
    const iops = await probeIops(dataDir, { durationMs: 60_000, maxWrites: 3 });
    expect(iops).toBeGreaterThan(0);
    expect(await readdir(dataDir)).toEqual([]);
  });

  it("REQ-010 deletes the probe file when a sync fails", async () => {
    const dataDir = await tempDir();
    const failingOpen: typeof open = async (...args) => {
      const handle = await open(...args);
      handle.datasync = async () => {
        throw new Error("EIO");
      };
      return handle;
    };
    await expect(probeIops(dataDir, { durationMs: 10, openFile: failingOpen })).rejects.toThrow(
      "EIO",
    );
    expect(await readdir(dataDir)).toEqual([]);
  });
});

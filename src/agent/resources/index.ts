export {
  CAPACITY_OVERRIDE_FLAGS,
  type CapacityOverrides,
  type CgroupLimits,
  type CgroupMount,
  cgroupDirectories,
  classifyIops,
  DEFAULT_IOPS_PROBE_MS,
  detectCgroupLimits,
  type IopsClass,
  MAX_IOPS_PROBE_WRITES,
  type MeasuredCapacity,
  measureCapacity,
  type ProcCgroupEntry,
  parseCgroupMemoryLimit,
  parseCgroupMounts,
  parseCgroupV1CpuQuota,
  parseCgroupV2CpuMax,
  parseProcSelfCgroup,
  probeIops,
  type ReadText,
  validateCapacityOverrides,
} from "./capacity.js";
export {
  DEFAULT_EGRESS_CHUNK_BYTES,
  DEFAULT_EGRESS_PROBE_BYTES,
  type EgressUpload,
  measureEgressMbps,
} from "./egress.js";
export { collectNodeInfo } from "./nodeInfo.js";
export { statStorageGiB } from "./storage.js";
export { type UsageSample, UsageSampler, type UsageSources } from "./usage.js";

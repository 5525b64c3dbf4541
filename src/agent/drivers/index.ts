import * as path from "node:path";
import type { Clock } from "../../lib/clock.js";
import type { Logger } from "../../observe/logger.js";
import { silentLogger } from "../../observe/logger.js";
import { DynamicUsers, defaultUidRange, type UidRange } from "../sandbox/dynamicUsers.js";
import { type ContainerEgress, createContainerDriver } from "./containerDriver.js";
import type { DriverName, RuntimeDriver } from "./driver.js";
import type { ReplicaOwner } from "./ownership.js";
import { createProcessDriver } from "./processDriver.js";

export type { CgroupLayout, CgroupPaths } from "./cgroups.js";
export { cpuPeriodUs, detectCgroupLayout } from "./cgroups.js";
export type {
  ContainerDriver,
  ContainerDriverOptions,
  ContainerEgress,
} from "./containerDriver.js";
export {
  containerNameFor,
  containerPidsLimit,
  containerUlimits,
  createContainerDriver,
  defaultSocketCandidates,
  namespaceLabel,
  replicaLabel,
  workloadLabel,
} from "./containerDriver.js";
export type {
  DriverErrorKind,
  DriverName,
  ExecResult,
  LogLine,
  PortMapping,
  ReplicaRunSpec,
  ReplicaRuntimeStatus,
  RuntimeDriver,
} from "./driver.js";
export { DriverError } from "./driver.js";
export type { OwnerMarks, Ownership } from "./ownership.js";
export { clusterLabel, nodeUidLabel, ReplicaOwner } from "./ownership.js";
export type { ProcessDriver, ProcessDriverOptions } from "./processDriver.js";
export { createProcessDriver } from "./processDriver.js";

export interface DetectedDrivers {
  /** Drivers whose health check passed, the container driver first. */
  drivers: RuntimeDriver[];
  /** Drivers that cannot run replicas here, and why. */
  unavailable: Array<{ name: DriverName; reason: string }>;
}

/**
 * Builds both drivers and keeps those that can run replicas on this node. Health
 * checks run in parallel and each has its own deadline, so this returns promptly even
 * when the container engine hangs.
 */
export async function detectDrivers(options: {
  dataDir: string;
  socketPath?: string;
  logger?: Logger;
  /** The node the drivers serve (labels containers; see ContainerDriverOptions). */
  nodeName?: string;
  /** The agent the replicas belong to (ADR 0030); both drivers touch only its own. */
  owner?: ReplicaOwner;
  /** Passed to the process driver: run without cgroup limits where they cannot be set. */
  enforceLimits?: boolean;
  /** Passed to the process driver: the cgroup replicas are created under. */
  cgroupParent?: string;
  /** Passed to the process driver: stamps replicas' start and end times. */
  clock?: Clock;
  /** Passed to the process driver: its sandbox (REQ-062, ADR 0050). */
  processSandbox?: "on" | "off";
  replicaUidRange?: UidRange;
  sandboxHiddenDirs?: string[];
  /** Passed to the process driver: waits for the egress table before a launch (ADR 0057). */
  beforeLaunch?: (workloadKey: string, uid: number) => Promise<void>;
  /** Passed to the container driver: each container's address for the egress table. */
  containerEgress?: ContainerEgress;
}): Promise<DetectedDrivers> {
  const logger = options.logger ?? silentLogger;
  // One uid table for both drivers (REQ-062): a workload's replicas share its user,
  // whichever driver runs them. Loaded on first use (the data dir may not exist before).
  let dynamicUsers: DynamicUsers | undefined;
  const users = (): DynamicUsers => {
    dynamicUsers ??= new DynamicUsers(
      path.join(path.resolve(options.dataDir), "replica-uids.json"),
      options.replicaUidRange ?? defaultUidRange,
    );
    return dynamicUsers;
  };
  const candidates: RuntimeDriver[] = [
    createContainerDriver({
      logger,
      dataDir: options.dataDir,
      users,
      ...(options.nodeName !== undefined ? { nodeName: options.nodeName } : {}),
      ...(options.owner ? { owner: options.owner } : {}),
      ...(options.socketPath !== undefined ? { socketPath: options.socketPath } : {}),
      ...(options.containerEgress ? { egress: options.containerEgress } : {}),
    }),
    createProcessDriver({
      dataDir: options.dataDir,
      logger,
      users,
      ...(options.owner ? { owner: options.owner } : {}),
      ...(options.enforceLimits !== undefined ? { enforceLimits: options.enforceLimits } : {}),
      ...(options.cgroupParent !== undefined ? { cgroupParent: options.cgroupParent } : {}),
      ...(options.clock ? { clock: options.clock } : {}),
      ...(options.processSandbox ? { sandbox: options.processSandbox } : {}),
      ...(options.replicaUidRange ? { replicaUidRange: options.replicaUidRange } : {}),
      ...(options.sandboxHiddenDirs ? { hiddenDirs: options.sandboxHiddenDirs } : {}),
      ...(options.beforeLaunch ? { beforeLaunch: options.beforeLaunch } : {}),
    }),
  ];
  const results = await Promise.all(
    candidates.map(async (driver) => ({ driver, health: await driver.health() })),
  );
  const detected: DetectedDrivers = { drivers: [], unavailable: [] };
  for (const { driver, health } of results) {
    if (health.ok) {
      detected.drivers.push(driver);
    } else {
      detected.unavailable.push({ name: driver.name, reason: health.reason });
      logger.info({ driver: driver.name, reason: health.reason }, "runtime driver unavailable");
    }
  }
  return detected;
}

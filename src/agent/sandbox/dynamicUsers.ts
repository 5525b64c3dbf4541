/**
 * A user per workload on this node, like systemd's DynamicUser (REQ-062, ADR 0050): a
 * uid (and the gid of the same number) from a configured range, the same for every
 * replica of the workload while one of them exists on the node, so replicas of one
 * workload share files and two workloads cannot read each other's. Freed when the last
 * replica of the workload is removed. The table is a small JSON file (0600) in the
 * agent's data dir, rewritten atomically, so the allocation survives agent restarts.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";

export interface UidRange {
  first: number;
  last: number;
}

/** systemd's own range for dynamic users (DynamicUser=). */
export const defaultUidRange: UidRange = { first: 61184, last: 65519 };
/**
 * The largest range accepted: the table holds one entry per workload, so it stays a
 * small file; 2^16 users is far more workloads than a node runs.
 */
const maxRangeSize = 65_536;
/** uids a range must not contain: root, and nobody/the overflow uid (65534) and 65535. */
const reservedUids = [0, 65_534, 65_535];
/** Replica ids remembered per workload: a node runs far fewer replicas of one workload. */
const maxReplicasPerWorkload = 10_000;

/** Parses "61184-65519"; a one-line error names what is wrong. */
export function parseUidRange(text: string): UidRange {
  const match = /^(\d{1,10})-(\d{1,10})$/.exec(text.trim());
  if (!match) throw new Error(`--replica-uid-range ${text}: expected FIRST-LAST, e.g. 61184-65519`);
  const range = { first: Number(match[1]), last: Number(match[2]) };
  checkUidRange(range, `--replica-uid-range ${text}`);
  return range;
}

export function checkUidRange(range: UidRange, what = "replica uid range"): void {
  const { first, last } = range;
  // 2^31 - 1: uids above it are negative to much of userland.
  if (!Number.isInteger(first) || !Number.isInteger(last) || first < 1 || last > 2_147_483_646) {
    throw new Error(`${what}: uids must lie between 1 and 2147483646`);
  }
  if (first > last) throw new Error(`${what}: the first uid is larger than the last`);
  if (last - first + 1 > maxRangeSize) {
    throw new Error(`${what}: at most ${maxRangeSize} uids`);
  }
  const reserved = reservedUids.find((uid) => uid >= first && uid <= last);
  if (reserved !== undefined) {
    throw new Error(`${what}: contains the reserved uid ${reserved}; use e.g. 61184-65519`);
  }
}

interface Allocation {
  uid: number;
  replicas: string[];
}

interface TableFile {
  version: 1;
  workloads: Record<string, Allocation>;
}

export class DynamicUsers {
  private readonly workloads = new Map<string, Allocation>();

  constructor(
    private readonly file: string,
    private readonly range: UidRange = defaultUidRange,
  ) {
    checkUidRange(range);
    this.load();
  }

  /** The workload's uid, allocating one if it has none; records the replica as a user of it. */
  acquire(workloadKey: string, replicaId: string): number {
    let allocation = this.workloads.get(workloadKey);
    if (!allocation) {
      allocation = { uid: this.freeUid(workloadKey), replicas: [] };
      this.workloads.set(workloadKey, allocation);
    }
    if (!allocation.replicas.includes(replicaId)) {
      if (allocation.replicas.length >= maxReplicasPerWorkload) {
        throw new Error(
          `workload ${workloadKey} has ${maxReplicasPerWorkload} replicas on this node; remove some first`,
        );
      }
      allocation.replicas.push(replicaId);
    }
    this.save();
    return allocation.uid;
  }

  /** The replica is gone: when it was the workload's last, its uid is free again. */
  release(replicaId: string): void {
    let changed = false;
    for (const [key, allocation] of this.workloads) {
      const index = allocation.replicas.indexOf(replicaId);
      if (index < 0) continue;
      allocation.replicas.splice(index, 1);
      if (allocation.replicas.length === 0) this.workloads.delete(key);
      changed = true;
    }
    if (changed) this.save();
  }

  /**
   * Refuses a securityContext's uid inside the range (ADR 0054): it could be another
   * workload's user, and with it that workload's files. A one-line reason, or undefined.
   */
  explicitUidProblem(uid: number): string | undefined {
    if (uid < this.range.first || uid > this.range.last) return undefined;
    return `securityContext.runAsUser ${uid} lies in this node's range of workload users (${this.range.first}-${this.range.last}), so it could be another workload's; pick a uid outside it`;
  }

  /** The uid a workload holds now, if any (tests, status). */
  uidOf(workloadKey: string): number | undefined {
    return this.workloads.get(workloadKey)?.uid;
  }

  private freeUid(workloadKey: string): number {
    const used = new Set([...this.workloads.values()].map((allocation) => allocation.uid));
    for (let uid = this.range.first; uid <= this.range.last; uid += 1) {
      if (!used.has(uid)) return uid;
    }
    throw new Error(
      `no free replica uid for workload ${workloadKey}: all ${this.range.last - this.range.first + 1} uids of ${this.range.first}-${this.range.last} are in use (widen --replica-uid-range)`,
    );
  }

  private load(): void {
    let text: string;
    try {
      text = readFileSync(this.file, "utf8");
    } catch {
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new Error(`${this.file} is not valid JSON; move it away to start a fresh uid table`);
    }
    const workloads = (parsed as Partial<TableFile> | null)?.workloads;
    if (typeof workloads !== "object" || workloads === null) return;
    for (const [key, value] of Object.entries(workloads)) {
      const uid = (value as Partial<Allocation>).uid;
      const replicas = (value as Partial<Allocation>).replicas;
      // An entry outside the configured range (the range changed) is dropped: its replicas
      // get a new uid at their next start and their work dirs are handed over then.
      if (typeof uid !== "number" || uid < this.range.first || uid > this.range.last) continue;
      if (!Array.isArray(replicas)) continue;
      const ids = replicas.filter((id): id is string => typeof id === "string");
      if (ids.length > 0)
        this.workloads.set(key, { uid, replicas: ids.slice(0, maxReplicasPerWorkload) });
    }
  }

  private save(): void {
    const table: TableFile = { version: 1, workloads: Object.fromEntries(this.workloads) };
    const temporary = `${this.file}.tmp`;
    writeFileSync(temporary, JSON.stringify(table), { mode: 0o600 });
    renameSync(temporary, this.file);
  }
}

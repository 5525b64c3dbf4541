/**
 * The agents' NetworkReports (their mesh side), checked and kept: in memory on the
 * leader, which receives them on the heartbeat streams, and in a store record per node
 * so `network peers` answers on any coordinator. The write rate is bounded (below).
 */
import type { NetworkReport } from "../../api/gen/cloudless/v1/service_pb.js";
import type { Clock } from "../../lib/clock.js";
import type { Logger } from "../../observe/logger.js";
import type { Store } from "../store/store.js";
import { type MeshPeerRecord, meshPeerRecordKey, reportShape } from "./serviceRecords.js";

/** Addresses one agent may advertise: a host has a few interfaces, not hundreds. */
export const maxAdvertisedAddresses = 16;
/** Characters of one address or relay name (a DNS name is at most 253). */
export const maxAddressChars = 253;
/**
 * Peers in one report: every other node of a cluster sized for 5,000 nodes (the
 * scheduler benchmark's largest), so a report is at most ~1 MB.
 */
export const maxReportedPeers = 5_000;
const peerPaths = new Set(["direct", "relayed", "unreachable"]);

/**
 * Store writes per node: at once when a non-counter field changes (port, addresses, relay
 * role, a peer's path, relay or address), but at most one a second (an agent flapping
 * between paths costs one write a second, not one per report); counters (RTT, bytes,
 * flows) alone at most every 30 s. 1,000 nodes in steady state: ~33 writes/s.
 */
export const shapeWriteMinIntervalMs = 1_000;
export const counterWriteIntervalMs = 30_000;

/** A report turned into the record, or a one-line reason it was refused. */
export function meshRecordOf(
  node: string,
  report: NetworkReport,
  nowMs: number,
): { ok: true; record: MeshPeerRecord } | { ok: false; reason: string } {
  if (report.meshPort > 65535) return { ok: false, reason: `mesh_port ${report.meshPort} > 65535` };
  if (report.advertiseAddresses.length > maxAdvertisedAddresses) {
    return { ok: false, reason: `more than ${maxAdvertisedAddresses} advertise_addresses` };
  }
  if (report.advertiseAddresses.some((a) => a.length === 0 || a.length > maxAddressChars)) {
    return { ok: false, reason: `an advertise address is empty or longer than ${maxAddressChars}` };
  }
  if (report.peers.length > maxReportedPeers) {
    return { ok: false, reason: `more than ${maxReportedPeers} peers` };
  }
  for (const peer of report.peers) {
    if (!peerPaths.has(peer.path)) {
      return {
        ok: false,
        reason: `peer "${peer.node.slice(0, 64)}": path "${peer.path.slice(0, 32)}" is not direct, relayed or unreachable`,
      };
    }
    if ([peer.node, peer.via, peer.address].some((s) => s.length > maxAddressChars)) {
      return { ok: false, reason: `peer fields longer than ${maxAddressChars} characters` };
    }
  }
  return {
    ok: true,
    record: {
      node,
      meshPort: report.meshPort,
      addresses: [...report.advertiseAddresses],
      relay: report.relay,
      reportedAtMs: nowMs,
      peers: report.peers.map((p) => ({
        node: p.node,
        path: p.path,
        via: p.via,
        address: p.address,
        rttMs: Number.isFinite(p.rttMs) && p.rttMs >= 0 ? p.rttMs : 0,
        bytesSent: Number(p.bytesSent),
        bytesReceived: Number(p.bytesReceived),
        changedAtMs: p.changedAt
          ? Number(p.changedAt.seconds) * 1000 + Math.floor(p.changedAt.nanos / 1e6)
          : 0,
        activeFlows: p.activeFlows,
      })),
    },
  };
}

interface Kept {
  record: MeshPeerRecord;
  shape: string;
  writtenShape: string | undefined;
  writtenAtMs: number;
  /** Cancels the pending write of a shape change. */
  timer: (() => void) | undefined;
}

export class MeshReports {
  private readonly kept = new Map<string, Kept>();

  constructor(
    private readonly deps: {
      /** The leader's fenced store. */
      store: Store;
      clock: Clock;
      logger: Logger;
      /** Called when what the snapshot's peers carry (port, addresses, relay) changed. */
      onPeerChange: () => void;
    },
  ) {}

  /** Restores what the store holds (a new leader), without writing it back. */
  restore(records: Iterable<MeshPeerRecord>): void {
    for (const record of records) {
      const shape = reportShape(record);
      this.kept.set(record.node, {
        record,
        shape,
        writtenShape: shape,
        writtenAtMs: record.reportedAtMs,
        timer: undefined,
      });
    }
  }

  get(node: string): MeshPeerRecord | undefined {
    return this.kept.get(node)?.record;
  }

  all(): MeshPeerRecord[] {
    return [...this.kept.values()].map((k) => k.record);
  }

  accept(record: MeshPeerRecord): void {
    const previous = this.kept.get(record.node);
    const shape = reportShape(record);
    const peerChanged =
      !previous ||
      previous.record.meshPort !== record.meshPort ||
      previous.record.relay !== record.relay ||
      JSON.stringify(previous.record.addresses) !== JSON.stringify(record.addresses);
    const kept: Kept = previous ?? {
      record,
      shape,
      writtenShape: undefined,
      writtenAtMs: 0,
      timer: undefined,
    };
    kept.record = record;
    kept.shape = shape;
    this.kept.set(record.node, kept);
    if (peerChanged) this.deps.onPeerChange();
    this.scheduleWrite(kept);
  }

  /** A deleted node's report goes with it. */
  forget(node: string): void {
    const kept = this.kept.get(node);
    kept?.timer?.();
    this.kept.delete(node);
  }

  nodes(): string[] {
    return [...this.kept.keys()];
  }

  stop(): void {
    for (const kept of this.kept.values()) {
      kept.timer?.();
      kept.timer = undefined;
    }
    this.kept.clear();
  }

  private scheduleWrite(kept: Kept): void {
    if (kept.timer) return;
    const now = this.deps.clock.nowMs();
    const interval =
      kept.shape !== kept.writtenShape ? shapeWriteMinIntervalMs : counterWriteIntervalMs;
    const dueInMs = kept.writtenAtMs + interval - now;
    if (dueInMs <= 0) {
      void this.write(kept);
      return;
    }
    // Only a shape change waits for its slot; counters are written with the next report
    // after the interval (no timer per node for them).
    if (kept.shape === kept.writtenShape) return;
    kept.timer = this.deps.clock.setTimeout(() => {
      kept.timer = undefined;
      if (this.kept.get(kept.record.node) === kept) void this.write(kept);
    }, dueInMs);
  }

  private async write(kept: Kept): Promise<void> {
    const { record, shape } = kept;
    kept.writtenAtMs = this.deps.clock.nowMs();
    kept.writtenShape = shape;
    try {
      await this.deps.store.put(meshPeerRecordKey(record.node), JSON.stringify(record));
    } catch (error) {
      // The next report tries again; the leader's memory still answers.
      kept.writtenShape = undefined;
      this.deps.logger.warn({ err: error, node: record.node }, "could not store a mesh report");
    }
  }
}

/**
 * The leader's services controller (ADR 0048): keeps a VIP per service in the store,
 * computes the services' endpoints from the cluster cache, and pushes the whole
 * NetworkSnapshot to every connected agent when it changes and on every new stream.
 */
import { createHash } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import type { HeartbeatResponse } from "../../api/gen/cloudless/v1/node_pb.js";
import { HeartbeatResponseSchema } from "../../api/gen/cloudless/v1/node_pb.js";
import type { NetworkReport } from "../../api/gen/cloudless/v1/service_pb.js";
import {
  type NetworkSnapshot,
  NetworkSnapshotSchema,
} from "../../api/gen/cloudless/v1/service_pb.js";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord, MalformedRecordError } from "../../lib/recordCodec.js";
import { startStopwatch } from "../../lib/stopwatch.js";
import type { Logger } from "../../observe/logger.js";
import type { ClusterCache } from "../controllers/clusterCache.js";
import type { EventLog } from "../events/eventLog.js";
import type { Store } from "../store/store.js";
import { buildServices, type RevisionWeights, serviceId } from "./endpoints.js";
import { MeshReports, meshRecordOf } from "./meshReports.js";
import { meshPeerOf, serviceToProto } from "./serviceProto.js";
import {
  meshPeerRecordKey,
  meshPeerRecordPrefix,
  meshPeerRecordSchema,
  type ServiceRecord,
  serviceRecordKey,
  serviceRecordPrefix,
  serviceRecordSchema,
} from "./serviceRecords.js";
import { type ServiceCidr, VipAllocator } from "./vipAllocator.js";

/**
 * How long cache changes gather before one recompute: a rollout changes many replicas in
 * a burst, and agents need one snapshot for it, not one per record (≤ 100 ms, so an
 * endpoint change still reaches every node well within the 1 s target).
 */
export const snapshotDebounceMs = 50;
/**
 * The bound on recompute work: the next recompute waits at least four times the last one
 * took (at most 1 s), so however often replicas report, the leader spends at most a
 * fifth of its time on snapshots (a 50,000-replica cluster costs tens of ms each).
 */
const recomputeLoadFactor = 4;
const maxRecomputeDelayMs = 1_000;
/**
 * The bound on what pushes cost: every stream serializes the whole snapshot, so a push is
 * (snapshot bytes × streams). The next push waits until the last one, at this rate, is
 * done: 100 nodes with a 20 KB snapshot wait 30 ms (the debounce rules), 5,000 nodes
 * with a 400 KB one (peers grow with nodes) wait 30 s instead of serializing 2 GB a
 * second while nodes join. At most 30 s, so a change always arrives.
 */
const fanoutBytesPerSecond = 64 * 1024 * 1024;
const maxFanoutDelayMs = 30_000;
/** How often the coordinator registry is read for the relays list. */
export const relayRefreshMs = 5_000;

export interface ServicesControllerDeps {
  /** The fenced store: a deposed leader's writes are refused. */
  store: Store;
  cache: ClusterCache;
  clock: Clock;
  logger: Logger;
  events: EventLog;
  cidr: ServiceCidr;
  clusterDomain: string;
  /** host:port of each alive coordinator's API listener. */
  coordinatorRelays: () => Promise<string[]>;
  /** Per-revision weights (the canary rollout's); every revision weighs 1 until then. */
  revisionWeights?: () => RevisionWeights;
}

type Sink = (message: HeartbeatResponse) => void;

export class ServicesController {
  private allocator: VipAllocator;
  private records = new Map<string, ServiceRecord>();
  private readonly reports: MeshReports;
  private readonly sinks = new Map<string, Set<Sink>>();
  private snapshot: NetworkSnapshot | undefined;
  private message: HeartbeatResponse | undefined;
  private fingerprint = "";
  private relays: string[] = [];
  /** Services whose range-full event was raised, so it is raised once per service. */
  private readonly unallocated = new Set<string>();
  private running = false;
  private timer: NodeJS.Timeout | undefined;
  private relayTimer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  /** One recompute at a time; a change during one schedules the next. */
  private computing: Promise<void> = Promise.resolve();
  private again = false;

  constructor(private readonly deps: ServicesControllerDeps) {
    this.allocator = new VipAllocator(deps.cidr);
    this.reports = new MeshReports({
      store: deps.store,
      clock: deps.clock,
      logger: deps.logger,
      onPeerChange: () => this.schedule(),
    });
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** The cache must be started (the workloads module's onLeader runs before this). */
  async start(): Promise<void> {
    if (this.running) return;
    this.allocator = new VipAllocator(this.deps.cidr);
    this.records = new Map();
    const stored = await this.deps.store.range(serviceRecordPrefix);
    for (const kv of stored.kvs) {
      const record = this.decode(serviceRecordSchema, kv.key, kv.value);
      if (!record) continue;
      const id = kv.key.slice(serviceRecordPrefix.length);
      // A VIP outside the range (it changed) or taken twice is allocated anew below.
      if (this.allocator.reserve(id, record.vip)) this.records.set(id, record);
    }
    const peers = await this.deps.store.range(meshPeerRecordPrefix);
    this.reports.restore(
      peers.kvs.flatMap((kv) => {
        const record = this.decode(meshPeerRecordSchema, kv.key, kv.value);
        return record ? [record] : [];
      }),
    );
    this.relays = await this.readRelays();
    this.running = true;
    this.unsubscribe = this.deps.cache.onChange(() => this.schedule());
    this.relayTimer = setInterval(() => void this.refreshRelays(), relayRefreshMs);
    this.relayTimer.unref?.();
    this.schedule(0);
    await this.idle();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.relayTimer) clearInterval(this.relayTimer);
    this.relayTimer = undefined;
    this.reports.stop();
    await this.computing;
    this.snapshot = undefined;
    this.message = undefined;
    this.fingerprint = "";
  }

  /** Resolves once no recompute is pending or running (tests, start). */
  async idle(): Promise<void> {
    for (let round = 0; round < 10 && (this.timer || this.again); round++) {
      await new Promise((resolve) => setTimeout(resolve, snapshotDebounceMs));
      await this.computing;
    }
    await this.computing;
  }

  /** A heartbeat stream of `node` opened: it gets the current snapshot, then each change. */
  attach(node: string, sink: Sink): () => void {
    let sinks = this.sinks.get(node);
    if (!sinks) {
      sinks = new Set();
      this.sinks.set(node, sinks);
    }
    sinks.add(sink);
    if (this.running && this.message) sink(this.message);
    return () => {
      sinks.delete(sink);
      if (sinks.size === 0) this.sinks.delete(node);
    };
  }

  /** An agent's NetworkReport; a malformed one is logged and dropped. */
  report(node: string, report: NetworkReport): void {
    if (!this.running) return;
    const checked = meshRecordOf(node, report, this.deps.clock.nowMs());
    if (!checked.ok) {
      this.deps.logger.warn({ node, reason: checked.reason }, "refused a network report");
      return;
    }
    this.reports.accept(checked.record);
  }

  /** The leader's view of services (views, VIP records), for the API. */
  current(): { records: ReadonlyMap<string, ServiceRecord> } | undefined {
    return this.running ? { records: this.records } : undefined;
  }

  meshReports(): MeshReports | undefined {
    return this.running ? this.reports : undefined;
  }

  currentSnapshot(): NetworkSnapshot | undefined {
    return this.snapshot;
  }

  private lastRecomputeMs = 0;
  /** What the last push costs in serialization time at fanoutBytesPerSecond. */
  private fanoutDelayMs = 0;

  private schedule(
    delayMs = Math.max(
      snapshotDebounceMs,
      Math.min(maxRecomputeDelayMs, this.lastRecomputeMs * recomputeLoadFactor),
      this.fanoutDelayMs,
    ),
  ): void {
    if (!this.running || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.again = true;
      this.computing = this.computing.then(() => this.recomputeLoop());
    }, delayMs);
    this.timer.unref?.();
  }

  private async recomputeLoop(): Promise<void> {
    // Bounded: a change during a recompute schedules another through the timer.
    if (!this.again || !this.running) return;
    this.again = false;
    try {
      const elapsedMs = startStopwatch();
      await this.recompute();
      this.lastRecomputeMs = elapsedMs();
    } catch (error) {
      this.deps.logger.error({ err: error }, "services recompute failed; retrying");
      this.schedule(1_000);
    }
  }

  private async recompute(): Promise<void> {
    const { cache, store, clock, clusterDomain } = this.deps;
    const state = cache.snapshot();
    const views = buildServices(state, this.deps.revisionWeights?.() ?? new Map());
    // A service whose last workload is gone gives its VIP back (first, so a
    // service waiting for an address in a full range gets it in this same pass).
    for (const id of [...this.records.keys()]) {
      if (views.has(id)) continue;
      const [namespace = "", name = ""] = id.split("/");
      await store.delete(serviceRecordKey(namespace, name));
      this.records.delete(id);
      this.allocator.release(id);
    }
    // New services get a VIP (stored before it is announced, so it never changes).
    for (const [id, view] of views) {
      if (this.records.has(id)) continue;
      const vip = this.allocator.allocate(id);
      if (!vip) {
        if (!this.unallocated.has(id)) {
          this.unallocated.add(id);
          await this.deps.events.record({
            type: "ServiceAddressUnavailable",
            category: "operations",
            subject: `service/${id}`,
            reason: "ServiceRangeFull",
            message: `no free address in the service range ${this.deps.cidr.text} (${this.allocator.capacity} addresses); widen --service-cidr or delete a service`,
          });
        }
        continue;
      }
      const record: ServiceRecord = { vip, ports: view.ports, createdAtMs: clock.nowMs() };
      const result = await store.txn({
        compare: [
          {
            key: serviceRecordKey(view.namespace, view.name),
            target: "version",
            op: "==",
            version: 0,
          },
        ],
        success: [
          {
            type: "put",
            key: serviceRecordKey(view.namespace, view.name),
            value: JSON.stringify(record),
          },
        ],
      });
      if (!result.succeeded) {
        // Someone wrote it meanwhile (a previous term): take what is stored.
        this.allocator.release(id);
        const kv = await store.get(serviceRecordKey(view.namespace, view.name));
        const stored = kv ? this.decode(serviceRecordSchema, kv.key, kv.value) : undefined;
        if (stored && this.allocator.reserve(id, stored.vip)) this.records.set(id, stored);
        continue;
      }
      this.unallocated.delete(id);
      this.records.set(id, record);
    }
    for (const id of this.unallocated) if (!views.has(id)) this.unallocated.delete(id);
    // A deleted node's mesh report goes with it.
    for (const node of this.reports.nodes()) {
      if (state.nodes.has(node)) continue;
      this.reports.forget(node);
      await store.delete(meshPeerRecordKey(node));
    }
    const body = create(NetworkSnapshotSchema, {
      clusterDomain,
      serviceCidr: this.deps.cidr.text,
      services: [...views.entries()]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([id, view]) => serviceToProto(view, this.records.get(id), clusterDomain)),
      peers: [...state.nodes.values()]
        .filter((node) => node.status !== "Left")
        .sort((a, b) => a.name.localeCompare(b.name))
        .map((node) => meshPeerOf(node, this.reports.get(node.name))),
      coordinatorRelays: this.relays,
    });
    const bytes = toBinary(NetworkSnapshotSchema, body);
    const fingerprint = createHash("sha256").update(bytes).digest("hex");
    if (fingerprint === this.fingerprint || !this.running) return;
    // Versions grow across leader changes too: at least the wall clock in ms, which a
    // new leader's first snapshot is past (recomputes are ≥ 50 ms apart).
    const previous = this.snapshot?.version ?? 0n;
    const now = BigInt(Math.max(0, Math.floor(clock.nowMs())));
    body.version = now > previous ? now : previous + 1n;
    this.fingerprint = fingerprint;
    this.snapshot = body;
    this.message = create(HeartbeatResponseSchema, { network: body });
    let streams = 0;
    for (const sinks of this.sinks.values()) {
      for (const sink of sinks) sink(this.message);
      streams += sinks.size;
    }
    this.fanoutDelayMs = Math.min(
      maxFanoutDelayMs,
      ((bytes.byteLength * streams) / fanoutBytesPerSecond) * 1000,
    );
  }

  private async refreshRelays(): Promise<void> {
    if (!this.running) return;
    const relays = await this.readRelays();
    if (JSON.stringify(relays) !== JSON.stringify(this.relays)) {
      this.relays = relays;
      this.schedule();
    }
  }

  private async readRelays(): Promise<string[]> {
    try {
      return (await this.deps.coordinatorRelays()).sort();
    } catch (error) {
      this.deps.logger.warn({ err: error }, "could not read the coordinators for relays");
      return this.relays;
    }
  }

  private decode<T>(
    schema: Parameters<typeof decodeRecord<T>>[0],
    key: string,
    value: string,
  ): T | undefined {
    try {
      return decodeRecord(schema, key, value);
    } catch (error) {
      if (!(error instanceof MalformedRecordError)) throw error;
      this.deps.logger.error({ key, detail: error.detail }, "refused a malformed services record");
      return undefined;
    }
  }
}

export { serviceId };

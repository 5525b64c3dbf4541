/**
 * The replicated store backend: an etcd v3 cluster through the `etcd3` client, for
 * coordinators that run in HA (DESIGN.md decision 1, REQ-012, ADR 0014).
 *
 * The contract (store.ts) is etcd-shaped, so most calls map one to one. The differences
 * this module bridges: keys live under a namespace, revisions are the cluster's own
 * (shared with every other etcd user), a watch's start revision is shifted by one so
 * that etcd's compaction check matches the contract's, lease TTLs are whole seconds
 * and lease ids are chosen here (small enough for a JS number), and every call has a
 * deadline and fails with a StoreError.
 */

import {
  ConsecutiveBreaker,
  ConstantBackoff,
  circuitBreaker,
  handleWhen,
  isBrokenCircuitError,
  retry,
} from "cockatiel";
import {
  ClientClosedError,
  CompareResult,
  CompareTarget,
  Etcd3,
  EtcdLeaseInvalidError,
  GRPCDeadlineExceededError,
  GRPCInvalidArgumentError,
  GRPCUnavailableError,
  type ICompare,
  type ILeaseKeepAliveResponse,
  type IRangeRequest,
  type IRequestOp,
  type IResponseHeader,
  type IResponseOp,
  isRecoverableError,
  type KVClient,
} from "etcd3";
import { type Clock, systemClock } from "../../lib/clock.js";
import { type Rng, systemRng } from "../../lib/rng.js";
import { DEFAULT_NAMESPACE, EtcdKeyspace, normalizeNamespace } from "./etcdKeyspace.js";
import { EtcdWatch, type WatchHost, type WatchStream } from "./etcdWatch.js";
import {
  leaseNotFound,
  requireKey,
  requireLeaseId,
  requirePrefix,
  requireValue,
  validateRangeOptions,
  validateTxn,
} from "./requestValidation.js";
import {
  type Compare,
  type KeyValue,
  type Lease,
  type Op,
  type OpResult,
  type RangeOptions,
  type RangeResult,
  type Store,
  StoreError,
  type TxnRequest,
  type TxnResult,
  type Watch,
  type WatchHandlers,
  type WatchOptions,
} from "./store.js";

const DEFAULT_DIAL_TIMEOUT_MS = 5_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;
/** Lease ids are chosen here, below 2^48, so they stay exact as JS numbers. */
const LEASE_ID_LIMIT = 2 ** 48;
const LEASE_ID_ATTEMPTS = 3;
/** A member that failed this many calls in a row is skipped for a second. */
const BREAKER_FAILURES = 3;
const BREAKER_HALF_OPEN_MS = 1_000;

export interface EtcdStoreOptions {
  /** Client endpoints of the etcd members: `host:port` or `http://host:port`. */
  endpoints: string[];
  /**
   * Key namespace, default "/cloudless": keys are stored as `<prefix>/<key>`, so several
   * clusters can share an etcd. Namespaces of different clusters must not nest.
   */
  prefix?: string;
  /** Drives this backend's own timers (watch confirmation). Leases expire on etcd's clock. */
  clock?: Clock;
  /** Chooses lease ids. */
  rng?: Rng;
  /** How long opening waits for any member to answer (default 5 s). */
  dialTimeoutMs?: number;
  /** Deadline of every call (default 5 s). */
  requestTimeoutMs?: number;
}

export interface EtcdStore extends Store {
  readonly backend: "etcd";
  readonly endpoints: readonly string[];
  /** The namespace as stored, ending in "/" (or "" for the whole etcd). */
  readonly prefix: string;
}

type CallOptions = NonNullable<Parameters<KVClient["range"]>[1]>;

/** A lease id in [1, LEASE_ID_LIMIT), from six random bytes (the limit is 2^48). */
function randomLeaseId(rng: Rng): number {
  return (rng.bytes(6).readUIntBE(0, 6) % (LEASE_ID_LIMIT - 1)) + 1;
}

/** Parses `etcd://host1:2379,host2:2379[/prefix]` (the coordinator's `--store` value). */
export function parseEtcdStoreUrl(url: string): { endpoints: string[]; prefix?: string } {
  const match = /^etcd:\/\/([^/]+)(\/.*)?$/.exec(url.trim());
  const hosts = match?.[1]?.split(",").map((h) => h.trim()) ?? [];
  if (!match || hosts.length === 0 || hosts.some((h) => !/^[^\s:]+:\d{1,5}$/.test(h))) {
    throw new StoreError(
      `store URL ${JSON.stringify(url)} is not etcd://host:port[,host:port…][/prefix]; ` +
        "for example etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379",
      "invalid",
    );
  }
  const prefix = match[2];
  return prefix && prefix !== "/" ? { endpoints: hosts, prefix } : { endpoints: hosts };
}

/** Connects to etcd and checks that a member answers within dialTimeoutMs. */
export async function openEtcdStore(options: EtcdStoreOptions): Promise<EtcdStore> {
  const endpoints = options.endpoints;
  if (
    !Array.isArray(endpoints) ||
    endpoints.length === 0 ||
    endpoints.some((e) => typeof e !== "string" || e.trim() === "")
  ) {
    throw new StoreError(
      "the etcd store needs at least one endpoint (host:port of an etcd member)",
      "invalid",
    );
  }
  const dialTimeoutMs = options.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
  const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  requirePositiveInteger("dialTimeoutMs", dialTimeoutMs);
  requirePositiveInteger("requestTimeoutMs", requestTimeoutMs);
  const namespace = normalizeNamespace(options.prefix ?? DEFAULT_NAMESPACE);
  const store = new EtcdStoreImpl(
    endpoints.map((e) => e.trim()),
    namespace,
    options.clock ?? systemClock,
    options.rng ?? systemRng,
    requestTimeoutMs,
  );
  try {
    await store.connect(dialTimeoutMs);
  } catch (err) {
    await store.close();
    throw err;
  }
  return store;
}

/** Etcd3 with access to its connection pool, to open streams with our own metadata. */
class EtcdClient extends Etcd3 {
  /** A Watch stream on some member; `hasleader` makes a member that lost its leader end it. */
  openWatchStream(): Promise<WatchStream> {
    return this.pool.withConnection("Watch", ({ client, metadata }) => {
      const requireLeader = metadata.clone();
      requireLeader.set("hasleader", "true");
      const watchable = client as unknown as {
        watch(metadata: unknown, options: CallOptions): WatchStream;
      };
      return watchable.watch(requireLeader, {});
    });
  }
}

function createClient(endpoints: string[]): EtcdClient {
  return new EtcdClient({
    hosts: endpoints,
    grpcOptions: {
      // Finds a dead connection under a long-lived watch (etcd allows pings every 5 s).
      "grpc.keepalive_time_ms": 10_000,
      "grpc.keepalive_timeout_ms": 5_000,
      // A restarted member is found again quickly.
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 2_000,
      "grpc.max_receive_message_length": 256 * 1024 * 1024,
    },
    faultHandling: {
      // Retried on another member only when the call never left this process, so a
      // write is never applied twice.
      global: retry(handleWhen(notSent), {
        maxAttempts: Math.max(0, endpoints.length - 1),
        backoff: new ConstantBackoff(0),
      }),
      host: () =>
        circuitBreaker(handleWhen(isRecoverableError), {
          halfOpenAfter: BREAKER_HALF_OPEN_MS,
          breaker: new ConsecutiveBreaker(BREAKER_FAILURES),
        }),
    },
  });
}

class EtcdStoreImpl implements EtcdStore, WatchHost {
  readonly backend = "etcd" as const;
  readonly keyspace: EtcdKeyspace;
  readonly createAttempts: number;
  private readonly client: EtcdClient;
  /** Watches get their own client: etcd3 resets a client's channels after a failed call. */
  private readonly watchClient: EtcdClient;
  private closed = false;
  /** The highest revision any response reported; where a watch without a start begins. */
  private lastRevision = 0;
  /** A lower bound of etcd's compaction revision (it only grows). */
  private compactFloor = 0;
  private readonly watches = new Set<EtcdWatch>();

  constructor(
    readonly endpoints: readonly string[],
    readonly prefix: string,
    readonly clock: Clock,
    private readonly rng: Rng,
    readonly requestTimeoutMs: number,
  ) {
    this.keyspace = new EtcdKeyspace(prefix);
    this.client = createClient([...endpoints]);
    this.watchClient = createClient([...endpoints]);
    this.createAttempts = endpoints.length * 2;
  }

  /** Waits for any member to answer, so a wrong --store fails at startup. */
  async connect(dialTimeoutMs: number): Promise<void> {
    try {
      await this.attempt(
        "connect",
        (options) => this.client.kv.range(this.probeRequest(), options),
        { idempotent: true, timeoutMs: dialTimeoutMs },
      );
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError(
        `cannot reach etcd at ${this.describeEndpoints()}: no member answered within ` +
          `${dialTimeoutMs} ms (${describeError(err)}); check the --store endpoints and that ` +
          "the etcd members are running and reachable from this host",
        "unavailable",
        { cause: err },
      );
    }
  }

  async get(key: string): Promise<KeyValue | undefined> {
    requireKey(key);
    const response = await this.call(
      "get",
      (options) => this.client.kv.range({ key: this.keyspace.key(key) }, options),
      { idempotent: true },
    );
    const kv = response.kvs[0];
    return kv ? this.keyspace.keyValue(kv) : undefined;
  }

  async range(prefix: string, options?: RangeOptions): Promise<RangeResult> {
    requirePrefix(prefix);
    validateRangeOptions(options);
    const response = await this.call(
      "range",
      (callOptions) => this.client.kv.range(this.rangeRequest(prefix, options), callOptions),
      { idempotent: true },
    );
    return {
      kvs: response.kvs.map((kv) => this.keyspace.keyValue(kv)),
      revision: Number(response.header.revision),
      more: response.more,
    };
  }

  async put(key: string, value: string, options?: { lease?: number }): Promise<number> {
    requireKey(key);
    requireValue(key, value);
    const lease = options?.lease ?? 0;
    requireLeaseId(lease);
    const response = await this.call(
      "put",
      (callOptions) =>
        this.client.kv.put(
          { key: this.keyspace.key(key), value: Buffer.from(value, "utf8"), lease: String(lease) },
          callOptions,
        ),
      { leaseId: lease },
    );
    return Number(response.header.revision);
  }

  async delete(key: string): Promise<number> {
    requireKey(key);
    const response = await this.call("delete", (options) =>
      this.client.kv.deleteRange({ key: this.keyspace.key(key) }, options),
    );
    return Number(response.deleted);
  }

  async txn(request: TxnRequest): Promise<TxnResult> {
    validateTxn(request);
    const leases = new Set(
      [...request.success, ...(request.failure ?? [])].flatMap((op) =>
        op.type === "put" && op.lease ? [op.lease] : [],
      ),
    );
    const response = await this.call(
      "txn",
      (options) =>
        this.client.kv.txn(
          {
            compare: request.compare.map((c) => this.compare(c)),
            success: request.success.map((op) => this.requestOp(op)),
            failure: (request.failure ?? []).map((op) => this.requestOp(op)),
          },
          options,
        ),
      { leaseId: leases.size === 1 ? [...leases][0] : undefined },
    );
    const ops = response.succeeded ? request.success : (request.failure ?? []);
    return {
      succeeded: response.succeeded,
      revision: Number(response.header.revision),
      results: ops.map((op, i) => this.opResult(op, response.responses[i])),
    };
  }

  watch(prefix: string, options: WatchOptions, handlers: WatchHandlers): Watch {
    this.assertOpen();
    requirePrefix(prefix);
    const requested = options.fromRevision;
    if (requested !== undefined && !Number.isSafeInteger(requested)) {
      throw new StoreError(`watch fromRevision must be an integer, got ${requested}`, "invalid");
    }
    // Absent: after the newest revision this client has seen. Any write this process
    // makes after this call gets a higher revision, so none can slip past the watch.
    // fromRevision ≤ 0 means all history, as with SQLite (etcd reads 0 as "now").
    const from = requested === undefined ? this.lastRevision + 1 : Math.max(1, requested);
    const watch = new EtcdWatch(this, prefix, from, requested !== undefined, handlers);
    this.watches.add(watch);
    if (from <= this.compactFloor) {
      watch.end({
        reason: "compacted",
        compactRevision: this.compactFloor,
        message:
          `cannot watch ${JSON.stringify(prefix)} from revision ${from}: etcd compacted its ` +
          `history up to revision ${this.compactFloor}; read the current state with range() ` +
          "and watch from its revision + 1",
      });
    } else {
      watch.start();
    }
    return { cancel: () => watch.cancel() };
  }

  async currentRevision(): Promise<number> {
    const response = await this.call(
      "currentRevision",
      (options) => this.client.kv.range(this.probeRequest(), options),
      { idempotent: true },
    );
    return Number(response.header.revision);
  }

  /**
   * etcd does not report its compaction revision, so it is found by reading at past
   * revisions (a read below it fails): one read when nothing changed since the last
   * answer, a binary search otherwise.
   */
  async compactedRevision(): Promise<number> {
    const floor = Math.max(1, this.compactFloor);
    if (await this.readableAt(floor)) return this.compactFloor;
    let unreadable = floor;
    let readable = await this.currentRevision();
    while (readable - unreadable > 1) {
      const middle = Math.floor((unreadable + readable) / 2);
      if (await this.readableAt(middle)) readable = middle;
      else unreadable = middle;
    }
    this.noteCompacted(readable);
    return readable;
  }

  async compact(revision: number): Promise<void> {
    this.assertOpen();
    if (!Number.isSafeInteger(revision) || revision < 0) {
      throw new StoreError(`compact revision must be a non-negative integer`, "invalid");
    }
    if (revision === 0 || revision <= this.compactFloor) return;
    try {
      await this.attempt(
        "compact",
        (options) => this.client.kv.compact({ revision: String(revision) }, options),
        { idempotent: true },
      );
      this.noteCompacted(revision);
    } catch (err) {
      const message = describeError(err);
      if (message.includes("required revision has been compacted")) {
        // Already compacted at or past `revision`: nothing to do, as with SQLite.
        this.noteCompacted(revision);
        return;
      }
      if (message.includes("required revision is a future revision")) {
        const current = await this.currentRevision();
        throw new StoreError(
          `cannot compact to revision ${revision}: the current revision is ${current}`,
          "invalid",
        );
      }
      throw this.toStoreError(err, "compact", this.requestTimeoutMs, undefined);
    }
  }

  async grantLease(ttlMs: number): Promise<Lease> {
    this.assertOpen();
    if (!Number.isFinite(ttlMs) || ttlMs <= 0) {
      throw new StoreError(`lease ttlMs must be a positive number, got ${ttlMs}`, "invalid");
    }
    // etcd counts whole seconds; rounding up never gives less time than asked for.
    const ttlSeconds = Math.max(1, Math.ceil(ttlMs / 1_000));
    for (let i = 0; i < LEASE_ID_ATTEMPTS; i++) {
      const id = randomLeaseId(this.rng);
      try {
        const response = await this.attempt("grantLease", (options) =>
          this.client.leaseClient.leaseGrant({ ID: String(id), TTL: String(ttlSeconds) }, options),
        );
        if (response.error) throw new Error(response.error);
        // etcd may raise the TTL to its minimum (1.5 election timeouts, in seconds).
        return { id: Number(response.ID), ttlMs: Number(response.TTL) * 1_000 };
      } catch (err) {
        if (describeError(err).includes("lease already exists")) continue;
        throw this.toStoreError(err, "grantLease", this.requestTimeoutMs, undefined);
      }
    }
    throw new StoreError(
      `etcd refused ${LEASE_ID_ATTEMPTS} random lease ids as taken; retry the grant`,
      "unavailable",
    );
  }

  async keepAlive(leaseId: number): Promise<void> {
    requireLeaseId(leaseId);
    const response = await this.call(
      "keepAlive",
      (options) => this.keepAliveOnce(leaseId, options),
      { idempotent: true, leaseId },
    );
    // etcd answers TTL 0 for a lease that is gone (it waits for an expired one to be revoked).
    if (!(Number(response.TTL) > 0)) throw leaseNotFound(leaseId);
  }

  async revokeLease(leaseId: number): Promise<void> {
    requireLeaseId(leaseId);
    await this.call(
      "revokeLease",
      (options) => this.client.leaseClient.leaseRevoke({ ID: String(leaseId) }, options),
      { leaseId },
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const watch of [...this.watches]) watch.end(watch.closedByStore());
    this.client.close();
    this.watchClient.close();
  }

  // --- WatchHost ----------------------------------------------------------------

  openWatchStream(): Promise<WatchStream> {
    return this.watchClient.openWatchStream();
  }

  noteCompacted(revision: number): void {
    if (revision > this.compactFloor) this.compactFloor = revision;
  }

  forget(watch: EtcdWatch): void {
    this.watches.delete(watch);
  }

  describeEndpoints(): string {
    return this.endpoints.join(",");
  }

  // --- requests -----------------------------------------------------------------

  private probeRequest(revision?: number): IRangeRequest {
    return {
      key: this.keyspace.probeKey,
      count_only: true,
      ...(revision === undefined ? {} : { revision: String(revision) }),
    };
  }

  private rangeRequest(prefix: string, options: RangeOptions | undefined): IRangeRequest {
    const range = this.keyspace.prefixRange(prefix);
    let start = range.key;
    if (options?.fromKey !== undefined) {
      const from = this.keyspace.key(options.fromKey);
      if (Buffer.compare(from, start) > 0) start = from;
    }
    return {
      key: start,
      range_end: range.range_end,
      limit: String(options?.limit ?? 0),
      keys_only: options?.keysOnly === true,
    };
  }

  private compare(compare: Compare): ICompare {
    const key = this.keyspace.key(compare.key);
    const result = {
      "==": CompareResult.Equal,
      "!=": CompareResult.NotEqual,
      "<": CompareResult.Less,
      ">": CompareResult.Greater,
    }[compare.op];
    switch (compare.target) {
      case "modRevision":
        return {
          key,
          result,
          target: CompareTarget.Mod,
          mod_revision: String(compare.modRevision),
        };
      case "createRevision":
        return {
          key,
          result,
          target: CompareTarget.Create,
          create_revision: String(compare.createRevision),
        };
      case "version":
        return { key, result, target: CompareTarget.Version, version: String(compare.version) };
      case "value":
        return {
          key,
          result,
          target: CompareTarget.Value,
          value: Buffer.from(compare.value, "utf8"),
        };
    }
  }

  private requestOp(op: Op): IRequestOp {
    switch (op.type) {
      case "put":
        return {
          request_put: {
            key: this.keyspace.key(op.key),
            value: Buffer.from(op.value, "utf8"),
            lease: String(op.lease ?? 0),
            prev_kv: true,
          },
        };
      case "delete":
        return { request_delete_range: { key: this.keyspace.key(op.key) } };
      case "deletePrefix":
        return { request_delete_range: this.keyspace.prefixRange(op.prefix) };
      case "get":
        return { request_range: { key: this.keyspace.key(op.key) } };
      case "range":
        return { request_range: this.rangeRequest(op.prefix, op.options) };
    }
  }

  private opResult(op: Op, response: IResponseOp | undefined): OpResult {
    switch (op.type) {
      case "put": {
        const prev = response?.response_put?.prev_kv;
        return prev ? { type: "put", prev: this.keyspace.keyValue(prev) } : { type: "put" };
      }
      case "delete":
      case "deletePrefix":
        return { type: "delete", deleted: Number(response?.response_delete_range?.deleted ?? 0) };
      case "get": {
        const kv = response?.response_range?.kvs[0];
        return kv ? { type: "get", kv: this.keyspace.keyValue(kv) } : { type: "get" };
      }
      case "range":
        return {
          type: "range",
          kvs: (response?.response_range?.kvs ?? []).map((kv) => this.keyspace.keyValue(kv)),
          more: response?.response_range?.more ?? false,
        };
    }
  }

  /** Reads at a past revision: false when etcd has compacted it away. */
  private async readableAt(revision: number): Promise<boolean> {
    try {
      await this.attempt(
        "compactedRevision",
        (options) => this.client.kv.range(this.probeRequest(revision), options),
        { idempotent: true },
      );
      return true;
    } catch (err) {
      if (describeError(err).includes("required revision has been compacted")) return false;
      throw this.toStoreError(err, "compactedRevision", this.requestTimeoutMs, undefined);
    }
  }

  /** One request-response on a LeaseKeepAlive stream. */
  private async keepAliveOnce(
    leaseId: number,
    options: CallOptions,
  ): Promise<ILeaseKeepAliveResponse> {
    const stream = await this.client.leaseClient.leaseKeepAlive(options);
    return new Promise((resolve, reject) => {
      let settled = false;
      stream.on("data", (response: ILeaseKeepAliveResponse) => {
        if (settled) return;
        settled = true;
        stream.end();
        resolve(response);
      });
      stream.on("error", (err: Error) => {
        if (settled) return;
        settled = true;
        reject(err);
      });
      stream.on("end", () => {
        if (settled) return;
        settled = true;
        reject(new GRPCUnavailableError("the etcd member ended the keepalive stream unanswered"));
      });
      stream.write({ ID: String(leaseId) });
    });
  }

  /** Runs a call and maps its failure to a StoreError. */
  private async call<T extends { header: IResponseHeader }>(
    what: string,
    run: (options: CallOptions) => Promise<T>,
    options: { idempotent?: boolean; leaseId?: number } = {},
  ): Promise<T> {
    try {
      return await this.attempt(what, run, options);
    } catch (err) {
      throw this.toStoreError(err, what, this.requestTimeoutMs, options.leaseId);
    }
  }

  /**
   * Runs a call with a deadline and notes the revision it reports. Calls that read (or
   * are idempotent) are tried again on another member while the deadline allows.
   */
  private async attempt<T extends { header: IResponseHeader }>(
    what: string,
    run: (options: CallOptions) => Promise<T>,
    options: { idempotent?: boolean; timeoutMs?: number } = {},
  ): Promise<T> {
    this.assertOpen();
    // biome-ignore lint/plugin/clockAndRng: a gRPC deadline is a wall-clock Date that grpc-js checks on the real clock
    const deadline = Date.now() + (options.timeoutMs ?? this.requestTimeoutMs);
    for (let attempt = 1; ; attempt++) {
      try {
        const response = await run({ deadline: new Date(deadline) });
        const revision = Number(response.header?.revision);
        if (revision > this.lastRevision) this.lastRevision = revision;
        return response;
      } catch (err) {
        if (this.closed || err instanceof ClientClosedError) throw this.closedError(what);
        const again =
          options.idempotent === true &&
          attempt <= this.endpoints.length &&
          // biome-ignore lint/plugin/clockAndRng: the gRPC deadline above, on the same real clock
          Date.now() < deadline &&
          (err instanceof GRPCUnavailableError || grpcCode(err) === 14);
        if (!again) throw err;
      }
    }
  }

  private toStoreError(
    err: unknown,
    what: string,
    timeoutMs: number,
    leaseId: number | undefined,
  ): StoreError {
    if (err instanceof StoreError) return err;
    if (this.closed || err instanceof ClientClosedError) return this.closedError(what);
    if (err instanceof EtcdLeaseInvalidError) return leaseNotFound(leaseId);
    const detail = describeError(err);
    if (
      err instanceof GRPCInvalidArgumentError ||
      /duplicate key given in txn request|too many operations in txn request|request is too large|key is not provided|future revision/.test(
        detail,
      )
    ) {
      return new StoreError(`etcd refused ${what}: ${detail}`, "invalid", { cause: err });
    }
    if (err instanceof GRPCDeadlineExceededError || grpcCode(err) === 4) {
      return new StoreError(
        `etcd at ${this.describeEndpoints()} did not answer ${what} within ${timeoutMs} ms; ` +
          "check that a majority of the etcd members are running and reachable",
        "unavailable",
        { cause: err, brief: `etcd: no answer within ${timeoutMs} ms` },
      );
    }
    const circuit = isBrokenCircuitError(err) ? "every member failed its recent calls; " : "";
    return new StoreError(
      `etcd at ${this.describeEndpoints()} could not serve ${what} (${circuit}${detail}); ` +
        "check that a majority of the etcd members are running and reachable",
      "unavailable",
      {
        cause: err,
        brief: circuit ? "etcd: every member failed its recent calls" : unavailableBrief(detail),
      },
    );
  }

  private assertOpen(): void {
    if (this.closed) throw this.closedError("the call");
  }

  private closedError(what: string): StoreError {
    return new StoreError(
      `the etcd store (${this.describeEndpoints()}) is closed; open it again to make ${what}`,
      "closed",
    );
  }
}

/** What an etcd failure means to an API caller, in a few words (StoreError.brief). */
function unavailableBrief(detail: string): string {
  // etcd's own words when a member has no leader, which is what a lost quorum looks like.
  if (/no leader|leader changed|request timed out|not capable/i.test(detail)) {
    return "etcd: no quorum";
  }
  if (notSent(new Error(detail))) return "etcd: members unreachable";
  return "etcd: the call failed";
}

/** True when the call never reached a member, so trying another cannot apply it twice. */
function notSent(err: Error): boolean {
  return /No connection established|ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|Failed to connect/i.test(
    err.message,
  );
}

function grpcCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === "number" ? code : undefined;
}

function describeError(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.replace(/^\w*Error: /, "").slice(0, 500);
}

function requirePositiveInteger(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new StoreError(`${name} must be a positive integer, got ${value}`, "invalid");
  }
}

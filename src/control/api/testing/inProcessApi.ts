/**
 * The coordinator's modules served in process: a real SQLite store, CA, event log and
 * audit log in a temporary directory, a ManualClock and a seeded rng, and clients that
 * call the handlers through Connect's router transport (no listener, no TLS). The caller
 * is whoever `as(peer)` says, as the TLS handshake would have established.
 */

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import {
  type Client,
  createClient,
  createRouterTransport,
  type Interceptor,
} from "@connectrpc/connect";
import { ManualClock } from "../../../lib/clock.js";
import { seededRng } from "../../../lib/rng.js";
import { silentLogger } from "../../../observe/logger.js";
import { createCoordinatorMetrics } from "../../../observe/metrics.js";
import { auditKey } from "../../audit/auditModule.js";
import type { CoordinatorOptions } from "../../coordinator.js";
import { FencedStore } from "../../leader/fencedStore.js";
import { leaderKey } from "../../leader/leaderElection.js";
import { coordinatorModules } from "../../modules/index.js";
import type { CoordinatorCore, ModuleDefinition } from "../../modules/module.js";
import { type ModuleHost, startModules } from "../../modules/moduleHost.js";
import { loadOrCreateCa } from "../../security/pki.js";
import { openSqliteStore } from "../../store/sqliteStore.js";
import type { Store } from "../../store/store.js";
import { authorizationInterceptor } from "../authorization.js";
import { errorMappingInterceptor } from "../errorInterceptor.js";
import { type Peer, peerKey } from "../peer.js";

export const admin: Peer = {
  address: "127.0.0.1:50000",
  identity: { kind: "admin", name: "admin", serial: "01", role: "admin" },
};

export function nodePeer(name: string): Peer {
  return { address: "127.0.0.2:50001", identity: { kind: "node", name, serial: "02" } };
}

/** A person or program made by `user create`, with its role (ADR 0051). */
export function userPeer(name: string, role: "admin" | "operator" | "viewer"): Peer {
  return {
    address: "127.0.0.3:50002",
    identity: { kind: "user", name, serial: "03", role },
  };
}

export const anonymous: Peer = { address: "192.0.2.7:40000", refusal: "no client certificate" };

export interface InProcessApi {
  clock: ManualClock;
  store: Store;
  modules: ModuleHost;
  /** Whether this coordinator leads; flip it to test follower answers. */
  leadership: { isLeader: boolean; leaderUrl: string | undefined; leaderId: string | undefined };
  core: CoordinatorCore;
  /** Makes this coordinator the leader (the /leader key, the fence) and starts leader work. */
  lead(): Promise<void>;
  /** A client of `service` calling as `peer`. */
  client<S extends DescService>(service: S, peer?: Peer): Client<S>;
  close(): Promise<void>;
}

export async function startInProcessApi(
  options: {
    modules?: readonly ModuleDefinition[];
    seed?: number;
    /** Coordinator settings the modules read (service range, rebalance…). */
    coordinatorOptions?: Partial<CoordinatorOptions>;
  } = {},
): Promise<InProcessApi> {
  const dir = await mkdtemp(join(tmpdir(), "cloudless-api-"));
  const clock = new ManualClock();
  const store = await openSqliteStore({ path: join(dir, "store.db"), clock });
  const { ca } = await loadOrCreateCa(join(dir, "pki"), "test", clock.nowMs());
  const leadership = {
    isLeader: false,
    leaderUrl: undefined as string | undefined,
    leaderId: undefined as string | undefined,
  };
  const leaderStore = new FencedStore(store);
  const core: CoordinatorCore = {
    clusterName: "test",
    coordinatorId: "coordinator-test",
    dataDir: dir,
    store,
    leaderStore,
    ca,
    clock,
    rng: seededRng(options.seed ?? 1),
    logger: silentLogger,
    metrics: createCoordinatorMetrics({ defaultMetrics: false }),
    leadership,
    options: {
      dataDir: dir,
      host: "127.0.0.1",
      port: 0,
      clusterName: "test",
      ...options.coordinatorOptions,
    },
  };
  let modules: ModuleHost;
  try {
    modules = await startModules(options.modules ?? coordinatorModules, core);
  } catch (error) {
    await store.close();
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  // The server's own error mapping: our errors become Connect codes; then the roles.
  const mapErrors = errorMappingInterceptor();
  const authorize = authorizationInterceptor({
    audit: modules.use(auditKey),
    audited: modules.audited(),
  });
  return {
    clock,
    store,
    modules,
    leadership,
    core,
    async lead() {
      const info = { id: core.coordinatorId, url: "https://127.0.0.1:1", sinceMs: clock.nowMs() };
      const result = await store.txn({
        compare: [],
        success: [
          { type: "put", key: leaderKey, value: JSON.stringify(info) },
          { type: "get", key: leaderKey },
        ],
      });
      const created = result.results[1];
      const createRevision = created?.type === "get" ? (created.kv?.createRevision ?? 0) : 0;
      leaderStore.setFence({ key: leaderKey, target: "createRevision", op: "==", createRevision });
      Object.assign(leadership, { isLeader: true, leaderUrl: info.url, leaderId: info.id });
      await modules.onLeader();
    },
    client(service, peer = admin) {
      const asPeer: Interceptor = (next) => (request) => {
        request.contextValues.set(peerKey, peer);
        return next(request);
      };
      const transport = createRouterTransport((router) => modules.routes(router), {
        router: { interceptors: [asPeer, mapErrors, authorize] },
      });
      return createClient(service, transport);
    },
    async close() {
      await modules.onFollower();
      await modules.stop();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

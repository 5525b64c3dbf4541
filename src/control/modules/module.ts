/**
 * How a subsystem joins the coordinator (ADR 0045). A module is started once, in the
 * order of the module list, with the coordinator's shared core (store, clock, rng,
 * logger, metrics, leadership…); it may publish services under typed keys for the
 * modules after it, register its API services on the Connect router, run leader-only
 * work while this coordinator leads, and feed the state gauges. Adding a module is a
 * new folder and one line in the list (modules/index.ts): no other module changes.
 */
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { ConnectRouter } from "@connectrpc/connect";
import type { IdentityKind } from "../../api/identity.js";
import type { Clock } from "../../lib/clock.js";
import type { Rng } from "../../lib/rng.js";
import type { Logger } from "../../observe/logger.js";
import type { CoordinatorMetrics, CoordinatorStateSource } from "../../observe/metrics.js";
import type { AuditedMethods } from "../api/audit.js";
import type { Leadership } from "../api/context.js";
import type { CoordinatorOptions } from "../coordinator.js";
import type { CertificateAuthority } from "../security/pki.js";
import type { Store } from "../store/store.js";

/** What every module receives: the coordinator's own parts, none of another module's. */
export interface CoordinatorCore {
  readonly clusterName: string;
  /** This coordinator's id in the leader election and the registry of coordinators. */
  readonly coordinatorId: string;
  readonly dataDir: string;
  /** The plain store: API handlers write through it from any coordinator. */
  readonly store: Store;
  /**
   * The fenced store: leader-only work (controllers, membership) writes through it, so a
   * deposed leader's writes are refused (NFR-R1).
   */
  readonly leaderStore: Store;
  readonly ca: CertificateAuthority;
  readonly clock: Clock;
  /** Identifiers (uids, request ids) come from here (ADR 0041). */
  readonly rng: Rng;
  readonly logger: Logger;
  /** Prometheus metrics (REQ-070); a module may register its own on `metrics.registry`. */
  readonly metrics: CoordinatorMetrics;
  readonly leadership: Leadership;
  /** The coordinator's options, for the settings a module reads (membership, rebalance…). */
  readonly options: Readonly<CoordinatorOptions>;
}

/** A typed name under which a module publishes a service for the modules after it. */
export interface ModuleKey<T> {
  readonly name: string;
  /** Never set: carries T, so `use(key)` is typed. */
  readonly type?: T;
}

export function moduleKey<T>(name: string): ModuleKey<T> {
  return { name };
}

export interface ModuleContext extends CoordinatorCore {
  /** Publishes a service for the modules after this one in the list. */
  provide<T>(key: ModuleKey<T>, value: T): void;
  /** A service an earlier module published; a missing one is a wiring error, said at start. */
  use<T>(key: ModuleKey<T>): T;
}

/**
 * A raw HTTP/2 stream endpoint beside the Connect services (the mesh relay, ADR 0046):
 * requests whose path starts with `prefix` come here instead of to Connect, once the
 * caller's certificate is verified and, for a node, still current (not deleted or
 * re-enrolled). The route checks the caller's kind itself.
 */
export interface StreamRoute {
  readonly prefix: string;
  handle(
    request: Http2ServerRequest,
    response: Http2ServerResponse,
    caller: { kind: IdentityKind; name: string },
  ): void;
}

/** A started module: every part is optional. */
export interface CoordinatorModule {
  /** Registers this module's API services. */
  routes?(router: ConnectRouter): void;
  /** Its raw stream endpoints (served on the API port, authenticated like the API). */
  readonly streamRoutes?: readonly StreamRoute[];
  /** Its state-changing methods, which enter the audit log, and what each is about. */
  readonly audited?: AuditedMethods;
  /** This coordinator was elected: start the leader-only work (controllers, trackers). */
  onLeader?(): Promise<void>;
  /**
   * This coordinator is no longer the leader (or stops): stop that work. Called more than
   * once, and also on a coordinator that never led; it must be idempotent.
   */
  onFollower?(): Promise<void>;
  /** Leader-only housekeeping, once a maintenance interval (trimming, pruning). */
  maintain?(): Promise<unknown>;
  /** The state gauges this module feeds, read at scrape time. */
  readonly stateGauges?: Partial<CoordinatorStateSource>;
  /** Releases what `start` opened; called once, after the API server has closed. */
  stop?(): Promise<void>;
}

export interface ModuleDefinition {
  /** Names the module in logs and wiring errors. */
  readonly name: string;
  start(context: ModuleContext): CoordinatorModule | Promise<CoordinatorModule>;
}

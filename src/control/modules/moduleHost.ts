import type { ConnectRouter } from "@connectrpc/connect";
import type { CoordinatorStateSource } from "../../observe/metrics.js";
import type { AuditedMethods, AuditTarget } from "../api/audit.js";
import type {
  CoordinatorCore,
  CoordinatorModule,
  ModuleDefinition,
  ModuleKey,
  StreamRoute,
} from "./module.js";

/** The started modules of one coordinator, driven as one. */
export interface ModuleHost {
  /** A service a module published (for the coordinator's own wiring). */
  use<T>(key: ModuleKey<T>): T;
  /** Every module's API services, in list order. */
  routes(router: ConnectRouter): void;
  /** Every module's audited methods. */
  audited(): AuditedMethods;
  /** Every module's raw stream endpoints, in list order. */
  streamRoutes(): StreamRoute[];
  /** Starts the leader-only work, in list order. */
  onLeader(): Promise<void>;
  /**
   * Stops it, in list order too: a module's leader work stops before that of the modules
   * after it, so the heartbeat streams (nodes, late in the list) end once membership and
   * the controllers of the ended term have stopped and record nothing more.
   */
  onFollower(): Promise<void>;
  /** Every module's housekeeping, together. */
  maintain(): Promise<void>;
  /** The state gauges, from whichever module feeds each (absent ones read as empty). */
  stateSource(): CoordinatorStateSource;
  /** Stops every module, in reverse order of the list. */
  stop(): Promise<void>;
}

interface Started {
  name: string;
  module: CoordinatorModule;
}

/**
 * Starts the modules in list order. A module that fails to start stops the ones started
 * before it (in reverse) and the error goes to the caller: no half-started coordinator.
 */
export async function startModules(
  definitions: readonly ModuleDefinition[],
  core: CoordinatorCore,
): Promise<ModuleHost> {
  const services = new Map<ModuleKey<unknown>, unknown>();
  const started: Started[] = [];
  const use = <T>(key: ModuleKey<T>, by: string): T => {
    if (!services.has(key)) {
      throw new Error(
        `module ${by} needs "${key.name}", which no module before it in the module list provides; move ${by} after the module that provides it`,
      );
    }
    return services.get(key) as T;
  };
  const stopStarted = async () => {
    for (const { module } of [...started].reverse()) await module.stop?.();
  };
  const names = new Set<string>();
  try {
    for (const definition of definitions) {
      if (names.has(definition.name)) {
        throw new Error(`module ${definition.name} is listed twice in the module list`);
      }
      names.add(definition.name);
      const module = await definition.start({
        ...core,
        provide(key, value) {
          if (services.has(key)) {
            throw new Error(`module ${definition.name} provides "${key.name}", already provided`);
          }
          services.set(key, value);
        },
        use: (key) => use(key, definition.name),
      });
      started.push({ name: definition.name, module });
    }
  } catch (error) {
    await stopStarted();
    throw error;
  }

  const gauge = <K extends keyof CoordinatorStateSource>(name: K) =>
    started.find(({ module }) => module.stateGauges?.[name])?.module.stateGauges?.[name];
  const nodesByStatus = gauge("nodesByStatus");
  const replicasByPhase = gauge("replicasByPhase");
  const heartbeatStreams = gauge("heartbeatStreams");

  const audited = new Map<string, AuditTarget>();
  for (const { name, module } of started) {
    for (const [method, target] of module.audited ?? []) {
      if (audited.has(method)) {
        await stopStarted();
        throw new Error(`module ${name} audits ${method}, which another module already audits`);
      }
      audited.set(method, target);
    }
  }

  let stopped = false;
  return {
    audited: () => audited,
    streamRoutes: () => started.flatMap(({ module }) => module.streamRoutes ?? []),
    use: (key) => use(key, "coordinator"),
    routes(router) {
      for (const { module } of started) module.routes?.(router);
    },
    async onLeader() {
      for (const { module } of started) await module.onLeader?.();
    },
    async onFollower() {
      for (const { module } of started) await module.onFollower?.();
    },
    async maintain() {
      await Promise.all(started.map(({ module }) => module.maintain?.()));
    },
    stateSource: () => ({
      nodesByStatus: nodesByStatus ?? (async () => ({})),
      replicasByPhase: replicasByPhase ?? (async () => ({})),
      heartbeatStreams: heartbeatStreams ?? (() => 0),
    }),
    async stop() {
      if (stopped) return;
      stopped = true;
      await stopStarted();
    },
  };
}

/**
 * A fleet of hollow nodes in one process: each is the real agent (startAgent — enrollment
 * with its own P-256 key, the heartbeat stream, the replica supervisor, status reports)
 * with the fake driver as its runtime, a configured capacity and a fault switch on its
 * transport. Only the runtime is simulated, so the coordinator cannot tell a hollow node
 * from a real one.
 */
import { access, mkdir } from "node:fs/promises";
import * as path from "node:path";
import { type Agent, startAgent } from "../agent/agent.js";
import { FakeDriver } from "../agent/drivers/fakeDriver.js";
import type { MeasuredCapacity } from "../agent/resources/index.js";
import { systemClock } from "../lib/clock.js";
import type { Logger } from "../observe/logger.js";
import { silentLogger } from "../observe/logger.js";
import { FaultSwitch } from "./faultSwitch.js";

export interface HollowCapacity {
  cpuMillicores: number;
  memoryMiB: number;
  storageGiB: number;
  egressMbps: number;
}

export const defaultHollowCapacity: HollowCapacity = {
  cpuMillicores: 4000,
  memoryMiB: 8192,
  storageGiB: 100,
  egressMbps: 1000,
};

export interface HollowFleetOptions {
  joinUrl: string;
  /** One bootstrap token per node that has not enrolled yet (nodes with a saved identity need none). */
  tokens: string[];
  count: number;
  /** Node names are `<prefix>-<index>`, the index zero-padded to 5 digits. */
  prefix: string;
  /** Index of this fleet's first node, so that several processes use distinct names. */
  firstIndex?: number;
  /** Zones given round-robin; empty: none. */
  zones?: string[];
  region?: string;
  /** Each node's data dir is `<dataRoot>/<name>`. */
  dataRoot: string;
  /** Pause between starting two nodes (a stagger; 0: as fast as `concurrency` allows). */
  startDelayMs?: number;
  /** Nodes joining (enrolling and saying hello) at the same time. */
  concurrency?: number;
  /** How long a replica start takes in the fake runtime. */
  replicaStartMs?: number;
  capacity?: Partial<HollowCapacity>;
  logger?: Logger;
  listener?: HollowListener;
}

export interface HollowListener {
  /** startAgent returned (enrolled, capacity and drivers set, heartbeat stream opening). */
  nodeStarted?(name: string, atMs: number, startMs: number): void;
  nodeFailed?(name: string, message: string): void;
  /** The coordinator answered the node's hello: it is Ready. `first` only for the first stream. */
  heartbeatAck?(name: string, atMs: number, first: boolean): void;
  replicaRunning?(event: {
    node: string;
    replicaId: string;
    namespace: string;
    workload: string;
    atMs: number;
  }): void;
}

export type HollowNodeState = "idle" | "starting" | "running" | "failed" | "killed" | "stopped";

export interface HollowNode {
  readonly name: string;
  readonly zone: string;
  state: HollowNodeState;
  readonly faults: FaultSwitch;
  readonly runtime: FakeDriver;
  agent?: Agent;
  error?: string;
}

export class HollowFleet {
  readonly nodes: HollowNode[] = [];
  private readonly byName = new Map<string, HollowNode>();
  private readonly logger: Logger;
  private stopping = false;

  constructor(private readonly options: HollowFleetOptions) {
    this.logger = options.logger ?? silentLogger;
    const first = options.firstIndex ?? 0;
    const zones = options.zones ?? [];
    for (let i = 0; i < options.count; i++) {
      const name = `${options.prefix}-${String(first + i).padStart(5, "0")}`;
      let acked = false;
      const listener = options.listener;
      const node: HollowNode = {
        name,
        zone: zones.length > 0 ? zones[(first + i) % zones.length]! : "",
        state: "idle",
        faults: new FaultSwitch((atMs) => {
          listener?.heartbeatAck?.(name, atMs, !acked);
          acked = true;
        }),
        // The scheduler places image workloads on nodes that report "container".
        runtime: new FakeDriver("container", systemClock, {
          startDelayMs: options.replicaStartMs ?? 200,
          onStarted: (event) => listener?.replicaRunning?.({ node: name, ...event }),
          recordCalls: false,
        }),
      };
      this.nodes.push(node);
      this.byName.set(name, node);
    }
  }

  node(name: string): HollowNode | undefined {
    return this.byName.get(name);
  }

  /** Starts every node; resolves once each has started or failed. */
  async start(): Promise<{ started: number; failed: number }> {
    const queue = [...this.nodes];
    let tokenIndex = 0;
    const concurrency = Math.max(1, this.options.concurrency ?? 32);
    const delayMs = this.options.startDelayMs ?? 0;
    let started = 0;
    let failed = 0;
    const worker = async () => {
      for (;;) {
        const node = queue.shift();
        if (!node || this.stopping) return;
        const ok = await this.startNode(node, () => this.options.tokens[tokenIndex++]);
        if (ok) started++;
        else failed++;
        if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, worker));
    return { started, failed };
  }

  private async startNode(node: HollowNode, nextToken: () => string | undefined): Promise<boolean> {
    node.state = "starting";
    const dataDir = path.join(this.options.dataRoot, node.name);
    const t0 = Date.now();
    try {
      await mkdir(dataDir, { recursive: true, mode: 0o700 });
      const enrolled = await hasIdentity(dataDir);
      const token = enrolled ? undefined : nextToken();
      if (!enrolled && !token) throw new Error("no bootstrap token left for this node");
      const capacity = { ...defaultHollowCapacity, ...this.options.capacity };
      node.agent = await startAgent({
        dataDir,
        joinUrls: [this.options.joinUrl],
        ...(token ? { token } : {}),
        name: node.name,
        ...(this.options.region ? { region: this.options.region } : {}),
        ...(node.zone ? { zone: node.zone } : {}),
        labels: { "cloudless.dev/hollow": "true" },
        runtimeDrivers: [node.runtime],
        capacity: hollowCapacity(capacity),
        usageSampler: { sample: () => ({ cpuMillicoresUsed: 0, memoryMiBUsed: 0 }) },
        wrapTransport: (transport) => node.faults.wrap(transport),
        processMetrics: false,
        logger: this.logger,
      });
      if (this.stopping || node.faults.killed) {
        await node.agent.stop({ leave: false });
        return false;
      }
      node.state = "running";
      this.options.listener?.nodeStarted?.(node.name, Date.now(), Date.now() - t0);
      void node.agent.done.then((exit) => {
        if (node.state === "running") {
          node.state = exit.code === 0 ? "stopped" : "failed";
          if (exit.code !== 0) {
            node.error = exit.message;
            this.options.listener?.nodeFailed?.(node.name, exit.message);
          }
        }
      });
      return true;
    } catch (error) {
      node.state = "failed";
      node.error = error instanceof Error ? error.message : String(error);
      this.logger.warn({ node: node.name, err: node.error }, "hollow node failed to start");
      this.options.listener?.nodeFailed?.(node.name, node.error);
      return false;
    }
  }

  /**
   * Abrupt loss: every call of the node is aborted at once (the coordinator sees its
   * heartbeat stream end) and it never reconnects. Returns the nodes actually killed.
   */
  kill(names: string[]): string[] {
    const killed: string[] = [];
    for (const name of names) {
      const node = this.byName.get(name);
      if (!node || node.state === "killed") continue;
      node.faults.kill();
      const wasRunning = node.state === "running";
      node.state = "killed";
      killed.push(name);
      // Ends the agent's timers; its calls fail at once now, so this sends nothing.
      if (wasRunning) void node.agent?.stop({ leave: false }).catch(() => undefined);
    }
    return killed;
  }

  /** The node keeps its connection and streams open but sends nothing (or resumes). */
  silence(names: string[], on = true): string[] {
    const changed: string[] = [];
    for (const name of names) {
      const node = this.byName.get(name);
      if (!node || node.state === "killed") continue;
      node.faults.silence(on);
      changed.push(name);
    }
    return changed;
  }

  counts(): Record<HollowNodeState | "silenced" | "replicasRunning", number> {
    const counts = {
      idle: 0,
      starting: 0,
      running: 0,
      failed: 0,
      killed: 0,
      stopped: 0,
      silenced: 0,
      replicasRunning: 0,
    };
    for (const node of this.nodes) {
      counts[node.state]++;
      if (node.faults.silenced) counts.silenced++;
      if (node.state === "running") counts.replicasRunning += node.runtime.runningCount;
    }
    return counts;
  }

  /** Stops every node without leaving (as if the machines were switched off together). */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(
      this.nodes.map(async (node) => {
        if (node.state === "killed") return;
        node.faults.kill();
        if (node.agent) await node.agent.stop({ leave: false }).catch(() => undefined);
        node.state = "stopped";
      }),
    );
  }
}

function hollowCapacity(capacity: HollowCapacity): MeasuredCapacity {
  return {
    cpuMillicores: capacity.cpuMillicores,
    memoryMiB: capacity.memoryMiB,
    storageGiB: capacity.storageGiB,
    storageFreeGiB: capacity.storageGiB,
    iopsClass: "ssd",
    measuredIops: 5000,
    egressMbps: capacity.egressMbps,
    egressSource: "configured",
    source: "configured",
  };
}

async function hasIdentity(dataDir: string): Promise<boolean> {
  return access(path.join(dataDir, "identity.json")).then(
    () => true,
    () => false,
  );
}

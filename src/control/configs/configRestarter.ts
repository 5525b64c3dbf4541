/**
 * onChange: restart (issue 15, ADR 0056), the leader's loop: it watches the configs and,
 * when one changes, asks the workload registry to roll every workload of that namespace
 * that mounts it with `onChange: restart`. Each roll is decided again inside a
 * compare-and-swap on the workload record (WorkloadRegistry.restartForConfigs), so a pass
 * repeated, or run again by a new leader after failover, makes no second revision. A pass
 * also runs when this coordinator becomes leader and once a maintenance interval, which
 * covers changes made while no leader watched.
 */

import { decodeRecord } from "../../lib/recordCodec.js";
import type { Logger } from "../../observe/logger.js";
import { workloadPrefix, workloadRecordSchema } from "../controllers/records.js";
import type { Store, Watch } from "../store/store.js";
import { configKeyPrefix, configOfKey } from "./configRegistry.js";
import { restartConfigNames } from "./configStamps.js";

export interface ConfigRestarterDeps {
  /** Read and watched; the writes go through `restart` (the leader's fenced store). */
  store: Store;
  restart(namespace: string, name: string, actor: string): Promise<unknown>;
  logger: Logger;
}

/** Who the events and the audit name for a roll nobody asked for by hand. */
const restartActor = "coordinator/config-restart";

export class ConfigRestarter {
  private watch: Watch | undefined;
  private running = false;
  /** A pass is running: the namespaces (or all, "") to look at again when it ends. */
  private pending = new Set<string>();
  private current: Promise<void> = Promise.resolve();

  constructor(private readonly deps: ConfigRestarterDeps) {}

  /**
   * Starts watching and asks for one pass over every namespace. Does not wait for the
   * pass: the modules after this one start their leader work meanwhile.
   */
  async start(): Promise<void> {
    this.running = true;
    this.startWatch();
    void this.request("");
  }

  async stop(): Promise<void> {
    this.running = false;
    this.watch?.cancel();
    this.watch = undefined;
    this.pending.clear();
    await this.current.catch(() => undefined);
  }

  /** A pass over a namespace ("" for all), after the one running, if any. */
  request(namespace: string): Promise<void> {
    if (!this.running) return Promise.resolve();
    this.pending.add(namespace);
    this.current = this.current.then(() => this.drain()).catch(() => undefined);
    return this.current;
  }

  private async drain(): Promise<void> {
    // Bounded: each round takes the namespaces asked for so far; new ones queue a round.
    while (this.running && this.pending.size > 0) {
      const namespaces = this.pending.has("") ? [""] : [...this.pending];
      this.pending.clear();
      for (const namespace of namespaces) await this.pass(namespace);
    }
  }

  private async pass(namespace: string): Promise<void> {
    const prefix = namespace === "" ? workloadPrefix : `${workloadPrefix}${namespace}/`;
    const { kvs } = await this.deps.store.range(prefix);
    for (const kv of kvs) {
      if (!this.running) return;
      try {
        const workload = decodeRecord(workloadRecordSchema, kv.key, kv.value);
        if (restartConfigNames(workload.spec).length === 0) continue;
        await this.deps.restart(workload.namespace, workload.name, restartActor);
      } catch (error) {
        // One workload's conflict, unreadable record or a lost fence must not stop the
        // others; the next change, leadership or maintenance pass tries again.
        this.deps.logger.warn(
          { err: error, key: kv.key },
          "cannot roll a workload for its changed configs",
        );
      }
    }
  }

  private startWatch(): void {
    if (!this.running) return;
    try {
      this.watch = this.deps.store.watch(
        configKeyPrefix,
        {},
        {
          onEvents: (events) => {
            for (const event of events) {
              const config = configOfKey(event.kv.key);
              if (config) void this.request(config.namespace);
            }
          },
          // History compacted or the watch broke: look at everything and watch again.
          onEnd: () => {
            if (!this.running) return;
            void this.request("");
            this.startWatch();
          },
        },
      );
    } catch (error) {
      this.deps.logger.warn(
        { err: error },
        "cannot watch the configs; onChange: restart waits for the maintenance pass",
      );
    }
  }
}

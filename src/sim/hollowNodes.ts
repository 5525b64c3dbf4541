/**
 * Hollow nodes: thousands of simulated agents in one process that speak the real
 * protocol (see hollowFleet.ts). Build, then run:
 *
 *   node dist/sim/hollowNodes.js --join URL (--token-file F | --admin-config F) --count N
 *     [--prefix hollow] [--first-index 0] [--zones a,b,c] [--region r]
 *     [--data-root DIR] [--start-delay-ms 0] [--concurrency 32] [--replica-start-ms 200]
 *     [--cpu-millicores 4000] [--memory-mib 8192] [--storage-gib 100] [--egress-mbps 1000]
 *     [--log-level warn]
 *
 * Tokens: --token-file holds one bootstrap token per line (one per node); with
 * --admin-config the process creates them itself through the TokenService.
 *
 * Standard output carries one JSON object per line and nothing else (logs go to stderr):
 *   {"type":"node","name":…,"atMs":…,"startMs":…}     startAgent returned
 *   {"type":"ack","name":…,"atMs":…,"first":true}     the coordinator answered the hello
 *   {"type":"nodeFailed","name":…,"message":…}
 *   {"type":"started","started":N,"failed":N,"atMs":…} every node has started or failed
 *   {"type":"running","replicas":[[node,replicaId,namespace,workload,atMs],…]}  batched
 *   {"type":"faulted","kind":"kill"|"silence"|"resume","nodes":[…],"atMs":…}
 *   {"type":"stats",…}  {"type":"stopped"}
 *   {"type":"error","message":…,"kind"?:"uncaughtException"|"unhandledRejection"} — the
 *     latter two would have crashed a real agent; the process reports them and goes on
 * Standard input takes one JSON command per line:
 *   {"cmd":"kill","nodes":[…]}  {"cmd":"silence","nodes":[…]}  {"cmd":"resume","nodes":[…]}
 *   {"cmd":"stats"}  {"cmd":"stop"}
 * The process stops its nodes (without leaving) and exits on "stop", when standard input
 * closes (its parent went away) and on SIGINT/SIGTERM. A data root it created is removed.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { loadClientConfig } from "../client/config.js";
import { createClients, createCoordinatorTransport } from "../client/transport.js";
import { createLogger, isLogLevel } from "../observe/logger.js";
import { defaultHollowCapacity, HollowFleet } from "./hollowFleet.js";

export { FakeDriver } from "../agent/drivers/fakeDriver.js";
export { FaultSwitch } from "./faultSwitch.js";
export { HollowFleet, type HollowFleetOptions, type HollowListener } from "./hollowFleet.js";

const usage =
  "usage: node dist/sim/hollowNodes.js --join URL (--token-file F | --admin-config F) --count N [options]";

/** Creates `count` one-time bootstrap tokens through the admin API, `batch` at a time. */
export async function createTokens(
  adminConfigPath: string,
  count: number,
  options: { ttlSeconds?: number; batch?: number; description?: string } = {},
): Promise<string[]> {
  const config = await loadClientConfig(adminConfigPath);
  const clients = createClients(
    createCoordinatorTransport({
      baseUrl: config.servers[0]!,
      clusterName: config.clusterName,
      caPem: config.caPem,
      certPem: config.certPem,
      keyPem: config.keyPem,
      timeoutMs: 60_000,
    }),
  );
  const tokens: string[] = [];
  const batch = Math.max(1, options.batch ?? 50);
  for (let done = 0; done < count; done += batch) {
    const size = Math.min(batch, count - done);
    const created = await Promise.all(
      Array.from({ length: size }, () =>
        clients.tokens.createToken({
          ttlSeconds: options.ttlSeconds ?? 3600,
          description: options.description ?? "hollow node",
        }),
      ),
    );
    for (const response of created) tokens.push(response.token);
  }
  return tokens;
}

/** Once its parent is gone (standard input closed), the process exits within this long. */
const orphanExitMs = 5_000;
/** A hollow process's event loop late by this much is reported as a stall. */
const stallReportMs = 500;

function emit(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function intFlag(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const number = Number(value);
  if (!Number.isFinite(number) || number < 0) throw new Error(`--${name} ${value}: not a number`);
  return number;
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      join: { type: "string" },
      "token-file": { type: "string" },
      "admin-config": { type: "string" },
      count: { type: "string" },
      prefix: { type: "string", default: "hollow" },
      "first-index": { type: "string" },
      zones: { type: "string" },
      region: { type: "string" },
      "data-root": { type: "string" },
      "start-delay-ms": { type: "string" },
      concurrency: { type: "string" },
      "replica-start-ms": { type: "string" },
      "cpu-millicores": { type: "string" },
      "memory-mib": { type: "string" },
      "storage-gib": { type: "string" },
      "egress-mbps": { type: "string" },
      "log-level": { type: "string", default: "warn" },
      help: { type: "boolean" },
    },
  });
  if (values.help || !values.join || !values.count) {
    process.stderr.write(`${usage}\n`);
    process.exitCode = values.help ? 0 : 2;
    return;
  }
  const count = intFlag("count", values.count, 0);
  const level = values["log-level"] ?? "warn";
  if (!isLogLevel(level)) throw new Error(`--log-level ${level}: unknown level`);
  const logger = createLogger({ component: "hollow", level, destination: process.stderr });

  let tokens: string[] = [];
  if (values["token-file"]) {
    tokens = (await readFile(values["token-file"], "utf8"))
      .split("\n")
      .map((line) => line.trim())
      .filter((line) => line.length > 0);
  } else if (values["admin-config"]) {
    tokens = await createTokens(values["admin-config"], count);
  }

  const ownRoot = values["data-root"] === undefined;
  const dataRoot = values["data-root"] ?? (await mkdtemp(path.join(tmpdir(), "cloudless-hollow-")));

  let running: [string, string, string, string, number][] = [];
  const flushRunning = () => {
    if (running.length === 0) return;
    emit({ type: "running", replicas: running });
    running = [];
  };
  // The simulator's own stalls (GC, CPU starvation on a loaded machine) delay every one of
  // its nodes' heartbeats: reported, so that the benchmark can tell a coordinator's false
  // verdict from a late heartbeat the simulator never sent in time.
  const tickMs = 100;
  let lastTickAtMs = Date.now();
  const flushTimer = setInterval(() => {
    const nowMs = Date.now();
    const lateMs = nowMs - lastTickAtMs - tickMs;
    lastTickAtMs = nowMs;
    if (lateMs >= stallReportMs) emit({ type: "stall", atMs: nowMs, durationMs: lateMs });
    flushRunning();
  }, tickMs);

  const fleet = new HollowFleet({
    joinUrl: values.join,
    tokens,
    count,
    prefix: values.prefix ?? "hollow",
    firstIndex: intFlag("first-index", values["first-index"], 0),
    zones: values.zones ? values.zones.split(",").filter((zone) => zone.length > 0) : [],
    ...(values.region ? { region: values.region } : {}),
    dataRoot,
    startDelayMs: intFlag("start-delay-ms", values["start-delay-ms"], 0),
    concurrency: intFlag("concurrency", values.concurrency, 32),
    replicaStartMs: intFlag("replica-start-ms", values["replica-start-ms"], 200),
    capacity: {
      cpuMillicores: intFlag(
        "cpu-millicores",
        values["cpu-millicores"],
        defaultHollowCapacity.cpuMillicores,
      ),
      memoryMiB: intFlag("memory-mib", values["memory-mib"], defaultHollowCapacity.memoryMiB),
      storageGiB: intFlag("storage-gib", values["storage-gib"], defaultHollowCapacity.storageGiB),
      egressMbps: intFlag("egress-mbps", values["egress-mbps"], defaultHollowCapacity.egressMbps),
    },
    logger,
    listener: {
      nodeStarted: (name, atMs, startMs) => emit({ type: "node", name, atMs, startMs }),
      nodeFailed: (name, message) => emit({ type: "nodeFailed", name, message }),
      heartbeatAck: (name, atMs, first) => emit({ type: "ack", name, atMs, first }),
      replicaRunning: (event) => {
        running.push([event.node, event.replicaId, event.namespace, event.workload, event.atMs]);
        if (running.length >= 2000) flushRunning();
      },
    },
  });

  // What would crash one real agent must not take thousands of hollow nodes down with it:
  // it is reported (and logged) instead, so the benchmark can count it. Such an error is a
  // finding — a real agent process would have exited.
  const report = (kind: "unhandledRejection" | "uncaughtException", error: unknown) => {
    const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
    logger.error({ err: message }, `${kind} in a hollow node`);
    emit({ type: "error", kind, message: message.slice(0, 1000) });
  };
  process.on("unhandledRejection", (reason) => report("unhandledRejection", reason));
  process.on("uncaughtException", (error) => report("uncaughtException", error));

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      await fleet.stop();
      clearInterval(flushTimer);
      flushRunning();
      if (ownRoot) await rm(dataRoot, { recursive: true, force: true }).catch(() => undefined);
      emit({ type: "stopped" });
    })();
    return stopping;
  };
  process.once("SIGINT", () => void stop().then(() => process.exit(0)));
  process.once("SIGTERM", () => void stop().then(() => process.exit(0)));

  const input = createInterface({ input: process.stdin });
  input.on("line", (line) => {
    if (line.trim() === "") return;
    let command: { cmd?: string; nodes?: string[] };
    try {
      command = JSON.parse(line) as typeof command;
    } catch {
      emit({ type: "error", message: `not JSON: ${line.slice(0, 100)}` });
      return;
    }
    const atMs = Date.now();
    switch (command.cmd) {
      case "kill":
        emit({ type: "faulted", kind: "kill", nodes: fleet.kill(command.nodes ?? []), atMs });
        break;
      case "silence":
        emit({ type: "faulted", kind: "silence", nodes: fleet.silence(command.nodes ?? []), atMs });
        break;
      case "resume":
        emit({
          type: "faulted",
          kind: "resume",
          nodes: fleet.silence(command.nodes ?? [], false),
          atMs,
        });
        break;
      case "stats": {
        const memory = process.memoryUsage();
        emit({
          type: "stats",
          atMs,
          ...fleet.counts(),
          rssMiB: Math.round(memory.rss / 2 ** 20),
          heapUsedMiB: Math.round(memory.heapUsed / 2 ** 20),
        });
        break;
      }
      case "stop":
        void stop().then(() => process.exit(0));
        break;
      default:
        emit({ type: "error", message: `unknown command ${String(command.cmd)}` });
    }
  });
  // The parent went away: nothing will ever stop us otherwise. Stopping nodes that are
  // still joining a coordinator that went away with the parent can take long; an orphan
  // keeps the machine busy for whatever runs next, so it has a few seconds.
  input.on("close", () => {
    setTimeout(() => process.exit(0), orphanExitMs).unref();
    void stop().then(() => process.exit(0));
  });

  const result = await fleet.start();
  emit({ type: "started", ...result, atMs: Date.now() });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    emit({ type: "error", message: error instanceof Error ? error.message : String(error) });
    process.stderr.write(`hollow nodes: ${error instanceof Error ? error.message : error}\n`);
    process.exit(1);
  });
}

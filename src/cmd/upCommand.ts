import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, createWriteStream, openSync } from "node:fs";
import { access, chmod, mkdir, stat } from "node:fs/promises";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { type BackoffPolicy, backoffDelay, formatDelay } from "../agent/supervisor/backoff.js";
import { CloudlessError } from "../api/errors.js";
import { keepRunningWhenOutputCloses } from "../cli/exit.js";
import { action } from "../cli/run.js";
import { defaultDataDir } from "../client/config.js";
import type { Coordinator } from "../control/coordinator.js";
import { describeHolder, readLockHolder } from "../lib/pidLock.js";
import { systemRng } from "../lib/rng.js";
import { handleStopSignals } from "../lib/signals.js";
import { shutdownTracing } from "../observe/tracing.js";
import {
  addCoordinatorFlags,
  type CoordinatorFlags,
  coordinatorFromFlags,
} from "./daemonCommands.js";
import { defaultListenHost, joinInstructions } from "./listen.js";
import { type ContainerEngine, deploySample, findOrStartEngine, sampleImage } from "./sample.js";

const binPath = fileURLToPath(new URL("../../bin/cloudless", import.meta.url));
const readyTimeoutMs = 60_000;
/**
 * How long `up` waits for the local agent of an earlier `up` (killed with -9) to finish
 * stopping its replicas: it notices at once, but a workload's grace period may be long.
 */
const previousAgentTimeoutMs = 60_000;
/**
 * After the second signal the agent kills its replicas and has only bounded steps
 * left; this is the safety net for an agent that is stuck regardless.
 */
const hurriedAgentStopMs = 30_000;
/** Local agent restarts back off from 1 s to 30 s (jittered); a run of a minute starts over. */
const agentRestartBackoff: BackoffPolicy = {
  initialMs: 1_000,
  maxMs: 30_000,
  resetAfterMs: 60_000,
};

/** One line of progress on stderr: what is happening, then how long it took. */
async function step<T>(label: string, work: () => Promise<T>): Promise<T> {
  const startedMs = performance.now();
  process.stderr.write(`• ${label} … `);
  try {
    const result = await work();
    process.stderr.write(`done (${Math.round(performance.now() - startedMs)} ms)\n`);
    return result;
  } catch (error) {
    const cancelled =
      error instanceof StartCancelled || (error instanceof Error && error.name === "AbortError");
    process.stderr.write(cancelled ? "stopped\n" : "failed\n");
    throw error;
  }
}

/** `up` was asked to stop while it was still starting. */
class StartCancelled extends Error {}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `probe` until it returns a value, the deadline passes (undefined), or `cancel` aborts. */
async function poll<T>(
  probe: () => Promise<T | undefined>,
  timeoutMs: number,
  intervalMs: number,
  cancel: AbortSignal,
): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (cancel.aborted) throw new StartCancelled();
    const value = await probe();
    if (value !== undefined) return value;
    await sleep(intervalMs);
  }
  return undefined;
}

/**
 * The local agent, a child of `up` in its own process group (so a terminal's Ctrl-C
 * reaches it only through `up`) with an IPC channel (so it stops by itself when `up`
 * dies without stopping it: kill -9, OOM). Its output goes straight to agent.log,
 * which stays writable whatever happens to `up`. Restarted with back-off when it exits
 * unasked; stopped with SIGTERM, a graceful leave that stops its replicas (ADR 0013).
 */
class LocalAgent {
  private child: ChildProcess | undefined;
  private stopping = false;
  private failures = 0;
  private restartTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly args: string[],
    private env: NodeJS.ProcessEnv,
    private readonly logPath: string,
  ) {}

  start(): void {
    const logFd = openSync(this.logPath, "a", 0o600);
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, this.args, {
        env: this.env,
        stdio: ["ignore", logFd, logFd, "ipc"],
        detached: true,
      });
    } finally {
      closeSync(logFd);
    }
    // The token (if any) was for the first start: the agent keeps its identity after it.
    const { CLOUDLESS_TOKEN: _token, ...rest } = this.env;
    this.env = rest;
    const startedAtMs = Date.now();
    this.child = child;
    child.on("error", () => undefined); // reported by the exit that follows
    child.once("exit", (code, signal) => this.onExit(code, signal, startedAtMs));
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null, startedAtMs: number): void {
    if (this.stopping) return;
    if (Date.now() - startedAtMs >= agentRestartBackoff.resetAfterMs) this.failures = 0;
    this.failures += 1;
    const { delayMs } = backoffDelay(agentRestartBackoff, this.failures, systemRng);
    process.stderr.write(
      `! local agent exited (${code !== null ? `code ${code}` : signal}); restarting in ${formatDelay(delayMs)} — see ${this.logPath}\n`,
    );
    this.restartTimer = setTimeout(() => {
      if (!this.stopping) this.start();
    }, delayMs);
  }

  /**
   * Stops the agent and waits until it has left (its replicas stopped and removed).
   * A hurry (second signal) is passed on as a second SIGTERM: the agent then kills its
   * replicas at once. Only an agent still there long after that is killed.
   */
  async stop(
    hurry: AbortSignal,
  ): Promise<{ outcome: "stopped" | "killed"; code: number | null } | { outcome: "not running" }> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      return { outcome: "not running" };
    }
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    let killTimer: NodeJS.Timeout | undefined;
    let killed = false;
    const onHurry = () => {
      child.kill("SIGTERM");
      killTimer = setTimeout(() => {
        killed = true;
        child.kill("SIGKILL");
      }, hurriedAgentStopMs);
    };
    if (hurry.aborted) onHurry();
    else hurry.addEventListener("abort", onHurry, { once: true });
    const code = await exited;
    hurry.removeEventListener("abort", onHurry);
    clearTimeout(killTimer);
    return { outcome: killed ? "killed" : "stopped", code };
  }
}

export function registerUpCommand(program: Command): void {
  addCoordinatorFlags(
    program
      .command("up")
      .description("start a single-node cluster: a coordinator and a local agent"),
    { dataDir: defaultDataDir(), host: defaultListenHost.up },
  )
    .option("--node-name <name>", "name of the local node (default: the host name)")
    .option("--no-sample", "do not deploy the sample web workload")
    .action(
      action(async (flags: CoordinatorFlags & { nodeName?: string; sample: boolean }) => {
        keepRunningWhenOutputCloses();
        // Installed before anything starts, and never removed (ADR 0028): a signal at
        // any point stops what has started so far, a second one stops it faster.
        const stop = handleStopSignals({
          hurryEffect: "the local agent kills its replicas without the rest of their grace period",
        });
        const cancel = new AbortController();
        void stop.requested.then(() => cancel.abort());
        const dataDir = path.resolve(flags.dataDir);
        const logDir = path.join(dataDir, "logs");
        await mkdir(logDir, { recursive: true, mode: 0o700 });
        const coordinatorLog = createWriteStream(path.join(logDir, "coordinator.log"), {
          flags: "a",
          mode: 0o600,
        });
        const run: UpRun = {
          flags,
          dataDir,
          logDir,
          agentLog: path.join(logDir, "agent.log"),
          coordinatorLog,
          started: {},
        };
        let failure: unknown;
        try {
          await startCluster(run, cancel.signal);
          await stop.requested;
        } catch (error) {
          if (!(error instanceof StartCancelled)) failure = error;
        }
        await stopCluster(run, stop.hurry).catch((error: unknown) => {
          failure ??= error;
        });
        if (failure) throw failure;
      }),
    );
}

/** One run of `up`: its settings, and what it has started so far (to stop it again). */
interface UpRun {
  flags: CoordinatorFlags & { nodeName?: string; sample: boolean };
  dataDir: string;
  logDir: string;
  agentLog: string;
  coordinatorLog: NodeJS.WritableStream;
  started: { coordinator?: Coordinator; engine?: ContainerEngine; agent?: LocalAgent };
}

async function startCluster(run: UpRun, cancel: AbortSignal): Promise<void> {
  const { flags, dataDir, logDir, agentLog, coordinatorLog, started } = run;
  const checkCancelled = () => {
    if (cancel.aborted) throw new StartCancelled();
  };
  const coordinator = await step(`starting coordinator (data dir ${dataDir})`, () =>
    coordinatorFromFlags({ ...flags, dataDir }, coordinatorLog),
  );
  started.coordinator = coordinator;
  checkCancelled();
  const agentDir = path.join(dataDir, "agent");
  const enrolled = await access(path.join(agentDir, "identity.json")).then(
    () => true,
    () => false,
  );
  let token: string | undefined;
  if (!enrolled) {
    token = await step("creating a bootstrap token for the local agent", async () => {
      const created = await coordinator.services.tokens.create({
        ttlMs: 10 * 60_000,
        description: "local agent of cloudless up",
        createdBy: "admin/up",
      });
      return created.token;
    });
  }
  const engine = await step("looking for a container engine (Docker or Podman)", () =>
    findOrStartEngine(dataDir),
  );
  started.engine = engine;
  process.stderr.write(
    engine
      ? `  using ${engine.socketPath}${engine.service ? ` (Podman API service ${engine.service.reused ? "left by an earlier up, reused" : "started by up"})` : ""}\n`
      : "  none found: workloads run as processes\n",
  );
  checkCancelled();
  // The agent of an earlier `up` that was killed (-9) stops by itself when it notices;
  // wait for it rather than fail on its lock.
  const lockPath = path.join(agentDir, "agent.lock");
  const previous = await readLockHolder(lockPath);
  if (previous?.live && previous.holder) {
    const holder = describeHolder(previous.holder);
    await step(`waiting for the previous local agent (${holder}) to stop`, async () => {
      const gone = await poll(
        async () => ((await readLockHolder(lockPath))?.live ? undefined : true),
        previousAgentTimeoutMs,
        200,
        cancel,
      );
      if (!gone) {
        throw CloudlessError.unavailable(
          `agent data dir ${agentDir} is still in use by ${holder} after ${previousAgentTimeoutMs / 1000} s; stop it (kill ${previous.holder?.pid}) or use another --data-dir`,
        );
      }
    });
  }
  const args = [
    // The local agent's young generation never needs V8's default 16 MiB semi-spaces
    // (it allocates little after start): the smaller limit keeps ~30 MiB of idle RSS
    // off the single-node footprint (ADR 0021).
    "--max-semi-space-size=1",
    binPath,
    "agent",
    "--data-dir",
    agentDir,
    "--join",
    coordinator.url,
    "--log-level",
    flags.logLevel,
    // up restarts a crashed local agent: its replicas wait for it (ADR 0031).
    "--restart-grace",
    "30s",
    // A single node has no mesh peers: its mesh listens on loopback only, and mesh and
    // name server take free ports, so `up` never clashes with another agent's ports.
    "--mesh-host",
    "127.0.0.1",
    "--mesh-port",
    "0",
    "--dns-port",
    "0",
  ];
  if (flags.nodeName) args.push("--name", flags.nodeName);
  if (engine) args.push("--container-socket", engine.socketPath);
  // The local agent's process replicas run as their workloads' own users (REQ-062,
  // ADR 0050): they pass through this dir to their work dirs under agent/replicas (x
  // only: no listing; what it holds keeps its own 0700/0600), and it is hidden from them.
  const dataDirMode = (await stat(dataDir)).mode & 0o7777;
  if ((dataDirMode & 0o001) === 0) await chmod(dataDir, dataDirMode | 0o011);
  args.push("--sandbox-hide", dataDir);
  // The token travels in the environment, not argv, so `ps` does not show it.
  const agent = new LocalAgent(
    args,
    { ...(engine?.env ?? process.env), ...(token ? { CLOUDLESS_TOKEN: token } : {}) },
    agentLog,
  );
  agent.start();
  started.agent = agent;
  const node = await step("waiting for the local node to be Ready", async () => {
    // Ready and connected to this coordinator: after a kill -9 of the last `up` the store
    // still says Ready from before, until the startup grace ends.
    const ready = await poll(
      async () =>
        (await coordinator.services.nodes.list()).find(
          (n) =>
            n.status === "Ready" &&
            (coordinator.services.nodeStreams.get(n.name)?.size ?? 0) > 0 &&
            (!flags.nodeName || n.name === flags.nodeName),
        ),
      readyTimeoutMs,
      200,
      cancel,
    );
    if (!ready) {
      throw CloudlessError.unavailable(
        `the local agent did not become Ready within ${readyTimeoutMs / 1000} s; see ${agentLog}`,
      );
    }
    return ready;
  });
  const sample = flags.sample
    ? await step('deploying the sample web workload "hello"', () =>
        deploySample({
          configPath: coordinator.adminConfigPath,
          nodeDrivers: node.info.drivers,
          engine,
          timeoutMs: readyTimeoutMs,
          signal: cancel,
        }),
      ).catch((error: unknown) => {
        checkCancelled(); // stopped meanwhile: no complaint, just stop

        process.stderr.write(`! ${error instanceof Error ? error.message : String(error)}\n`);
        return undefined;
      })
    : undefined;
  checkCancelled();
  const cpu = (node.capacity.cpuMillicores / 1000).toFixed(1);
  process.stdout.write(
    [
      "",
      `Cluster "${coordinator.clusterName}" is up at ${coordinator.url}`,
      `  node ${node.name}: Ready, ${cpu} CPU, ${node.capacity.memoryMiB} MiB, ${node.capacity.storageGiB.toFixed(1)} GiB, drivers: ${node.info.drivers.join(", ") || "none"}`,
      ...(sample
        ? [
            `  sample workload "hello" (${sample.driver === "container" ? `container ${sampleImage}` : "process"}) answers at ${sample.url}`,
          ]
        : []),
      "",
      "In another shell:",
      `  export CLOUDLESS_CONFIG=${coordinator.adminConfigPath}`,
      "  ./bin/cloudless node list",
      "  ./bin/cloudless workload get hello",
      "  ./bin/cloudless events",
      ...joinInstructions(run.flags.host, coordinator.port),
      `Logs: ${logDir}   Stop: Ctrl-C (twice to stop faster; both leave nothing running)`,
      "",
    ].join("\n"),
  );
}

/**
 * Stops what `startCluster` started, in reverse: the agent first, waiting until it has
 * left and removed its replicas; then the coordinator; then the Podman service, only
 * once the containers are gone (the agent removes them through it).
 */
async function stopCluster(run: UpRun, hurry: AbortSignal): Promise<void> {
  const { started, agentLog, coordinatorLog } = run;
  if (started.coordinator || started.engine || started.agent) {
    process.stderr.write("• stopping local agent and coordinator …\n");
  }
  let failure: CloudlessError | undefined;
  if (started.agent) {
    const startedMs = performance.now();
    const stopped = await started.agent.stop(hurry);
    if (stopped.outcome === "killed") {
      failure = CloudlessError.unavailable(
        `the local agent did not stop within ${hurriedAgentStopMs / 1000} s of the second signal and was killed; its replicas may still run (see ${agentLog}); the next up removes them`,
      );
    } else if (stopped.outcome === "stopped" && stopped.code !== 0) {
      process.stderr.write(`! local agent exited with code ${stopped.code}; see ${agentLog}\n`);
    } else if (stopped.outcome === "stopped") {
      process.stderr.write(
        `  local agent stopped, its replicas with it (${Math.round(performance.now() - startedMs)} ms)\n`,
      );
    }
  }
  await started.coordinator?.stop();
  await shutdownTracing();
  const service = started.engine?.service;
  if (service) {
    await service.stop();
    process.stderr.write(`  Podman API service (pid ${service.pid}) stopped\n`);
  }
  await new Promise<void>((resolve) => coordinatorLog.end(resolve));
  if (failure) throw failure;
}

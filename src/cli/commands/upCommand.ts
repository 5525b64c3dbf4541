import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { access, mkdir } from "node:fs/promises";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { defaultDataDir } from "../../client/config.js";
import { CloudlessError } from "../../lib/errors.js";
import { shutdownTracing } from "../../observe/tracing.js";
import { defaultListenHost, joinInstructions } from "../listen.js";
import { action } from "../run.js";
import { deploySample, findOrStartEngine, sampleImage } from "../sample.js";
import {
  addCoordinatorFlags,
  type CoordinatorFlags,
  coordinatorFromFlags,
  waitForSignal,
} from "./daemonCommands.js";

const binPath = fileURLToPath(new URL("../../../bin/cloudless", import.meta.url));
const readyTimeoutMs = 60_000;

/** One line of progress on stderr: what is happening, then how long it took. */
async function step<T>(label: string, work: () => Promise<T>): Promise<T> {
  const startedMs = performance.now();
  process.stderr.write(`• ${label} … `);
  try {
    const result = await work();
    process.stderr.write(`done (${Math.round(performance.now() - startedMs)} ms)\n`);
    return result;
  } catch (error) {
    process.stderr.write("failed\n");
    throw error;
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
        const dataDir = path.resolve(flags.dataDir);
        const logDir = path.join(dataDir, "logs");
        await mkdir(logDir, { recursive: true, mode: 0o700 });
        const coordinatorLog = createWriteStream(path.join(logDir, "coordinator.log"), {
          flags: "a",
          mode: 0o600,
        });
        const coordinator = await step(`starting coordinator (data dir ${dataDir})`, () =>
          coordinatorFromFlags({ ...flags, dataDir }, coordinatorLog),
        );
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
        process.stderr.write(
          engine
            ? `  using ${engine.socketPath}${engine.service ? " (Podman API service started by up)" : ""}\n`
            : "  none found: workloads run as processes\n",
        );
        let stopping = false;
        let agentProcess: ChildProcess | undefined;
        const agentLog = path.join(logDir, "agent.log");
        const startLocalAgent = () => {
          const args = [
            // The local agent's young generation never needs V8's default 16 MiB
            // semi-spaces (it allocates little after start): the smaller limit keeps
            // ~30 MiB of idle RSS off the single-node footprint (ADR 0021).
            "--max-semi-space-size=1",
            binPath,
            "agent",
            "--data-dir",
            agentDir,
            "--join",
            coordinator.url,
            "--log-level",
            flags.logLevel,
          ];
          if (flags.nodeName) args.push("--name", flags.nodeName);
          if (engine) args.push("--container-socket", engine.socketPath);
          const out = createWriteStream(agentLog, { flags: "a", mode: 0o600 });
          // The token travels in the environment, not argv, so `ps` does not show it.
          const child = spawn(process.execPath, args, {
            env: { ...(engine?.env ?? process.env), ...(token ? { CLOUDLESS_TOKEN: token } : {}) },
            stdio: ["ignore", "pipe", "pipe"],
          });
          child.stdout?.pipe(out);
          child.stderr?.pipe(out);
          child.once("exit", (code) => {
            token = undefined;
            if (!stopping) {
              process.stderr.write(
                `! local agent exited (code ${code}); restarting in 2 s — see ${agentLog}\n`,
              );
              setTimeout(() => {
                if (!stopping) agentProcess = startLocalAgent();
              }, 2000).unref();
            }
          });
          return child;
        };
        agentProcess = startLocalAgent();
        const node = await step("waiting for the local node to be Ready", async () => {
          const deadline = Date.now() + readyTimeoutMs;
          while (Date.now() < deadline) {
            const nodes = await coordinator.services.nodes.list();
            const ready = nodes.find(
              (n) => n.status === "Ready" && (!flags.nodeName || n.name === flags.nodeName),
            );
            if (ready) return ready;
            await new Promise((resolve) => setTimeout(resolve, 200));
          }
          throw CloudlessError.unavailable(
            `the local agent did not become Ready within ${readyTimeoutMs / 1000} s; see ${agentLog}`,
          );
        });
        const sample = flags.sample
          ? await step('deploying the sample web workload "hello"', () =>
              deploySample({
                configPath: coordinator.adminConfigPath,
                nodeDrivers: node.info.drivers,
                engine,
                timeoutMs: readyTimeoutMs,
              }),
            ).catch((error: unknown) => {
              process.stderr.write(`! ${error instanceof Error ? error.message : String(error)}\n`);
              return undefined;
            })
          : undefined;
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
            ...joinInstructions(flags.host, coordinator.port),
            `Logs: ${logDir}   Stop: Ctrl-C`,
            "",
          ].join("\n"),
        );
        await waitForSignal();
        stopping = true;
        process.stderr.write("• stopping local agent and coordinator …\n");
        if (agentProcess && agentProcess.exitCode === null) {
          const exited = new Promise((resolve) => agentProcess?.once("exit", resolve));
          agentProcess.kill("SIGTERM");
          // The grace timer is cleared once the agent is gone, or it holds the process open.
          let graceTimer: NodeJS.Timeout | undefined;
          await Promise.race([
            exited,
            new Promise((resolve) => {
              graceTimer = setTimeout(resolve, 15_000);
            }),
          ]);
          clearTimeout(graceTimer);
          if (agentProcess.exitCode === null && agentProcess.signalCode === null)
            agentProcess.kill("SIGKILL");
        }
        await coordinator.stop();
        await shutdownTracing();
        engine?.service?.kill("SIGTERM");
        coordinatorLog.end();
      }),
    );
}

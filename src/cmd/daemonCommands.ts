import { readFile } from "node:fs/promises";
import * as path from "node:path";
import type { Command } from "commander";
import type { Agent } from "../agent/agent.js";
import { CloudlessError } from "../api/errors.js";
import { collect, splitLabel } from "../cli/commands/nodeCommands.js";
import { keepRunningWhenOutputCloses } from "../cli/exit.js";
import { action, fail } from "../cli/run.js";
import { cliVersion } from "../cli/version.js";
import { defaultDataDir } from "../client/config.js";
import type { Coordinator } from "../control/coordinator.js";
import { secretsKeyEnvVariable } from "../control/secrets/keyRing.js";
import {
  defaultClusterDomain,
  defaultServiceCidr,
  parseClusterDomain,
} from "../control/services/clusterDomain.js";
import {
  parseServiceCidr,
  serviceCidrPrefixMax,
  serviceCidrPrefixMin,
} from "../control/services/vipAllocator.js";
import { parseDurationMs } from "../lib/duration.js";
import { handleStopSignals, type StopRequests } from "../lib/signals.js";
import { createLogger, isLogLevel, type Logger } from "../observe/logger.js";
import { initTracing, shutdownTracing } from "../observe/tracing.js";
import { defaultListenHost } from "./listen.js";

export function parseLogLevel(value: string) {
  if (!isLogLevel(value))
    fail(`--log-level ${value}: use trace, debug, info, warn, error or silent`);
  return value;
}

export function parsePort(value: string): number {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    fail(`--port ${value}: expected a port number between 0 and 65535`);
  }
  return port;
}

function positiveNumber(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const number = Number(value);
  if (!Number.isFinite(number) || number <= 0) fail(`${flag} ${value}: expected a positive number`);
  return number;
}

function durationFlag(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = parseDurationMs(value);
  if (ms === undefined || ms <= 0)
    fail(`${flag} ${value}: expected a duration such as 500ms, 10s or 24h`);
  return ms;
}

/** Upper bound of --max-restart-grace and the agent's --restart-grace. */
const maxRestartGraceLimitMs = 24 * 3_600_000;
/** How soon an agent stopped with --on-stop restart promises to be back, without --restart-grace. */
const defaultPlannedRestartGraceMs = 30_000;

export interface CoordinatorFlags {
  dataDir: string;
  host: string;
  port: string;
  clusterName: string;
  san: string[];
  advertiseUrl?: string;
  heartbeatInterval?: string;
  phiSuspect?: string;
  phiLost?: string;
  streamLossGrace?: string;
  maxRestartGrace?: string;
  startupGrace?: string;
  nodeCertTtl?: string;
  store: string;
  clusterSecretFile?: string;
  secretsKeyFile?: string;
  leaderLease?: string;
  /** false with --no-rebalance. */
  rebalance: boolean;
  rebalanceCooldown?: string;
  serviceCidr?: string;
  clusterDomain?: string;
  logLevel: string;
}

export function addCoordinatorFlags(
  command: Command,
  defaults: { dataDir: string; host: string },
): Command {
  return command
    .option("--data-dir <dir>", "where the store, CA and admin config live", defaults.dataDir)
    .option(
      "--host <address>",
      "address to listen on: 0.0.0.0 for every interface (agents on other machines), 127.0.0.1 for this machine only",
      defaults.host,
    )
    .option("--port <port>", "port to listen on (gRPC and HTTP/JSON over mTLS)", "7443")
    .option("--cluster-name <name>", "cluster name (trust domain), set on first start", "cloudless")
    .option(
      "--san <name>",
      "extra DNS name or IP for the server certificate (repeatable)",
      collect,
      [],
    )
    .option("--advertise-url <url>", "URL written into admin.conf")
    .option("--heartbeat-interval <duration>", "how often agents heartbeat", "1s")
    .option("--phi-suspect <phi>", "phi at which a silent node becomes NotReady")
    .option("--phi-lost <phi>", "phi at which a NotReady node becomes Lost")
    .option(
      "--stream-loss-grace <duration>",
      "time a disconnected node has to reconnect before it is Lost",
    )
    .option(
      "--max-restart-grace <duration>",
      "longest restart grace an agent may ask for (agent --restart-grace, --on-stop restart) before its replicas are replaced",
      "10m",
    )
    .option(
      "--startup-grace <duration>",
      "time nodes get to reconnect after the coordinator starts",
    )
    .option(
      "--node-cert-ttl <duration>",
      "lifetime of node certificates (agents renew at 2/3)",
      "24h",
    )
    .option(
      "--store <url>",
      'cluster state: "sqlite" (DATA/store.db, one coordinator) or etcd://host1:2379,host2:2379 (several coordinators, one leads)',
      "sqlite",
    )
    .option(
      "--cluster-secret-file <path>",
      "with etcd: the secret sealing the cluster CA in the store (default DATA/cluster-secret; the first coordinator creates it)",
    )
    .option(
      "--secrets-key-file <path>",
      `keys that encrypt secrets, one base64 32-byte key per line, the first active (default: DATA/secrets-kek/, or ${secretsKeyEnvVariable}); give every coordinator the same file`,
    )
    .option(
      "--leader-lease <duration>",
      "with several coordinators: how long a dead leader keeps the role before another takes over",
      "5s",
    )
    .option(
      "--no-rebalance",
      "never move running replicas to restore their spread after a lost node or zone returns",
    )
    .option(
      "--rebalance-cooldown <duration>",
      "least time between two moves of one workload's replicas (1s to 24h)",
      "30s",
    )
    .option(
      "--service-cidr <cidr>",
      `IPv4 range services' virtual IPs come from, /${serviceCidrPrefixMin} to /${serviceCidrPrefixMax} (its .10 is the agents' DNS address)`,
      defaultServiceCidr,
    )
    .option(
      "--cluster-domain <domain>",
      "DNS domain of services: <name>.<namespace>.svc.<domain>",
      defaultClusterDomain,
    )
    .option("--log-level <level>", "trace, debug, info, warn, error or silent", "info");
}

export async function coordinatorFromFlags(
  flags: CoordinatorFlags,
  logDestination?: NodeJS.WritableStream,
): Promise<Coordinator> {
  const logger = createLogger({
    component: "coordinator",
    level: parseLogLevel(flags.logLevel),
    destination: logDestination,
  });
  // Traces only when OTEL_EXPORTER_OTLP_ENDPOINT (or …_TRACES_ENDPOINT) is set (REQ-070).
  await initTracing({
    serviceName: "cloudless-coordinator",
    version: cliVersion,
    logger: logger.child({ component: "tracing" }),
  });
  const membership: Record<string, number> = {};
  const interval = durationFlag("--heartbeat-interval", flags.heartbeatInterval);
  if (interval !== undefined) membership.heartbeatIntervalMs = interval;
  const phiSuspect = positiveNumber("--phi-suspect", flags.phiSuspect);
  if (phiSuspect !== undefined) membership.phiSuspect = phiSuspect;
  const phiLost = positiveNumber("--phi-lost", flags.phiLost);
  if (phiLost !== undefined) membership.phiLost = phiLost;
  const streamLoss = durationFlag("--stream-loss-grace", flags.streamLossGrace);
  if (streamLoss !== undefined) membership.streamLossGraceMs = streamLoss;
  const maxRestartGrace = durationFlag("--max-restart-grace", flags.maxRestartGrace);
  if (maxRestartGrace !== undefined) {
    // A day covers any upgrade; longer would let a dead node hold its replicas for days.
    if (maxRestartGrace > maxRestartGraceLimitMs) {
      fail(`--max-restart-grace ${flags.maxRestartGrace}: at most 24h`);
    }
    membership.maxRestartGraceMs = maxRestartGrace;
  }
  const startup = durationFlag("--startup-grace", flags.startupGrace);
  if (startup !== undefined) membership.startupGraceMs = startup;
  if (
    membership.phiSuspect !== undefined &&
    membership.phiLost !== undefined &&
    membership.phiLost <= membership.phiSuspect
  ) {
    fail("--phi-lost must be greater than --phi-suspect");
  }
  const leaderLeaseMs = durationFlag("--leader-lease", flags.leaderLease);
  if (leaderLeaseMs !== undefined && leaderLeaseMs < 1_000) {
    // etcd leases count whole seconds, and a shorter lease would change leaders on any pause.
    fail(`--leader-lease ${flags.leaderLease}: must be at least 1s`);
  }
  const rebalanceCooldownMs = durationFlag("--rebalance-cooldown", flags.rebalanceCooldown);
  // Below a second a workload could be moved every pass; above a day it never settles.
  if (
    rebalanceCooldownMs !== undefined &&
    (rebalanceCooldownMs < 1_000 || rebalanceCooldownMs > 24 * 3_600_000)
  ) {
    fail(`--rebalance-cooldown ${flags.rebalanceCooldown}: must be from 1s to 24h`);
  }
  const serviceCidr = networkFlag(
    () => parseServiceCidr(flags.serviceCidr ?? defaultServiceCidr).text,
    "--service-cidr",
  );
  const clusterDomain = networkFlag(
    () => parseClusterDomain(flags.clusterDomain ?? defaultClusterDomain),
    "--cluster-domain",
  );
  // Loaded here, not at the top: an agent process never loads the coordinator (idle memory).
  const secretsKeyEnv = takeSecretsKeyEnv();
  if (flags.secretsKeyFile !== undefined || secretsKeyEnv !== undefined) {
    // Checked before the data dir is touched: a typo in the keys must not create a cluster.
    const { checkKeySource } = await import("../control/secrets/secretsModule.js");
    await checkKeySource({
      dataDir: flags.dataDir,
      secretsKeyFile: flags.secretsKeyFile,
      secretsKeyEnv,
    });
  }
  const { startCoordinator } = await import("../control/coordinator.js");
  return startCoordinator({
    dataDir: flags.dataDir,
    host: flags.host,
    port: parsePort(flags.port),
    clusterName: flags.clusterName,
    subjectAltNames: flags.san,
    advertiseUrl: flags.advertiseUrl,
    membership,
    heartbeatEstimateMs: interval,
    nodeCertTtlMs: durationFlag("--node-cert-ttl", flags.nodeCertTtl),
    store: flags.store,
    clusterSecretFile: flags.clusterSecretFile,
    secretsKeyFile: flags.secretsKeyFile,
    secretsKeyEnv,
    leaderLeaseTtlMs: leaderLeaseMs,
    rebalance: {
      enabled: flags.rebalance !== false,
      ...(rebalanceCooldownMs !== undefined ? { cooldownMs: rebalanceCooldownMs } : {}),
    },
    serviceCidr,
    clusterDomain,
    logger,
  });
}

/**
 * The secrets keys from the environment, removed from it once read: replicas and tools this
 * process starts must not inherit them (ADR 0052).
 */
function takeSecretsKeyEnv(): string | undefined {
  const value = process.env[secretsKeyEnvVariable];
  delete process.env[secretsKeyEnvVariable];
  return value === undefined || value.trim() === "" ? undefined : value;
}

/** A network flag's value, or a one-line error naming the flag and what it expects. */
function networkFlag<T>(parse: () => T, flag: string): T {
  try {
    return parse();
  } catch (error) {
    return fail(`${flag}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

export function registerDaemonCommands(program: Command): void {
  addCoordinatorFlags(
    program.command("coordinator").description("run a coordinator (control plane)"),
    { dataDir: defaultDataDir(), host: defaultListenHost.coordinator },
  ).action(
    action(async (flags: CoordinatorFlags) => {
      keepRunningWhenOutputCloses();
      // Installed first: a signal during the start stops the coordinator once it is up.
      const stop = handleStopSignals({ hurryEffect: "its stop waits for nothing it could skip" });
      const coordinator = await coordinatorFromFlags(flags);
      process.stderr.write(
        `coordinator of cluster "${coordinator.clusterName}" listening on ${coordinator.url}\nadmin config: ${coordinator.adminConfigPath}\n`,
      );
      await stop.requested;
      await coordinator.stop();
      await shutdownTracing();
    }),
  );

  program
    .command("agent")
    .description("run a node agent: join a cluster (first run) and keep heartbeating")
    .option("--join <url>", "coordinator URL, e.g. https://10.0.0.1:7443 (repeatable)", collect, [])
    .option("--token <token>", "one-time bootstrap token (or CLOUDLESS_TOKEN, or --token-file)")
    .option("--token-file <file>", "read the bootstrap token from a file")
    .option("--name <name>", "node name (default: the host name)")
    .option("--region <region>", "region label of this node", "")
    .option("--zone <zone>", "zone label of this node", "")
    .option("--label <k=v>", "node label (repeatable)", collect, [])
    .option(
      "--taint <k=v:effect>",
      "node taint, effect NoSchedule or PreferNoSchedule (repeatable)",
      collect,
      [],
    )
    .option(
      "--container-socket <path>",
      "Docker or Podman API socket (default: $DOCKER_HOST, /var/run/docker.sock, /run/podman/podman.sock)",
    )
    .option(
      "--driver <name>",
      "only use this runtime driver: container or process (repeatable)",
      collect,
      [],
    )
    .option(
      "--data-dir <dir>",
      "where the agent keeps its identity and state",
      path.join(defaultDataDir(), "agent"),
    )
    .option(
      "--process-sandbox <mode>",
      "on: process replicas run as their workload's own user without privileges (setpriv, bwrap, seccomp; needs root); off: as the agent's user (development only)",
      "on",
    )
    .option(
      "--replica-uid-range <first-last>",
      "uids the workloads' users of process replicas are taken from",
      "61184-65519",
    )
    .option(
      "--sandbox-hide <dir>",
      "a directory process replicas must not see, besides the agent's data dir (repeatable; e.g. a coordinator's data dir on this host)",
      collect,
      [],
    )
    .option("--cpu-millicores <n>", "override measured CPU")
    .option("--memory-mib <n>", "override measured memory")
    .option("--storage-gib <n>", "override measured storage")
    .option("--egress-mbps <n>", "configure egress bandwidth instead of measuring it")
    .option(
      "--metrics-port <port>",
      "serve Prometheus metrics on this port over mutual TLS (cluster certificates only); 0 picks a free port; off by default",
    )
    .option("--metrics-host <address>", "address for --metrics-port", "127.0.0.1")
    .option(
      "--mesh-port <port>",
      "port of the encrypted service mesh between agents (mutual TLS, cluster certificates only); 0 picks a free port",
      "7444",
    )
    .option("--mesh-host <address>", "address the mesh listens on", "0.0.0.0")
    .option(
      "--advertise-address <ip>",
      "an address other nodes can dial this node's mesh on (repeatable; the coordinator adds the one it sees)",
      collect,
      [],
    )
    .option("--relay", "relay mesh traffic for nodes behind NAT (they cannot be dialled)", false)
    .option(
      "--service-vips <mode>",
      "send service virtual IPs to this node's proxy with nftables: auto (when this host can), on (fail if it cannot) or off",
      "auto",
    )
    .option(
      "--dns-port <port>",
      "port of the agent's name server on 127.0.0.1 (the DNS VIP forwards to it); 0 picks a free port",
      "10053",
    )
    .option(
      "--restart-grace <duration>",
      "how long the coordinator keeps this node's replicas when the agent dies and comes back (default: the coordinator's --stream-loss-grace, fast failover)",
    )
    .option(
      "--on-stop <action>",
      "on SIGINT/SIGTERM: leave (stop the replicas, they move elsewhere) or restart (keep them running; back within --restart-grace, default 30s)",
      "leave",
    )
    .option("--log-level <level>", "trace, debug, info, warn, error or silent", "info")
    .action(
      action(
        async (flags: {
          join: string[];
          token?: string;
          tokenFile?: string;
          name?: string;
          region: string;
          zone: string;
          label: string[];
          taint: string[];
          containerSocket?: string;
          driver: string[];
          dataDir: string;
          processSandbox: string;
          replicaUidRange: string;
          sandboxHide: string[];
          cpuMillicores?: string;
          memoryMib?: string;
          storageGib?: string;
          egressMbps?: string;
          metricsPort?: string;
          metricsHost: string;
          meshPort: string;
          meshHost: string;
          advertiseAddress: string[];
          relay: boolean;
          serviceVips: string;
          dnsPort: string;
          restartGrace?: string;
          onStop: string;
          logLevel: string;
        }) => {
          keepRunningWhenOutputCloses();
          const logger = createLogger({ component: "agent", level: parseLogLevel(flags.logLevel) });
          // Installed before anything starts: a signal during the start (enrollment, the
          // capacity measurement) stops the agent as soon as it runs, never halfway.
          const stop = handleStopSignals({
            hurryEffect:
              "no leave acknowledgement awaited; replicas are killed without the rest of their grace period",
            notice: (line) => logger.warn(line),
          });
          watchParent(stop, logger);
          // Loaded here, not at the top: a coordinator process never loads the agent.
          const { agentVersion, startAgent } = await import("../agent/agent.js");
          const { parseNetworkFlags } = await import("../agent/network/networkComponents.js");
          let network: ReturnType<typeof parseNetworkFlags>;
          try {
            network = parseNetworkFlags(flags);
          } catch (error) {
            fail((error as Error).message);
          }
          // The node name is known once the agent has its identity; spans wait for it.
          let nameNode: (name: string | undefined) => void = () => undefined;
          await initTracing({
            serviceName: "cloudless-agent",
            version: agentVersion,
            node: new Promise<string | undefined>((resolve) => {
              nameNode = resolve;
            }),
            logger: logger.child({ component: "tracing" }),
          });
          for (const url of flags.join) {
            if (!/^https:\/\/[^/]+/.test(url))
              fail(`--join ${url}: expected an https:// URL such as https://10.0.0.1:7443`);
          }
          let token = flags.token ?? process.env.CLOUDLESS_TOKEN;
          if (flags.tokenFile) {
            token = (
              await readFile(flags.tokenFile, "utf8").catch(() =>
                fail(`--token-file ${flags.tokenFile}: cannot read it`),
              )
            ).trim();
          }
          let metricsListener: { host: string; port: number } | undefined;
          if (flags.metricsPort !== undefined) {
            const port = Number(flags.metricsPort);
            if (!Number.isInteger(port) || port < 0 || port > 65_535) {
              fail(
                `--metrics-port ${flags.metricsPort}: expected a port number between 0 and 65535`,
              );
            }
            metricsListener = { host: flags.metricsHost, port };
          }
          if (flags.processSandbox !== "on" && flags.processSandbox !== "off") {
            fail(`--process-sandbox ${flags.processSandbox}: expected on or off`);
          }
          const { parseUidRange } = await import("../agent/sandbox/dynamicUsers.js");
          let replicaUidRange: ReturnType<typeof parseUidRange>;
          try {
            replicaUidRange = parseUidRange(flags.replicaUidRange);
          } catch (error) {
            fail((error as Error).message);
          }
          const restartGraceMs = durationFlag("--restart-grace", flags.restartGrace);
          if (restartGraceMs !== undefined && restartGraceMs > maxRestartGraceLimitMs) {
            fail(`--restart-grace ${flags.restartGrace}: at most 24h`);
          }
          if (flags.onStop !== "leave" && flags.onStop !== "restart") {
            fail(`--on-stop ${flags.onStop}: expected leave or restart`);
          }
          // A planned restart promises to be back within the restart grace, 30 s by default.
          const stopOptions =
            flags.onStop === "restart"
              ? { leave: true, restartWithinMs: restartGraceMs ?? defaultPlannedRestartGraceMs }
              : { leave: true };
          const overrides = {
            ...(flags.cpuMillicores !== undefined
              ? { cpuMillicores: Number(flags.cpuMillicores) }
              : {}),
            ...(flags.memoryMib !== undefined ? { memoryMiB: Number(flags.memoryMib) } : {}),
            ...(flags.storageGib !== undefined ? { storageGiB: Number(flags.storageGib) } : {}),
            ...(flags.egressMbps !== undefined ? { egressMbps: Number(flags.egressMbps) } : {}),
          };
          let agent: Agent;
          try {
            agent = await startAgent({
              dataDir: flags.dataDir,
              joinUrls: flags.join,
              token,
              name: flags.name,
              region: flags.region,
              zone: flags.zone,
              labels: Object.fromEntries(flags.label.map(splitLabel)),
              taints: flags.taint.map(parseTaint),
              ...(flags.containerSocket ? { containerSocket: flags.containerSocket } : {}),
              ...(flags.driver.length > 0 ? { drivers: flags.driver.map(parseDriver) } : {}),
              processSandbox: flags.processSandbox,
              replicaUidRange,
              sandboxHiddenDirs: flags.sandboxHide.map((dir) => path.resolve(dir)),
              overrides,
              ...(metricsListener ? { metricsListener } : {}),
              ...(restartGraceMs !== undefined ? { restartGraceMs } : {}),
              network,
              logger,
            });
          } catch (error) {
            nameNode(undefined);
            await shutdownTracing(1_000);
            if (error instanceof CloudlessError) throw error;
            throw CloudlessError.invalid(error instanceof Error ? error.message : String(error));
          }
          nameNode(agent.nodeName);
          process.stderr.write(`agent running as node "${agent.nodeName}"\n`);
          if (agent.metricsUrl) process.stderr.write(`metrics listening on ${agent.metricsUrl}\n`);
          // connect-node can raise an HTTP/2 session error (e.g. "PING timed out" when the
          // coordinator stalls) outside any call; the agent reconnects by itself, so such
          // an error must not end the process and with it every replica's supervision.
          process.on("uncaughtException", (error: unknown) => {
            if (isTransportError(error)) {
              logger.warn(
                { err: error.message },
                "connection to the coordinator failed; reconnecting",
              );
              return;
            }
            process.stderr.write(`error: ${(error as Error).message ?? String(error)}\n`);
            process.exit(1);
          });
          // Timers inside the agent do not hold the process open; this does, until it stops.
          const keepAlive = setInterval(() => undefined, 1 << 30);
          const exit = await Promise.race([
            agent.done,
            stop.requested.then((reason) => {
              logger.info(
                { reason },
                stopOptions.restartWithinMs !== undefined
                  ? "stopping for a restart: the replicas keep running"
                  : "leaving the cluster: stopping the replicas",
              );
              return agent.stop({ ...stopOptions, hurry: stop.hurry });
            }),
          ]);
          clearInterval(keepAlive);
          await shutdownTracing();
          if (exit.code !== 0) {
            process.stderr.write(`error: ${exit.message}\n`);
            process.exit(exit.code);
          }
          process.exit(0);
        },
      ),
    );
}

function parseTaint(text: string): {
  key: string;
  value: string;
  effect: "NoSchedule" | "PreferNoSchedule";
} {
  const match = /^([^=:]+)(?:=([^:]*))?:(NoSchedule|PreferNoSchedule)$/.exec(text);
  if (!match) {
    fail(`--taint ${text}: expected key=value:NoSchedule or key=value:PreferNoSchedule`);
  }
  return {
    key: match[1] as string,
    value: match[2] ?? "",
    effect: match[3] as "NoSchedule" | "PreferNoSchedule",
  };
}

function parseDriver(text: string): "container" | "process" {
  if (text !== "container" && text !== "process") {
    fail(`--driver ${text}: expected container or process`);
  }
  return text;
}

/** Errors of the HTTP/2 connection to the coordinator, which the agent recovers from. */
export function isTransportError(error: unknown): error is Error {
  if (!(error instanceof Error)) return false;
  const code = (error as NodeJS.ErrnoException).code ?? "";
  return (
    error.name === "ConnectError" ||
    /^(ERR_HTTP2_|ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT)/.test(code) ||
    /PING timed out|http\/2|HTTP2/i.test(error.message)
  );
}

/**
 * An agent started with an IPC channel (as `cloudless up` starts its local agent) stops
 * when the channel closes: its parent is gone, killed (-9) or out of memory, and nobody
 * else will ever stop it (ADR 0028). The replicas go with it, as on a graceful leave;
 * the next `up` starts them again. Standalone agents have no channel and are unaffected.
 */
function watchParent(stop: StopRequests, logger: Logger): void {
  const channel = process.channel;
  if (!channel) return;
  // The channel must not keep the agent alive by itself.
  channel.unref();
  const parentGone = () => {
    logger.warn("the parent process is gone (its IPC channel closed); stopping");
    stop.request("parent process gone");
  };
  if (!process.connected) parentGone();
  else process.once("disconnect", parentGone);
}

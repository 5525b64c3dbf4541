/**
 * The supervisor's side of a replica's probes (REQ-032): the liveness and readiness
 * runners of one run, pointed at the replica's host ports, and each http/tcp probe of
 * this node judged by who holds its port (ADR 0032). The runners and the probe itself
 * live in ../probes/; what a verdict does to the replica (restart it, move it off a
 * port, gate its readiness) is the supervisor's, told through callbacks.
 */
import type { Clock } from "../../lib/clock.js";
import type { Logger } from "../../observe/logger.js";
import type { PortOwner } from "../drivers/driver.js";
import { ProbeRunner } from "../probes/probeRunner.js";
import type {
  ProbeAction,
  ProbeExec,
  ProbeFunction,
  ProbeKind,
  ProbeResult,
  ProbeSpec,
} from "../probes/probeTypes.js";
import { resolveProbeAction } from "./replicaPorts.js";
import type { DesiredReplica } from "./supervisorTypes.js";

/** The port an http or tcp probe connects to on this node; undefined for exec or a remote host. */
export function localProbePort(action: ProbeAction): number | undefined {
  const target = "http" in action ? action.http : "tcp" in action ? action.tcp : undefined;
  if (!target) return undefined;
  const host = target.host;
  if (host !== undefined && !["127.0.0.1", "localhost", "::1", "[::1]"].includes(host)) {
    return undefined;
  }
  return target.port;
}

/** A probe's result once the driver has said who answers on its port. */
export interface ProbeVerdict {
  result: ProbeResult;
  /** Set when something other than the replica holds the port: what holds it. */
  foreignHolder?: string;
}

/**
 * Judges a probe by who answered (REQ-032: a replica never passes on another's
 * listener). Something else on the port fails the probe whatever it answered; a
 * success with nothing listening any more is not proof either; the replica's own
 * listener leaves the result as it is. Pure.
 */
export function judgeProbe(
  result: ProbeResult,
  owner: PortOwner | { kind: "unknown"; reason: string },
  port: number,
): ProbeVerdict {
  switch (owner.kind) {
    case "replica":
      return { result };
    case "other":
      return {
        result: {
          ok: false,
          message: `port ${port} is held by ${owner.holder}, not by this replica`,
        },
        foreignHolder: owner.holder,
      };
    case "nobody":
      return result.ok
        ? { result: { ok: false, message: `nothing of this replica listens on port ${port}` } }
        : { result };
    case "unknown":
      return {
        result: {
          ok: false,
          message: `cannot tell who listens on port ${port}: ${owner.reason}`,
        },
      };
  }
}

/** Asks the replica's driver who holds a host port, within `timeoutMs`. */
export type PortOwnerLookup = (port: number, timeoutMs: number) => Promise<PortOwner>;

/**
 * `probe`, then — for an http or tcp probe of this node — the driver's word on who
 * holds the port, so a probe answered by another replica or program fails and says by
 * whom; `onForeignHolder` hears of it. A refused probe asks nobody: no listener took
 * the connection, so there is no one to identify (the usual answer while a replica
 * starts; it spares the check its cost). Without a lookup the probe is trusted as is.
 */
export function probeWithPortOwnership(
  probe: ProbeFunction,
  portOwner: PortOwnerLookup | undefined,
  onForeignHolder: (port: number, holder: string) => void,
): ProbeFunction {
  if (!portOwner) return probe;
  return async (action, options) => {
    const result = await probe(action, options);
    const port = localProbePort(action);
    if (port === undefined || result.refused) return result;
    const owner = await portOwner(port, options.timeoutMs).catch((error: unknown) => ({
      kind: "unknown" as const,
      reason: error instanceof Error ? error.message : String(error),
    }));
    const verdict = judgeProbe(result, owner, port);
    if (verdict.foreignHolder !== undefined) onForeignHolder(port, verdict.foreignHolder);
    return verdict.result;
  };
}

export interface ReplicaProbesOptions {
  replicaId: string;
  desired: DesiredReplica;
  /** The replica's host ports now: probes of its container ports go there. */
  hostPorts: Record<string, number>;
  clock: Clock;
  /** Performs one probe (already judged by port ownership where the driver can tell). */
  probe: ProbeFunction;
  /** The driver's exec for exec probes; without it they fail with a clear message. */
  exec?: ProbeExec;
  /** Every probe result (metrics). */
  onResult?: (kind: ProbeKind, result: ProbeResult) => void;
  logger: Logger;
  /** The liveness probe flipped; `message` is its last result's. */
  onLiveness: (passing: boolean, message: string) => void;
  /** The readiness probe flipped. */
  onReadiness: (passing: boolean) => void;
}

/**
 * The probes of one run of a replica: started when it runs, stopped when it stops or
 * its probes change. Once stopped, nothing more is heard from them.
 */
export class ReplicaProbes {
  private readonly runners: ProbeRunner[] = [];
  private stopped = false;

  constructor(private readonly options: ReplicaProbesOptions) {}

  /** Starts the liveness probe, then the readiness probe; their initial delays count from now. */
  start(): void {
    const { desired, clock } = this.options;
    const startedAtMs = clock.nowMs();
    if (desired.liveness) {
      this.startRunner("liveness", desired.liveness, startedAtMs, (passing, message) =>
        this.options.onLiveness(passing, message),
      );
    }
    if (desired.readiness) {
      this.startRunner("readiness", desired.readiness, startedAtMs, (passing) =>
        this.options.onReadiness(passing),
      );
    }
  }

  stop(): void {
    this.stopped = true;
    for (const runner of this.runners) runner.stop();
  }

  private startRunner(
    kind: ProbeKind,
    spec: ProbeSpec,
    startedAtMs: number,
    onChange: (passing: boolean, message: string) => void,
  ): void {
    const { options } = this;
    const onResult = options.onResult;
    const runner = new ProbeRunner({
      kind,
      spec: {
        ...spec,
        action: resolveProbeAction(spec.action, options.desired.spec.ports, options.hostPorts),
      },
      clock: options.clock,
      startedAtMs,
      probe: options.probe,
      ...(options.exec ? { exec: options.exec } : {}),
      ...(onResult ? { onResult: (result: ProbeResult) => onResult(kind, result) } : {}),
      logger: options.logger.child({ replica: options.replicaId }),
      onChange: (state) => {
        if (this.stopped) return;
        onChange(state.status === "passing", state.lastResult?.message ?? "");
      },
    });
    this.runners.push(runner);
    runner.start();
  }
}

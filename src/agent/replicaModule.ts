/**
 * The replica supervisor as an agent module (agentModule.ts, ADR 0042): it reads the
 * coordinator's desired set (tolerating a newer coordinator's spec fields, and raising an
 * event that says so), keeps the supervisor's state on disk (NFR-A1), and reports the
 * replicas on the heartbeat stream.
 */
import { create } from "@bufbuild/protobuf";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  type ObjectVersion,
} from "../api/gen/cloudless/v1/node_pb.js";
import type { WorkloadSpecDocument } from "../api/workload/spec.js";
import type { Clock } from "../lib/clock.js";
import type { Rng } from "../lib/rng.js";
import type { Logger } from "../observe/logger.js";
import {
  AgentEventOutbox,
  policyDeniedEvent,
  replicaFilesEvent,
  specNotUnderstoodEvent,
  unknownSpecFieldsEvent,
} from "./agentEvents.js";
import type { AgentModule, AgentModuleContext, AgentModuleStopOptions } from "./agentModule.js";
import { desiredFromAssignment, reportToProto } from "./assignments.js";
import type { DriverName, RuntimeDriver } from "./drivers/driver.js";
import type { ReplicaOwner } from "./drivers/index.js";
import type { ReplicaFiles, SourceVersion } from "./replicaFiles/replicaFiles.js";
import { AgentStateWriter, loadAgentState } from "./stateFile.js";
import type { HostPortAllocator } from "./supervisor/hostPortReservations.js";
import { ReplicaSupervisor, type ReplicaSupervisorOptions } from "./supervisor/index.js";
import type { DesiredReplica, ReplicaReport } from "./supervisor/supervisorTypes.js";

export interface ReplicaModuleOptions {
  nodeName: string;
  dataDir: string;
  agentVersion: string;
  drivers: Map<DriverName, RuntimeDriver>;
  hostPorts: HostPortAllocator;
  /** Whose replicas the drivers touch (ADR 0030); asks this module what its state names. */
  owner: ReplicaOwner;
  clock: Clock;
  rng: Rng;
  logger: Logger;
  /** Keep the desired set and replica state in <dataDir>/agent-state.json (NFR-A1). */
  persistState: boolean;
  onProbeResult: NonNullable<ReplicaSupervisorOptions["onProbeResult"]>;
  /** Service variables and DNS settings for a starting replica (the network module). */
  networking?: ReplicaSupervisorOptions["networking"];
  /**
   * The cluster policies' denial of a replica's spec, if any (the policy module): a denied
   * replica is not started (REQ-061, defence in depth behind the check at apply).
   */
  policyDenial?: (doc: WorkloadSpecDocument) => string | undefined;
  /**
   * Secrets and configs as files for the replicas (REQ-063, ADR 0055): written before a
   * replica starts, swapped in place when the coordinator announces a newer version,
   * removed with the replica.
   */
  files?: ReplicaFiles;
}

export class ReplicaModule implements AgentModule {
  readonly name = "replicas";
  private supervisor: ReplicaSupervisor | undefined;
  private stateWriter: AgentStateWriter | undefined;
  private context: AgentModuleContext | undefined;
  private reports: ReplicaReport[] = [];
  /** Events for the cluster's event stream, each raised once per cause (ADR 0042). */
  private readonly events = new AgentEventOutbox();
  /** The last desired set received, judged again when the policies change. */
  private lastAssignments: HeartbeatResponse | undefined;

  constructor(private readonly options: ReplicaModuleOptions) {}

  /** The supervisor's latest reports (metrics and the logs/exec tunnels read them). */
  get latestReports(): readonly ReplicaReport[] {
    return this.reports;
  }

  async start(context: AgentModuleContext): Promise<void> {
    this.context = context;
    const { options } = this;
    const supervisor = new ReplicaSupervisor({
      drivers: options.drivers,
      clock: options.clock,
      rng: options.rng,
      hostPorts: options.hostPorts,
      logger: options.logger.child({ component: "supervisor" }),
      onProbeResult: options.onProbeResult,
      ...(options.networking ? { networking: options.networking } : {}),
      ...(options.files
        ? {
            replicaFiles: replicaFilesHook(options.files),
            onRemoved: (replicaId: string) => options.files?.remove(replicaId) ?? Promise.resolve(),
          }
        : {}),
      onDurableChange: () => this.stateWriter?.durableChanged(),
      onReport: (reports) => {
        this.reports = reports;
        this.raiseFilesEvents(reports);
        this.stateWriter?.runtimeChanged();
        context.send(this.reportsMessage());
      },
    });
    this.supervisor = supervisor;
    // A replica an older agent made (no owner marks) is this agent's only if its state names it.
    options.owner.setStateLookup((replicaId) => supervisor.knows(replicaId));
    if (options.persistState) {
      await this.restoreState(supervisor);
      this.stateWriter = new AgentStateWriter({
        dataDir: options.dataDir,
        nodeName: options.nodeName,
        clock: options.clock,
        logger: options.logger,
        snapshot: () => supervisor.snapshot(),
      });
    }
    await supervisor.start();
    this.stateWriter?.runtimeChanged();
  }

  /**
   * Loads the state a previous agent left (NFR-A1). A file that cannot be used costs one
   * warning and an empty start: without a desired set the supervisor removes nothing it
   * finds, and the coordinator's set replaces it on connect.
   */
  private async restoreState(supervisor: ReplicaSupervisor): Promise<void> {
    const { logger } = this.options;
    const loaded = await loadAgentState(this.options.dataDir, this.options.nodeName);
    if (loaded.kind === "absent") return;
    if (loaded.kind === "unusable") {
      logger.warn(
        { reason: loaded.reason },
        `ignoring the agent state file (${loaded.reason}); starting without saved replicas`,
      );
      return;
    }
    try {
      supervisor.restore(loaded.snapshot);
    } catch (error) {
      logger.warn(
        { reason: error instanceof Error ? error.message : String(error) },
        "ignoring the agent state file; starting without saved replicas",
      );
      return;
    }
    const count = loaded.snapshot.desired?.length ?? 0;
    logger.info({ replicas: count }, "restored desired replicas from the state file");
  }

  /** The desired set, when the message carries one; newer secret and config versions. */
  receive(message: HeartbeatResponse): void {
    if (message.objectVersions) this.sourcesChanged(message.objectVersions.objects);
    const supervisor = this.supervisor;
    if (!message.assignments || !supervisor) return;
    this.lastAssignments = message;
    const { logger, agentVersion } = this.options;
    const desired: DesiredReplica[] = [];
    for (const assignment of message.assignments.replicas) {
      const ref = {
        replicaId: assignment.replicaId,
        namespace: assignment.namespace,
        workload: assignment.workload,
        revision: Number(assignment.revision),
      };
      const reading = desiredFromAssignment({
        ...ref,
        specJson: assignment.specJson,
        traceparent: assignment.traceparent,
      });
      const denial = reading.ok ? this.options.policyDenial?.(reading.doc) : undefined;
      if (reading.ok && denial !== undefined) {
        // Not started. What this agent already runs for the replica keeps running: a policy
        // applied later refuses new starts, it does not stop running replicas (as admission
        // control in Kubernetes); delete or roll the workload to move it.
        const kept = supervisor.desiredFor(ref.replicaId);
        if (kept) desired.push(kept);
        const key = `${ref.replicaId}|${ref.revision}|policy|${denial}`;
        if (this.events.raise(key, policyDeniedEvent(ref, denial, kept?.generation))) {
          logger.warn({ replica: ref.replicaId, reason: denial }, "replica refused by policy");
        }
        continue;
      }
      if (reading.ok) {
        desired.push(reading.desired);
        if (reading.unknownFields.length > 0) {
          // A coordinator newer than this agent: run what is known, say what is not.
          const key = `${ref.replicaId}|${ref.revision}|unknown|${reading.unknownFields.join(",")}`;
          const event = unknownSpecFieldsEvent(ref, reading.unknownFields, agentVersion);
          if (this.events.raise(key, event)) {
            logger.warn(
              { replica: ref.replicaId, fields: reading.unknownFields },
              "running the replica without spec fields this agent does not know (the coordinator is newer)",
            );
          }
        }
        continue;
      }
      // Never stop a replica over a spec this agent cannot read: keep what it runs.
      const kept = supervisor.desiredFor(ref.replicaId);
      if (kept) desired.push(kept);
      const key = `${ref.replicaId}|${ref.revision}|refused`;
      const event = specNotUnderstoodEvent(ref, reading.message, kept?.generation, agentVersion);
      if (this.events.raise(key, event)) {
        logger.warn({ replica: ref.replicaId, kept: kept !== undefined }, reading.message);
      }
    }
    this.events.endOfSet();
    supervisor.setDesired(desired);
    this.stateWriter?.durableChanged();
    // Wanted replicas are tracked for updates; files of replicas neither wanted nor still
    // supervised (removed while no agent ran) go. A stopping replica keeps its files
    // until the supervisor has removed it (onRemoved).
    this.options.files
      ?.retain(
        desired.map((replica) => replica.spec),
        (replicaId) => supervisor.knows(replicaId),
      )
      .catch((error: unknown) =>
        logger.warn(
          { reason: error instanceof Error ? error.message : String(error) },
          "cannot remove the files of replicas no longer here",
        ),
      );
    for (const eventMessage of this.events.take()) this.context?.send(eventMessage);
  }

  /**
   * An event per replica held back by its secrets or configs, once per cause (the status
   * says the same, but an operator watching events should not have to poll replicas).
   */
  private raiseFilesEvents(reports: readonly ReplicaReport[]): void {
    let raised = false;
    for (const report of reports) {
      if (!replicaFilesReasons.has(report.reason)) continue;
      // The message ends with the back-off, which changes every attempt: not in the key.
      const cause = report.message.replace(/ \(back-off [^)]*\)$/, "");
      const key = `${report.replicaId}|files|${report.reason}|${cause}`;
      if (this.events.raise(key, replicaFilesEvent(report.replicaId, report.reason, cause))) {
        raised = true;
      }
    }
    if (raised) for (const message of this.events.take()) this.context?.send(message);
  }

  /** Swaps the files of running replicas whose secrets or configs have a newer version. */
  private sourcesChanged(objects: readonly ObjectVersion[]): void {
    const files = this.options.files;
    if (!files) return;
    const versions: SourceVersion[] = [];
    for (const object of objects) {
      if (object.kind !== "secret" && object.kind !== "config") continue;
      versions.push({
        kind: object.kind,
        namespace: object.namespace,
        name: object.name,
        version: object.version,
      });
    }
    // Failures are logged per replica inside; a running replica keeps its files meanwhile.
    void files.sourcesChanged(versions);
  }

  /** Judges the last desired set again (the policies changed). */
  reevaluate(): void {
    if (this.lastAssignments) this.receive(this.lastAssignments);
  }

  statusMessages(): HeartbeatRequest[] {
    if (!this.supervisor) return [];
    return [this.reportsMessage(), ...this.events.take()];
  }

  private reportsMessage(): HeartbeatRequest {
    return create(HeartbeatRequestSchema, {
      kind: {
        case: "reports",
        value: { full: true, replicas: this.reports.map(reportToProto) },
      },
    });
  }

  /**
   * Stops the supervisor and writes the state file a last time. Replicas that were stopped
   * (a leave, a deletion) are no longer wanted here: the file says so, and an agent
   * started later removes what it finds instead of bringing them back.
   */
  async stop(options: AgentModuleStopOptions): Promise<void> {
    await this.supervisor
      ?.stop({ stopReplicas: options.leaving, hurry: options.hurry })
      .catch(() => undefined);
    if (options.leaving) {
      this.supervisor?.setDesired([]);
      // The replicas are gone: so are their files.
      await this.options.files?.retain([], () => false).catch(() => undefined);
    }
    await this.stateWriter?.close();
    // The secrets tmpfs stays mounted while a replica that outlives the agent uses it.
    await this.options.files?.close();
  }
}

/** The supervisor's hook: the replica's files, owned by the user its driver runs it as. */
function replicaFilesHook(files: ReplicaFiles): ReplicaSupervisorOptions["replicaFiles"] {
  return async (spec, driver) => files.prepare(spec, await driver.replicaUser?.(spec));
}

/** Status reasons of a replica whose files could not be written (replicaFiles.ts). */
const replicaFilesReasons = new Set([
  "SecretUnavailable",
  "ConfigUnavailable",
  "SecretKeyMissing",
  "InvalidFiles",
  "ReplicaFilesFailed",
]);

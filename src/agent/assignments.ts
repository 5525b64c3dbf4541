import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type ReplicaReport as ReplicaReportMessage,
  ReplicaReportSchema,
} from "../api/gen/cloudless/v1/node_pb.js";
import { capabilityName } from "../api/workload/capabilities.js";
import type { Probe, WorkloadSpecDocument } from "../api/workload/spec.js";
import { parseWorkloadValueTolerant } from "../api/workload/tolerant.js";
import type { ReplicaFileSource, ReplicaRunSpec, ReplicaSecurity } from "./drivers/driver.js";
import type { ProbeAction, ProbeSpec } from "./probes/probeTypes.js";
import type { DesiredReplica, ReplicaReport } from "./supervisor/supervisorTypes.js";

export interface AssignmentInput {
  replicaId: string;
  namespace: string;
  workload: string;
  revision: number;
  specJson: string;
  /** Trace context of the placement ("" or absent when untraced). */
  traceparent?: string;
}

export type AssignmentReading =
  | {
      ok: true;
      desired: DesiredReplica;
      /** The workload spec as read, for the policy check before the replica starts. */
      doc: WorkloadSpecDocument;
      /**
       * Spec fields this agent does not know (a coordinator newer than the agent), set
       * aside: the replica runs with the rest (ADR 0042). Empty when none.
       */
      unknownFields: string[];
    }
  | { ok: false; message: string };

/**
 * Turns what the coordinator assigned into what the local supervisor runs: the typed run
 * spec, decoded here at the edge. The spec is validated again with the same schema, but
 * fields the schema does not have are set aside and named instead of refusing the whole
 * spec: the coordinator accepted them, so they come from a newer version (ADR 0042). A
 * spec that is wrong in what the agent does know is still refused.
 */
export function desiredFromAssignment(assignment: AssignmentInput): AssignmentReading {
  let value: unknown;
  try {
    value = JSON.parse(assignment.specJson);
  } catch {
    return { ok: false, message: "assignment carries a spec that is not JSON" };
  }
  const parsed = parseWorkloadValueTolerant(withoutReplicaCount(value));
  if (!parsed.ok) {
    return {
      ok: false,
      message: `assignment spec is invalid: ${parsed.errors.map((e) => `${e.path}: ${e.message}`).join("; ")}`,
    };
  }
  const doc = parsed.doc;
  const spec = runSpecFromDocument(assignment.replicaId, doc);
  return {
    ok: true,
    desired: {
      spec,
      restartPolicy: doc.spec.restartPolicy,
      ...(doc.spec.livenessProbe ? { liveness: probeFromSpec(doc.spec.livenessProbe, doc) } : {}),
      ...(doc.spec.readinessProbe
        ? { readiness: probeFromSpec(doc.spec.readinessProbe, doc) }
        : {}),
      terminationGracePeriodSeconds: doc.spec.terminationGracePeriodSeconds,
      generation: assignment.revision,
      ...(assignment.traceparent ? { traceparent: assignment.traceparent } : {}),
    },
    doc,
    unknownFields: parsed.unknownFields,
  };
}

/**
 * The spec with its replica count set aside: how many replicas a workload has is the
 * coordinator's business, not this node's, and a workload stored before the count had a
 * limit (replicasPerWorkload) must still run here.
 */
function withoutReplicaCount(value: unknown): unknown {
  if (typeof value !== "object" || value === null) return value;
  const spec = (value as { spec?: unknown }).spec;
  if (typeof spec !== "object" || spec === null || Array.isArray(spec)) return value;
  return { ...value, spec: { ...spec, replicas: 0, minAvailable: 0 } };
}

export function runSpecFromDocument(replicaId: string, doc: WorkloadSpecDocument): ReplicaRunSpec {
  const image = doc.spec.image;
  return {
    replicaId,
    namespace: doc.metadata.namespace,
    workload: doc.metadata.name,
    driver: image ? "container" : "process",
    ...(image ? { image } : {}),
    ...(doc.spec.command ? { command: [...doc.spec.command] } : {}),
    ...(doc.spec.args ? { args: [...doc.spec.args] } : {}),
    env: { ...doc.spec.env },
    ports: doc.spec.ports.map((port) => ({
      name: port.name,
      containerPort: port.containerPort,
      hostPort: 0,
      protocol: port.protocol,
      ...(port.hostIP ? { hostIP: port.hostIP } : {}),
    })),
    resources: {
      cpuMillicores: doc.spec.resources.cpuMillicores,
      memoryMiB: doc.spec.resources.memoryMiB,
      storageGiB: doc.spec.resources.storageGiB,
    },
    ...(fileSources(doc).length > 0 ? { files: fileSources(doc) } : {}),
    ...(doc.spec.securityContext ? { security: securityOf(doc.spec.securityContext) } : {}),
  };
}

/** The spec's securityContext as the drivers take it: capability names bare and once each. */
function securityOf(
  context: NonNullable<WorkloadSpecDocument["spec"]["securityContext"]>,
): ReplicaSecurity {
  const capabilities = [
    ...new Set((context.capabilitiesAdd ?? []).flatMap((name) => capabilityName(name) ?? [])),
  ];
  return {
    ...(context.runAsUser !== undefined ? { runAsUser: context.runAsUser } : {}),
    ...(capabilities.length > 0 ? { capabilitiesAdd: capabilities } : {}),
    ...(context.readOnlyRootFilesystem !== undefined
      ? { readOnlyRootFilesystem: context.readOnlyRootFilesystem }
      : {}),
    ...(context.seccompProfile !== undefined
      ? { seccomp: context.seccompProfile !== "unconfined" }
      : {}),
  };
}

/** The secrets and configs the replica reads, with their default mount paths (ADR 0055). */
function fileSources(doc: WorkloadSpecDocument): ReplicaFileSource[] {
  return [
    ...(doc.spec.secrets ?? []).map(
      (ref): ReplicaFileSource => ({
        kind: "secret",
        name: ref.name,
        mountPath: ref.mountPath ?? `/run/secrets/${ref.name}`,
        ...(ref.env && ref.env.length > 0
          ? { env: ref.env.map((entry) => ({ name: entry.name, key: entry.key })) }
          : {}),
      }),
    ),
    ...(doc.spec.configs ?? []).map(
      (ref): ReplicaFileSource => ({
        kind: "config",
        name: ref.name,
        mountPath: ref.mountPath ?? `/run/configs/${ref.name}`,
        onChange: ref.onChange,
      }),
    ),
  ];
}

/** Probe ports may name a port of the spec; the supervisor maps container ports to host ports. */
function probeFromSpec(probe: Probe, doc: WorkloadSpecDocument): ProbeSpec {
  const portNumber = (reference: number | string): number => {
    if (typeof reference === "number") return reference;
    return doc.spec.ports.find((p) => p.name === reference)?.containerPort ?? 0;
  };
  let action: ProbeAction;
  if (probe.http) action = { http: { path: probe.http.path, port: portNumber(probe.http.port) } };
  else if (probe.tcp) action = { tcp: { port: portNumber(probe.tcp.port) } };
  else action = { exec: { command: [...(probe.exec?.command ?? [])] } };
  return {
    action,
    periodSeconds: probe.periodSeconds,
    timeoutSeconds: probe.timeoutSeconds,
    failureThreshold: probe.failureThreshold,
    successThreshold: probe.successThreshold,
    initialDelaySeconds: probe.initialDelaySeconds,
  };
}

/** The supervisor's report in the wire format of the heartbeat stream. */
export function reportToProto(report: ReplicaReport): ReplicaReportMessage {
  return create(ReplicaReportSchema, {
    replicaId: report.replicaId,
    phase: report.phase,
    ready: report.ready,
    restarts: report.restarts,
    reason: report.reason,
    message: report.message,
    exitCode: report.exitCode ?? 0,
    ...(report.startedAtMs ? { startedAt: timestampFromMs(report.startedAtMs) } : {}),
    hostPorts: report.hostPorts,
    driver: report.driver,
  });
}

/**
 * Which API calls enter the audit log (NFR-C1) and what is recorded about them: the
 * interceptor for calls that reach the handlers, and `auditRefusal` for the ones the
 * listener refuses before (no client certificate). See docs/operations/audit.md.
 */
import type { JsonValue } from "@bufbuild/protobuf";
import type { Struct } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { parse as parseYaml } from "yaml";
import { NodeService } from "../../api/gen/cloudless/v1/node_pb.js";
import { TokenService } from "../../api/gen/cloudless/v1/token_pb.js";
import { WorkloadService } from "../../api/gen/cloudless/v1/workload_pb.js";
import { unreadableSpecText } from "../../api/workload/parse.js";
import { startStopwatch } from "../../lib/stopwatch.js";
import { type AuditLog, type AuditRecord, hostOf } from "../../observe/audit.js";
import { type Peer, peerKey } from "./peer.js";

const methodName = (service: { typeName: string }, method: { name: string }) =>
  `${service.typeName}/${method.name}`;

/**
 * The state-changing methods. Heartbeat, reports, UploadLogs, ReportExecResult,
 * MeasureEgress and every read are not audited (too frequent, or they change nothing).
 */
export const auditedMethods: ReadonlySet<string> = new Set([
  methodName(NodeService, NodeService.method.enroll),
  methodName(NodeService, NodeService.method.renewCertificate),
  methodName(NodeService, NodeService.method.cordonNode),
  methodName(NodeService, NodeService.method.uncordonNode),
  methodName(NodeService, NodeService.method.drainNode),
  methodName(NodeService, NodeService.method.deleteNode),
  methodName(TokenService, TokenService.method.createToken),
  methodName(TokenService, TokenService.method.deleteToken),
  methodName(WorkloadService, WorkloadService.method.applyWorkload),
  methodName(WorkloadService, WorkloadService.method.deleteWorkload),
  methodName(WorkloadService, WorkloadService.method.scaleWorkload),
  methodName(WorkloadService, WorkloadService.method.rolloutUndo),
  methodName(WorkloadService, WorkloadService.method.execWorkload),
]);

function actorOf(peer: Peer): string {
  return peer.identity
    ? `${peer.identity.kind}/${peer.identity.name}`
    : `anonymous@${peer.address}`;
}

/**
 * Records every call of an audited method with its result, refusals included. Put it
 * outermost, so it sees the error codes the other interceptors produce. The response
 * waits until the entry is on disk (the log never fails a request).
 */
export function auditInterceptor(services: { audit: AuditLog }): Interceptor {
  return (next) => async (request) => {
    const method = methodName(request.service, request.method);
    if (request.stream || !auditedMethods.has(method)) return next(request);
    const elapsedMs = startStopwatch();
    const peer = request.contextValues.get(peerKey);
    const requestMessage: unknown = request.message;
    const entry = (result: string, response: unknown, error?: string): AuditRecord => ({
      actor: actorOf(peer),
      address: peer.address,
      method,
      target: targetOf(request.method.name, requestMessage, response, peer),
      result,
      ...(error !== undefined ? { error } : {}),
      durationMs: elapsedMs(),
      ...((requestMessage as { dryRun?: unknown }).dryRun === true ? { dryRun: true } : {}),
    });
    try {
      const response = await next(request);
      await services.audit.record(entry("ok", response.stream ? undefined : response.message));
      return response;
    } catch (error) {
      const connectError = ConnectError.from(error);
      await services.audit.record(
        entry(
          Code[connectError.code] ?? String(connectError.code),
          undefined,
          connectError.rawMessage,
        ),
        peer.identity ? {} : { anonymousHost: hostOf(peer.address) },
      );
      throw error;
    }
  };
}

/** Records a call refused before it was read (no valid client certificate), if audited. */
export function auditRefusal(
  services: { audit: AuditLog },
  peer: Peer,
  pathname: string,
  message: string,
): Promise<void> {
  const method = pathname.replace(/^\//, "");
  if (!auditedMethods.has(method)) return Promise.resolve();
  return services.audit.record(
    {
      actor: actorOf(peer),
      address: peer.address,
      method,
      target: "",
      result: Code[Code.Unauthenticated],
      error: message,
      durationMs: 0,
    },
    peer.identity ? {} : { anonymousHost: hostOf(peer.address) },
  );
}

/** What a call was about, from names in its request or response; never a secret field. */
function targetOf(method: string, request: unknown, response: unknown, peer: Peer): string {
  const field = (value: unknown, key: string): string => {
    const found = (value as Record<string, unknown> | undefined)?.[key];
    return typeof found === "string" ? found : "";
  };
  const workload = (namespace: string, name: string) =>
    name ? `workload/${namespace || "default"}/${name}` : "";
  switch (method) {
    case NodeService.method.enroll.name:
    case NodeService.method.cordonNode.name:
    case NodeService.method.uncordonNode.name:
    case NodeService.method.drainNode.name:
    case NodeService.method.deleteNode.name: {
      const name = field(request, "name");
      return name ? `node/${name}` : "";
    }
    case NodeService.method.renewCertificate.name:
      return peer.identity?.kind === "node" ? `node/${peer.identity.name}` : "";
    case TokenService.method.createToken.name: {
      const id = field((response as { info?: unknown } | undefined)?.info, "id");
      return id ? `token/${id}` : "";
    }
    case TokenService.method.deleteToken.name: {
      const id = field(request, "id");
      return id ? `token/${id}` : "";
    }
    case WorkloadService.method.applyWorkload.name: {
      const applied = (response as { workload?: unknown } | undefined)?.workload;
      if (applied) return workload(field(applied, "namespace"), field(applied, "name"));
      const metadata = specMetadata(request);
      return workload(field(metadata, "namespace"), field(metadata, "name"));
    }
    case WorkloadService.method.deleteWorkload.name:
    case WorkloadService.method.scaleWorkload.name:
    case WorkloadService.method.rolloutUndo.name:
    case WorkloadService.method.execWorkload.name:
      return workload(field(request, "namespace"), field(request, "name"));
    default:
      return "";
  }
}

/** The metadata of a spec that could not be applied, best effort, for the target. */
function specMetadata(request: unknown): unknown {
  const { specText, spec } = request as { specText?: string; spec?: Struct };
  try {
    if (spec?.fields?.metadata?.kind.case === "structValue") {
      const fields = spec.fields.metadata.kind.value.fields;
      const text = (key: string) => {
        const kind = fields[key]?.kind;
        return kind?.case === "stringValue" ? kind.value : undefined;
      };
      return { name: text("name"), namespace: text("namespace") };
    }
    // Text the spec parser would refuse to read (too large, too deep) is not read here.
    if (specText && unreadableSpecText(specText, "spec") === undefined) {
      const parsed = parseYaml(specText, { maxAliasCount: 100 }) as JsonValue;
      return (parsed as { metadata?: unknown } | null)?.metadata;
    }
  } catch {
    // An unreadable spec has no target; its error says why.
  }
  return undefined;
}

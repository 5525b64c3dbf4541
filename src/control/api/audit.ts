/**
 * Which API calls enter the audit log (NFR-C1) and what is recorded about them: the
 * interceptor for calls that reach the handlers, and `auditRefusal` for the ones the
 * listener refuses before (no client certificate). See docs/operations/audit.md.
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { startStopwatch } from "../../lib/stopwatch.js";
import { type AuditLog, type AuditRecord, hostOf } from "../../observe/audit.js";
import { type Peer, peerKey } from "./peer.js";

/** What a call was about ("node/n1", "workload/default/web"), never a secret field. */
export type AuditTarget = (call: { request: unknown; response: unknown; peer: Peer }) => string;

/**
 * The state-changing methods of a module and how each names its target; every module
 * declares its own (ADR 0045). Heartbeat, reports, UploadLogs, ReportExecResult,
 * MeasureEgress and every read are not audited (too frequent, or they change nothing).
 */
export type AuditedMethods = ReadonlyMap<string, AuditTarget>;

/** "cloudless.v1.NodeService/Enroll": how methods are named in the audit log. */
export function auditedMethodName(method: DescMethod): string {
  return `${method.parent.typeName}/${method.name}`;
}

/** A string field of a decoded message, or "" (targets never fail). */
export function stringField(value: unknown, key: string): string {
  const found = (value as Record<string, unknown> | undefined)?.[key];
  return typeof found === "string" ? found : "";
}

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
export function auditInterceptor(services: {
  audit: AuditLog;
  audited: AuditedMethods;
}): Interceptor {
  return (next) => async (request) => {
    const method = `${request.service.typeName}/${request.method.name}`;
    const target = services.audited.get(method);
    if (request.stream || !target) return next(request);
    const elapsedMs = startStopwatch();
    const peer = request.contextValues.get(peerKey);
    const requestMessage: unknown = request.message;
    const entry = (result: string, response: unknown, error?: string): AuditRecord => ({
      actor: actorOf(peer),
      address: peer.address,
      method,
      target: target({ request: requestMessage, response, peer }),
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
  services: { audit: AuditLog; audited: AuditedMethods },
  peer: Peer,
  pathname: string,
  message: string,
): Promise<void> {
  const method = pathname.replace(/^\//, "");
  if (!services.audited.has(method)) return Promise.resolve();
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

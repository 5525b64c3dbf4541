/**
 * The one place where a caller's role meets the method it calls (ADR 0051): every request
 * that reached the handlers' side of the listener — gRPC, gRPC-web and Connect's
 * HTTP/JSON alike, streams included — passes here, after authentication. A refusal is a
 * PermissionDenied naming the role and the permission needed; the error interceptor
 * turns it into a PermissionDenied event, and it is an audit line: the audit interceptor
 * writes it for audited methods, this one for reads (which are not otherwise audited).
 */
import { Code, type Interceptor } from "@connectrpc/connect";
import { CloudlessError, toConnectError } from "../../api/errors.js";
import type { AuditLog } from "../../observe/audit.js";
import { type Caller, decideMethod } from "../security/permissions.js";
import type { AuditedMethods } from "./audit.js";
import { type Peer, peerKey } from "./peer.js";

/** The caller of a request as the permission table sees it; undefined before authentication. */
export function callerOf(peer: Peer): Caller | undefined {
  const identity = peer.identity;
  if (identity === undefined) return undefined;
  if (identity.kind === "node" || identity.kind === "coordinator") {
    return { kind: identity.kind, name: identity.name };
  }
  // An admin certificate is role admin. A user one always carries its role
  // (identityFromCertificate gives no identity otherwise); without one it gets nothing.
  const role = identity.role ?? (identity.kind === "admin" ? "admin" : undefined);
  if (role === undefined) return undefined;
  return { kind: identity.kind, name: identity.name, role };
}

export function authorizationInterceptor(services: {
  audit: AuditLog;
  audited: AuditedMethods;
}): Interceptor {
  return (next) => async (request) => {
    const peer = request.contextValues.get(peerKey);
    const caller = callerOf(peer);
    const method = `${request.service.typeName}/${request.method.name}`;
    // The authentication interceptor refused every caller without an identity, except
    // for Enroll, which carries a token instead.
    if (!peer.identity) return next(request);
    if (!caller) {
      throw toConnectError(
        CloudlessError.permissionDenied(
          "this user certificate carries no role; create the user again",
        ),
      );
    }
    const decision = decideMethod(caller, method);
    if (decision.ok) return next(request);
    // Audited methods get their line from the audit interceptor, which sees this error.
    if (request.stream || !services.audited.has(method)) {
      await services.audit.record({
        actor: `${caller.kind}/${caller.name}`,
        address: peer.address,
        method,
        target: "",
        result: Code[Code.PermissionDenied],
        error: decision.reason,
        durationMs: 0,
      });
    }
    throw toConnectError(CloudlessError.permissionDenied(decision.reason));
  };
}

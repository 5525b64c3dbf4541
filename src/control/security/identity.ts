/**
 * Who is calling, as established by a verified client certificate, and what they may do.
 *
 * Authorization is a pure function of (identity, action) so API handlers can check it in
 * one line and tests can enumerate it.
 */

import type { IdentityKind } from "../../api/identity.js";

/** A caller authenticated by a client certificate from the cluster CA. */
export type Identity = { kind: IdentityKind; name: string };

/** What a request wants to do, in terms of whose authority it needs. */
export type Action =
  /** Cluster-wide operations: deploy, drain, create tokens, read everything. */
  | { kind: "admin" }
  /** Something only the named node itself may do (heartbeat, report its own status). */
  | { kind: "node"; nodeName: string }
  /** Something the named node or an administrator may do (read its assignments). */
  | { kind: "nodeOrAdmin"; nodeName: string };

export type AuthorizationResult = { ok: true } | { ok: false; reason: string };

const ALLOWED: AuthorizationResult = { ok: true };

/**
 * Decides whether `identity` may perform `action`.
 *
 * Administrators may do everything. Coordinators count as administrators for now: they
 * call each other only for cluster-wide work. A user (a person or program with a role,
 * ADR 0051) passes the checks for people: which methods its role may call was decided
 * before the handler, by the permission table (permissions.ts) in the authorization
 * interceptor; it may never act as a node. A node may act only as itself, so a stolen
 * node certificate cannot be used to impersonate other nodes or to administer the cluster.
 */
export function authorize(identity: Identity, action: Action): AuthorizationResult {
  if (identity.kind === "admin" || identity.kind === "coordinator") return ALLOWED;
  if (identity.kind === "user") {
    return action.kind === "node"
      ? { ok: false, reason: `user "${identity.name}" may not act as node "${action.nodeName}"` }
      : ALLOWED;
  }
  switch (action.kind) {
    case "admin":
      return {
        ok: false,
        reason: `node "${identity.name}" may not perform administrative actions; use an admin certificate`,
      };
    case "node":
      return identity.name === action.nodeName
        ? ALLOWED
        : { ok: false, reason: `node "${identity.name}" may not act as node "${action.nodeName}"` };
    case "nodeOrAdmin":
      return identity.name === action.nodeName
        ? ALLOWED
        : {
            ok: false,
            reason: `node "${identity.name}" may not act as node "${action.nodeName}"; only that node or an admin may`,
          };
  }
}

import type { HandlerContext } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import { authorize, type Identity } from "../security/identity.js";
import { type Peer, peerKey } from "./peer.js";

/** Whether this coordinator leads (runs membership and controllers), and who does. */
export interface Leadership {
  readonly isLeader: boolean;
  /** The leader's API URL as last seen; undefined while none is elected. */
  readonly leaderUrl: string | undefined;
  /** The leader's coordinator id as last seen; undefined while none is elected. */
  readonly leaderId: string | undefined;
}

export function peerOf(context: HandlerContext): Peer {
  return context.values.get(peerKey);
}

function identityOf(context: HandlerContext): Identity {
  const peer = peerOf(context);
  if (!peer.identity) {
    throw CloudlessError.unauthenticated(peer.refusal ?? "a client certificate is required");
  }
  return { kind: peer.identity.kind, name: peer.identity.name };
}

/** The caller must be an administrator. */
export function requireAdmin(context: HandlerContext): Identity {
  const identity = identityOf(context);
  const verdict = authorize(identity, { kind: "admin" });
  if (!verdict.ok) throw CloudlessError.permissionDenied(verdict.reason);
  return identity;
}

/** The caller must be the node `nodeName` itself, or an administrator. */
export function requireNodeOrAdmin(context: HandlerContext, nodeName: string): Identity {
  const identity = identityOf(context);
  const verdict = authorize(identity, { kind: "nodeOrAdmin", nodeName });
  if (!verdict.ok) throw CloudlessError.permissionDenied(verdict.reason);
  return identity;
}

/** The caller must be a node (it then acts as itself only). */
export function requireNode(context: HandlerContext): Identity {
  const identity = identityOf(context);
  if (identity.kind !== "node") {
    throw CloudlessError.permissionDenied(
      `only node agents may call this method; you are ${identity.kind} "${identity.name}"`,
    );
  }
  return identity;
}

export function actorName(identity: Identity): string {
  return `${identity.kind}/${identity.name}`;
}

import { X509Certificate } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { TLSSocket } from "node:tls";
import { createContextKey } from "@connectrpc/connect";
import { type IdentityKind, identityFromCertificate, type Role } from "../../api/identity.js";
import type { NodeRegistry } from "../nodes/nodeRegistry.js";
import type { UserRegistry } from "../users/userRegistry.js";

/** Who is calling, as established by the TLS handshake. */
export interface Peer {
  /** Remote address, for events and logs. */
  address: string;
  /** Present only when the client certificate chains to the cluster CA. */
  identity?: {
    kind: IdentityKind;
    name: string;
    serial: string;
    /** The role of an admin or user certificate (ADR 0051); none for nodes and coordinators. */
    role?: Role;
  };
  /** Why there is no identity, for the error message and the event. */
  refusal?: string;
}

export const peerKey = createContextKey<Peer>(
  { address: "unknown", refusal: "no peer information" },
  { description: "the authenticated peer of a request" },
);

const peerBySocket = new WeakMap<object, Peer>();

/** Reads the peer's identity from its TLS session, once per connection. */
export function resolvePeer(
  request: IncomingMessage | Http2ServerRequest,
  clusterName: string,
): Peer {
  const socket = request.socket as TLSSocket;
  const sessionKey = ("stream" in request && request.stream?.session) || socket;
  const cached = peerBySocket.get(sessionKey);
  if (cached) return cached;
  const address = `${socket.remoteAddress ?? "unknown"}:${socket.remotePort ?? 0}`;
  const peer = identify(socket, clusterName, address);
  peerBySocket.set(sessionKey, peer);
  return peer;
}

function identify(socket: TLSSocket, clusterName: string, address: string): Peer {
  const certificate =
    typeof socket.getPeerCertificate === "function" ? socket.getPeerCertificate(false) : undefined;
  if (!certificate?.raw) {
    return { address, refusal: "no client certificate was presented" };
  }
  if (!socket.authorized) {
    return {
      address,
      refusal: `client certificate was not issued by this cluster's CA (${String(socket.authorizationError)})`,
    };
  }
  const identity = identityFromCertificate(new X509Certificate(certificate.raw), clusterName);
  if (!identity) {
    return {
      address,
      refusal: "client certificate carries no Cloudless identity for this cluster",
    };
  }
  return {
    address,
    identity: {
      kind: identity.kind,
      name: identity.name,
      serial: identity.serial,
      ...(identity.role !== undefined ? { role: identity.role } : {}),
    },
  };
}

/** Who can still use a certificate the CA signed: the node and user records. */
export interface Members {
  nodes: Pick<NodeRegistry, "get">;
  users: Pick<UserRegistry, "isCurrent">;
}

/**
 * Whether a verified identity still belongs to the cluster. A node certificate does only
 * while its node lists the certificate's serial: deleting or re-enrolling the node
 * revokes it; a user certificate only while its user names that serial and is not
 * revoked (ADR 0051) — for the API (gRPC and HTTP/JSON), /metrics, /healthz and /readyz
 * alike, checked on every request, so a revoked certificate stops working on an open
 * connection too.
 */
export async function isCurrentMember(
  members: Members,
  identity: NonNullable<Peer["identity"]>,
): Promise<boolean> {
  if (identity.kind === "user") return members.users.isCurrent(identity.name, identity.serial);
  if (identity.kind !== "node") return true;
  const node = await members.nodes.get(identity.name);
  return node?.certSerials.includes(identity.serial) ?? false;
}

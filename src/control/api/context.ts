import type { HandlerContext } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import type { Clock } from "../../lib/clock.js";
import type { Rng } from "../../lib/rng.js";
import type { AuditLog } from "../../observe/audit.js";
import type { Logger } from "../../observe/logger.js";
import type { CoordinatorMetrics } from "../../observe/metrics.js";
import type { AssignmentHub } from "../controllers/assignmentHub.js";
import type { ReplicaStatusWriter } from "../controllers/replicaStatusWriter.js";
import type { TunnelHub } from "../controllers/tunnelHub.js";
import type { WorkloadController } from "../controllers/workloadController.js";
import type { EventLog } from "../events/eventLog.js";
import type { MembershipService } from "../membership/membershipService.js";
import type { NodeRegistry } from "../nodes/nodeRegistry.js";
import { authorize, type Identity } from "../security/identity.js";
import type { CertificateAuthority } from "../security/pki.js";
import type { Store } from "../store/store.js";
import type { TokenRegistry } from "../tokens/tokenRegistry.js";
import { type Peer, peerKey } from "./peer.js";

/** Whether this coordinator leads (runs membership and controllers), and who does. */
export interface Leadership {
  readonly isLeader: boolean;
  /** The leader's API URL as last seen; undefined while none is elected. */
  readonly leaderUrl: string | undefined;
}

/** Everything the API handlers share: one coordinator's services. */
export interface CoordinatorServices {
  clusterName: string;
  store: Store;
  nodes: NodeRegistry;
  tokens: TokenRegistry;
  events: EventLog;
  membership: MembershipService;
  ca: CertificateAuthority;
  clock: Clock;
  /** Identifiers (uids, request ids) come from here (ADR 0041). */
  rng: Rng;
  logger: Logger;
  nodeCertTtlMs: number;
  /** Streams of connected nodes, so deleting a node can end its stream at once. */
  nodeStreams: Map<string, Set<AbortController>>;
  assignments: AssignmentHub;
  replicaStatus: ReplicaStatusWriter;
  tunnels: TunnelHub;
  workloads: WorkloadController;
  leadership: Leadership;
  /** This coordinator's id in the leader election and the registry of coordinators. */
  coordinatorId: string;
  /** The tamper-evident log of state-changing requests (NFR-C1). */
  audit: AuditLog;
  /** Prometheus metrics (REQ-070), served on GET /metrics to cluster identities. */
  metrics: CoordinatorMetrics;
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

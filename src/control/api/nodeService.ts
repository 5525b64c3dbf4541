import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import {
  type HeartbeatRequest,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
  type NodeService,
} from "../../api/gen/cloudless/v1/node_pb.js";
import { spiffeUri, validateNodeName } from "../../api/identity.js";
import { limits } from "../../api/limits.js";
import { AsyncQueue } from "../../lib/asyncQueue.js";
import type { Clock } from "../../lib/clock.js";
import type { Rng } from "../../lib/rng.js";
import { startStopwatch } from "../../lib/stopwatch.js";
import type { Logger } from "../../observe/logger.js";
import type { CoordinatorMetrics } from "../../observe/metrics.js";
import type { AssignmentHub } from "../controllers/assignmentHub.js";
import { type ClusterCache, readFreshClusterState } from "../controllers/clusterCache.js";
import type { ReplicaStatusWriter } from "../controllers/replicaStatusWriter.js";
import type { TunnelHub } from "../controllers/tunnelHub.js";
import type { EventLog } from "../events/eventLog.js";
import type { MembershipService } from "../membership/membershipService.js";
import { emptyCapacity, emptyInfo, type NodeRecord, nodeKey } from "../nodes/nodeRecord.js";
import type { NodeRegistry } from "../nodes/nodeRegistry.js";
import { type NodePlacements, placementsByNode } from "../nodes/placements.js";
import type { CertificateAuthority } from "../security/pki.js";
import type { Store } from "../store/store.js";
import type { TokenRegistry } from "../tokens/tokenRegistry.js";
import { readAgentEvents } from "./agentEvents.js";
import {
  actorName,
  type Leadership,
  peerOf,
  requireAdmin,
  requireNode,
  requireNodeOrAdmin,
} from "./context.js";
import {
  capacityFromProto,
  infoFromProto,
  nodeToProto,
  reportFromProto,
  taintsFromProto,
} from "./convert.js";
import { EventBudget } from "./eventBudget.js";
import type { HeartbeatHooks } from "./heartbeatHooks.js";
import { requestLogger } from "./requestContext.js";
import { validateLabels, validateLocality } from "./validation.js";

/** How long a new heartbeat stream may take to say hello before it is dropped. */
const helloTimeoutMs = 10_000;
/** Messages queued for one agent before its stream is dropped. */
const outboundQueueLimit = 10_000;
/** Upper bound on the bytes one egress measurement may send. */
const maxEgressProbeBytes = 16 * 1024 * 1024;

/** What the node API works with: membership, tokens, the CA and the workload plane. */
export interface NodeServiceDeps {
  clusterName: string;
  ca: CertificateAuthority;
  nodeCertTtlMs: number;
  store: Store;
  clock: Clock;
  /** Node uids come from here (ADR 0041). */
  rng: Rng;
  logger: Logger;
  metrics: Pick<CoordinatorMetrics, "heartbeatsReceived">;
  leadership: Leadership;
  nodes: NodeRegistry;
  tokens: TokenRegistry;
  events: EventLog;
  membership: MembershipService;
  /** Streams of connected nodes, so deleting a node can end its stream at once. */
  nodeStreams: Map<string, Set<AbortController>>;
  /** The leader's cluster cache (the workload controller's), for placements. */
  controller: { readonly cache: ClusterCache };
  assignments: AssignmentHub;
  replicaStatus: ReplicaStatusWriter;
  tunnels: TunnelHub;
  /** Modules' sinks on each stream and handlers of the request kinds not handled here. */
  hooks?: HeartbeatHooks;
}

export function nodeServiceImpl(services: NodeServiceDeps): ServiceImpl<typeof NodeService> {
  const { nodes, tokens, events, membership, ca, clock, store, logger } = services;
  // Refused enrollments come from anonymous callers: their events are rate-limited.
  const enrollmentEventBudget = new EventBudget();
  // Events agents raise (ADR 0042): a burst of 20 per node, then one every 5 s.
  const agentEventBudget = new EventBudget(20, 0.2);

  async function refuseEnrollment(
    context: HandlerContext,
    reason: string,
    message: string,
    nodeName: string,
    tokenId?: string,
  ): Promise<never> {
    const suppressed = enrollmentEventBudget.take(peerOf(context).address, clock.nowMs());
    if (suppressed !== undefined) {
      await events.record({
        type: "EnrollmentRefused",
        category: "security",
        subject: nodeName ? `node/${nodeName}` : "node/?",
        reason,
        message,
        actor: `anonymous@${peerOf(context).address}`,
        attributes: {
          address: peerOf(context).address,
          ...(tokenId ? { tokenId } : {}),
          ...(suppressed > 0 ? { suppressedBefore: String(suppressed) } : {}),
        },
      });
    }
    requestLogger(context, logger).warn(
      { reason, node: nodeName, address: peerOf(context).address },
      "enrollment refused",
    );
    throw CloudlessError.unauthenticated(message);
  }

  /**
   * Replicas placed per node, from the leader's cache when this coordinator runs it,
   * else from one read of the store (a follower, or a leader whose cache lags).
   */
  async function placements(): Promise<Map<string, NodePlacements>> {
    const state = await readFreshClusterState(store, services.controller.cache);
    return placementsByNode([...state.replicasByWorkload.values()].flat());
  }

  async function nodeView(node: NodeRecord) {
    const placed = (await placements()).get(node.name);
    return nodeToProto(node, membership.tracker.lastHeartbeatMs(node.name), placed);
  }

  return {
    async enroll(request, context) {
      const name = request.name;
      const nameCheck = validateNodeName(name);
      if (!nameCheck.ok) throw CloudlessError.invalid(`name: ${nameCheck.reason}`);
      validateLocality(request.region, "region");
      validateLocality(request.zone, "zone");
      validateLabels(request.labels);
      if (request.csrPem.length === 0 || request.csrPem.length > limits.csrPemBytes) {
        throw CloudlessError.invalid(
          `csr_pem must be a PEM certificate signing request of at most ${limits.csrPemBytes} bytes`,
        );
      }
      const check = await tokens.check(request.token);
      if (!check.ok) {
        return refuseEnrollment(context, check.refusal, check.message, name, check.tokenId);
      }
      if (await nodes.get(name)) {
        throw CloudlessError.alreadyExists(
          `node "${name}" is already enrolled; delete it with \`cloudless node delete ${name}\` first, or enroll it under another name`,
        );
      }
      const now = clock.nowMs();
      let issued: { certPem: string; serial: string; notAfterMs: number };
      try {
        issued = await ca.issueFromCsr(request.csrPem, {
          subjectName: name,
          spiffeUri: spiffeUri(services.clusterName, "node", name),
          ttlMs: services.nodeCertTtlMs,
          nowMs: now,
          // Server use too: the agent's opt-in metrics listener presents it (ADR 0009).
          usage: "clientAndServer",
          dnsNames: [name],
        });
      } catch (error) {
        throw CloudlessError.invalid(
          `certificate signing request refused: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
      const record: NodeRecord = {
        name,
        uid: services.rng.uuid(),
        status: "NotReady",
        statusReason: "AwaitingFirstHeartbeat",
        region: request.region,
        zone: request.zone,
        labels: { ...request.labels },
        taints: [],
        capacity: emptyCapacity(),
        info: emptyInfo(),
        cordoned: false,
        draining: false,
        enrolledAtMs: now,
        lastTransitionAtMs: now,
        certSerials: [issued.serial],
        certExpiresAtMs: issued.notAfterMs,
        address: peerOf(context).address,
        enrollments: 1,
      };
      const consume = tokens.consumeOps(check, `node/${name}`);
      // Token use and node creation commit together or not at all.
      const result = await store.txn({
        compare: [consume.compare, { key: nodeKey(name), target: "version", op: "==", version: 0 }],
        success: [consume.op, { type: "put", key: nodeKey(name), value: JSON.stringify(record) }],
      });
      if (!result.succeeded) {
        return refuseEnrollment(
          context,
          "used",
          "token was used concurrently by another enrollment; create a new one",
          name,
          check.record.id,
        );
      }
      await events.record({
        type: "EnrollmentAccepted",
        category: "security",
        subject: `node/${name}`,
        reason: "ValidToken",
        message: `node enrolled with token ${check.record.id}`,
        actor: `node/${name}`,
        attributes: { address: peerOf(context).address, tokenId: check.record.id },
      });
      requestLogger(context, logger).info(
        { node: name, tokenId: check.record.id },
        "node enrolled",
      );
      return {
        nodeName: name,
        certificatePem: issued.certPem,
        caPem: ca.certPem,
        clusterName: services.clusterName,
        nodeUid: record.uid,
        clusterId: ca.clusterId,
      };
    },

    async *heartbeat(requests: AsyncIterable<HeartbeatRequest>, context) {
      const identity = requireNode(context);
      const name = identity.name;
      // Only the leader judges nodes and hands out assignments; a follower names it so
      // the agent reconnects there (NFR-R1).
      if (!services.leadership.isLeader) {
        throw CloudlessError.notLeader(services.leadership.leaderUrl);
      }
      const iterator = requests[Symbol.asyncIterator]();
      const first = await withTimeout(iterator.next(), helloTimeoutMs);
      if (!first || first.done) return;
      const hello = first.value.kind.case === "hello" ? first.value.kind.value : undefined;
      if (!hello) {
        throw CloudlessError.invalid("the first message on a heartbeat stream must be a hello");
      }
      if (hello.nodeName !== name) {
        await events.record({
          type: "PermissionDenied",
          category: "security",
          subject: `node/${hello.nodeName}`,
          reason: "ImpersonationAttempt",
          message: `node "${name}" tried to heartbeat as node "${hello.nodeName}"`,
          actor: actorName(identity),
        });
        throw CloudlessError.permissionDenied(
          `node "${name}" may not act as node "${hello.nodeName}"`,
        );
      }
      validateLocality(hello.region, "region");
      validateLocality(hello.zone, "zone");
      validateLabels(hello.labels);
      const deleted = new AbortController();
      let streams = services.nodeStreams.get(name);
      if (!streams) {
        streams = new Set();
        services.nodeStreams.set(name, streams);
      }
      streams.add(deleted);
      // Messages to the agent: acks, desired sets and log/exec requests. Bounded: an
      // agent that stops reading is disconnected and resynchronises on reconnect.
      const outbound = new AsyncQueue<HeartbeatResponse>(outboundQueueLimit);
      let left = false;
      let helloed = false;
      let detach: (() => void) | undefined;
      let detachHooks: (() => void) | undefined;
      try {
        services.replicaStatus.forget(name);
        const record = await membership.hello(name, {
          capacity: capacityFromProto(hello.capacity),
          info: infoFromProto(hello.info),
          region: hello.region,
          zone: hello.zone,
          labels: { ...hello.labels },
          taints: taintsFromProto(hello.taints),
          address: peerOf(context).address,
          restartGraceMs: hello.restartGraceMs,
        });
        helloed = true;
        outbound.push(helloAck(services, record));
        // What this node was assigned, so events it raises name the replica's workload.
        let assigned = new Map<string, { namespace: string; workload: string }>();
        detach = services.assignments.attach(name, (message) => {
          if (message.assignments) {
            assigned = new Map(message.assignments.replicas.map((r) => [r.replicaId, r] as const));
          }
          outbound.push(message);
        });
        detachHooks = services.hooks?.attach(name, (message) => outbound.push(message));
        const reader = (async () => {
          let reports: Promise<void> = Promise.resolve();
          for (;;) {
            const next = await raceAbort(iterator.next(), deleted.signal);
            if (next === "aborted") {
              // Demotion ends streams with a pointer to the new leader; deletion without.
              if (deleted.signal.reason instanceof CloudlessError) throw deleted.signal.reason;
              throw CloudlessError.unauthenticated(
                `node "${name}" was deleted from the cluster; join again with a new token`,
              );
            }
            if (next.done) break;
            const message = next.value.kind;
            if (message.case === "beat") {
              services.metrics.heartbeatsReceived.inc();
              membership.beat(name);
              // The agent needs no per-beat answer (HTTP/2 pings watch the connection);
              // an answer on every 10th keeps the stream's downstream from idling out in
              // proxies at half the messages per beat for both sides.
              if (message.value.seq % ackEveryBeats === 0n) {
                outbound.push(ack(message.value.seq, services));
              }
            } else if (message.case === "reports") {
              const batch = message.value;
              // Reports apply in order; a slow store write never blocks heartbeats. The
              // leader's cluster cache gives the node's replicas without a store read and
              // lets reports of many nodes share a commit.
              reports = reports
                .then(() =>
                  services.replicaStatus.apply(
                    name,
                    batch.replicas.map(reportFromProto),
                    batch.full,
                    services.controller.cache,
                  ),
                )
                .catch((error: unknown) =>
                  logger.warn({ err: error, node: name }, "could not record replica reports"),
                );
            } else if (message.case === "events") {
              const reading = readAgentEvents(name, message.value, (id) => assigned.get(id));
              for (const problem of reading.refused) {
                logger.warn({ node: name, problem }, "refused an event the agent raised");
              }
              for (const event of reading.events) {
                const suppressed = agentEventBudget.take(name, clock.nowMs());
                if (suppressed === undefined) continue;
                void events
                  .record(
                    suppressed > 0
                      ? {
                          ...event,
                          attributes: { ...event.attributes, suppressed: String(suppressed) },
                        }
                      : event,
                  )
                  .catch((error: unknown) =>
                    logger.warn({ err: error, node: name }, "could not record an agent's event"),
                  );
              }
            } else if (message.case === "leave") {
              left = true;
              await reports;
              // back_within_ms > 0: a restart, not a departure; capped by the tracker.
              await membership.leave(name, message.value.backWithinMs);
              outbound.push(ack(0n, services));
              break;
            } else if (message.case !== "hello") {
              // A kind a module handles (network reports); an unknown one is ignored, as
              // an older coordinator ignores what a newer agent sends.
              try {
                services.hooks?.dispatch(name, message);
              } catch (error) {
                logger.warn(
                  { err: error, node: name, kind: message.case },
                  "heartbeat hook failed",
                );
              }
            }
          }
          await reports;
        })();
        reader.then(
          () => outbound.close(),
          (error: unknown) => outbound.fail(error),
        );
        yield* outbound.drain();
      } finally {
        detach?.();
        detachHooks?.();
        streams.delete(deleted);
        if (streams.size === 0) services.nodeStreams.delete(name);
        if (helloed && !left) membership.streamClosed(name);
      }
    },

    async renewCertificate(request, context) {
      const identity = requireNode(context);
      if (request.csrPem.length === 0 || request.csrPem.length > limits.csrPemBytes) {
        throw CloudlessError.invalid(`csr_pem must be at most ${limits.csrPemBytes} bytes`);
      }
      let issued: { certPem: string; serial: string; notAfterMs: number };
      try {
        issued = await ca.issueFromCsr(request.csrPem, {
          subjectName: identity.name,
          spiffeUri: spiffeUri(services.clusterName, "node", identity.name),
          ttlMs: services.nodeCertTtlMs,
          nowMs: clock.nowMs(),
          usage: "clientAndServer",
          dnsNames: [identity.name],
        });
      } catch (error) {
        throw CloudlessError.invalid(
          `certificate signing request refused: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
      await nodes.update(identity.name, (node) => {
        // The previous serial stays valid until it expires, so streams opened with it
        // keep working while the agent switches over.
        node.certSerials = [issued.serial, ...node.certSerials].slice(0, 2);
        node.certExpiresAtMs = issued.notAfterMs;
        return node;
      });
      requestLogger(context, logger).info({ node: identity.name }, "node certificate renewed");
      return { certificatePem: issued.certPem, caPem: ca.certPem };
    },

    async measureEgress(requests, context) {
      requireNode(context);
      let bytes = 0;
      let elapsedMs: (() => number) | undefined;
      for await (const request of requests) {
        elapsedMs ??= startStopwatch();
        bytes += request.chunk.byteLength;
        if (bytes > maxEgressProbeBytes) {
          throw CloudlessError.invalid(
            `egress probe larger than ${maxEgressProbeBytes} bytes; send less`,
          );
        }
      }
      const durationMs = elapsedMs === undefined ? 0 : Math.round(elapsedMs());
      return { bytesReceived: BigInt(bytes), durationMs };
    },

    async uploadLogs(requests, context) {
      const identity = requireNode(context);
      let requestId = "";
      for await (const request of requests) {
        requestId ||= request.requestId;
        if (request.error) {
          services.tunnels.endLogs(identity.name, requestId, request.error);
          return {};
        }
        const accepted = services.tunnels.acceptLogLines(
          identity.name,
          requestId,
          request.lines.map((l) => ({ stream: l.stream, line: l.line })),
        );
        if (!accepted) {
          throw CloudlessError.notFound(`no one is waiting for log request ${requestId} any more`);
        }
      }
      services.tunnels.endLogs(identity.name, requestId);
      return {};
    },

    async reportExecResult(request, context) {
      const identity = requireNode(context);
      const accepted = services.tunnels.acceptExecResult(
        identity.name,
        request.requestId,
        { exitCode: request.exitCode, stdout: request.stdout, stderr: request.stderr },
        request.error
          ? { message: request.error, deadlineExceeded: request.deadlineExceeded }
          : undefined,
      );
      if (!accepted) {
        throw CloudlessError.notFound(`exec request ${request.requestId} is unknown or timed out`);
      }
      return {};
    },

    async listNodes(request, context) {
      requireAdmin(context);
      const selector = Object.entries(request.labelSelector);
      const all = await nodes.list();
      const selected = all.filter(
        (node) =>
          (request.status === "" || node.status === request.status) &&
          selector.every(([key, value]) => node.labels[key] === value),
      );
      const placed = selected.length > 0 ? await placements() : new Map<string, NodePlacements>();
      return {
        nodes: selected.map((node) =>
          nodeToProto(node, membership.tracker.lastHeartbeatMs(node.name), placed.get(node.name)),
        ),
      };
    },

    async getNode(request, context) {
      requireNodeOrAdmin(context, request.name);
      const node = await nodes.mustGet(request.name);
      return { node: await nodeView(node) };
    },

    async cordonNode(request, context) {
      const identity = requireAdmin(context);
      const node = await setFlags(services, request.name, { cordoned: true }, identity);
      return { node: await nodeView(node) };
    },

    async uncordonNode(request, context) {
      const identity = requireAdmin(context);
      const node = await setFlags(
        services,
        request.name,
        { cordoned: false, draining: false },
        identity,
      );
      return { node: await nodeView(node) };
    },

    async drainNode(request, context) {
      const identity = requireAdmin(context);
      const node = await setFlags(
        services,
        request.name,
        { cordoned: true, draining: true },
        identity,
      );
      return { node: await nodeView(node) };
    },

    async deleteNode(request, context) {
      const identity = requireAdmin(context);
      await nodes.delete(request.name);
      membership.forget(request.name);
      for (const stream of services.nodeStreams.get(request.name) ?? []) stream.abort();
      await events.record({
        type: "NodeDeleted",
        category: "membership",
        subject: `node/${request.name}`,
        reason: "Deleted",
        message: "node removed from the cluster; its certificate is no longer accepted",
        actor: actorName(identity),
      });
      return {};
    },
  };
}

async function setFlags(
  services: NodeServiceDeps,
  name: string,
  flags: { cordoned?: boolean; draining?: boolean },
  identity: { kind: string; name: string },
): Promise<NodeRecord> {
  let changed = false;
  const node = await services.nodes.update(name, (current) => {
    const next = { ...current, ...flags };
    changed = next.cordoned !== current.cordoned || next.draining !== current.draining;
    return changed ? next : undefined;
  });
  if (changed) {
    const type =
      flags.draining === true
        ? "NodeDrained"
        : flags.cordoned === true
          ? "NodeCordoned"
          : "NodeUncordoned";
    await services.events.record({
      type,
      category: "operations",
      subject: `node/${name}`,
      reason: type.replace("Node", ""),
      message:
        type === "NodeDrained"
          ? "node cordoned and drained: no new replicas are placed on it"
          : type === "NodeCordoned"
            ? "node cordoned: no new replicas are placed on it"
            : "node schedulable again",
      actor: `${identity.kind}/${identity.name}`,
    });
  }
  return node;
}

/** Beats per acknowledgement on a heartbeat stream (see the reader loop). */
const ackEveryBeats = 10n;

function ack(seq: bigint, services: NodeServiceDeps, record?: NodeRecord): HeartbeatResponse {
  return create(HeartbeatResponseSchema, {
    ackSeq: seq,
    intervalMs: services.membership.config.heartbeatIntervalMs,
    cordoned: record?.cordoned ?? false,
    draining: record?.draining ?? false,
  });
}

/**
 * The answer to a hello: besides the flags, who the node is (its uid and the cluster id,
 * which its replicas are labelled with) and the restart grace granted, so an agent
 * enrolled before these existed learns them, and one asking too much sees the cap.
 */
function helloAck(services: NodeServiceDeps, record: NodeRecord): HeartbeatResponse {
  const response = ack(0n, services, record);
  response.nodeUid = record.uid;
  response.clusterId = services.ca.clusterId;
  response.restartGraceMs = record.restartGraceMs ?? 0;
  return response;
}

async function withTimeout<T>(promise: Promise<T>, timeoutMs: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T | "aborted"> {
  if (signal.aborted) return "aborted";
  return new Promise<T | "aborted">((resolve, reject) => {
    const onAbort = () => resolve("aborted");
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

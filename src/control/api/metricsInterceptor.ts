/**
 * API metrics (REQ-070): every call counted by procedure and Connect code, and timed.
 * The `method` label is the full procedure name ("cloudless.v1.NodeService/ListNodes"),
 * the `code` label the Connect code name ("ok", "unauthenticated", "not_found", …).
 */

import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { DescService } from "@bufbuild/protobuf";
import {
  ConnectError,
  type ConnectRouter,
  createConnectRouter,
  type Interceptor,
} from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { ClusterService } from "../../api/gen/cloudless/v1/cluster_pb.js";
import { ConfigService } from "../../api/gen/cloudless/v1/config_pb.js";
import { EventService } from "../../api/gen/cloudless/v1/event_pb.js";
import { NodeService } from "../../api/gen/cloudless/v1/node_pb.js";
import { PolicyService } from "../../api/gen/cloudless/v1/policy_pb.js";
import { SecretService } from "../../api/gen/cloudless/v1/secret_pb.js";
import { ServiceService } from "../../api/gen/cloudless/v1/service_pb.js";
import { TokenService } from "../../api/gen/cloudless/v1/token_pb.js";
import { UserService } from "../../api/gen/cloudless/v1/user_pb.js";
import { WorkloadService } from "../../api/gen/cloudless/v1/workload_pb.js";
import { type CoordinatorMetrics, writeMetrics } from "../../observe/metrics.js";
import { isCurrentMember, type Members, type Peer } from "./peer.js";

type ApiMetrics = Pick<CoordinatorMetrics, "apiRequests" | "apiRequestDuration">;

const services: DescService[] = [
  NodeService,
  TokenService,
  EventService,
  WorkloadService,
  ClusterService,
  ServiceService,
  UserService,
  SecretService,
  PolicyService,
  ConfigService,
];

/** Every procedure the API serves: the only values `method` takes besides "other". */
export const knownProcedures: ReadonlySet<string> = new Set(
  services.flatMap((service) => service.methods.map((m) => `${service.typeName}/${m.name}`)),
);

function codeOf(error: unknown): string {
  return codeToString(ConnectError.from(error).code);
}

/** Counts and times each call; put it outermost so it sees the final code. */
export function metricsInterceptor(metrics: ApiMetrics): Interceptor {
  return (next) => async (request) => {
    const method = `${request.service.typeName}/${request.method.name}`;
    const started = process.hrtime.bigint();
    let recorded = false;
    const record = (code: string) => {
      if (recorded) return;
      recorded = true;
      metrics.apiRequests.inc({ method, code });
      metrics.apiRequestDuration.observe(
        { method },
        Number(process.hrtime.bigint() - started) / 1e9,
      );
    };
    let response: Awaited<ReturnType<typeof next>>;
    try {
      response = await next(request);
    } catch (error) {
      record(codeOf(error));
      throw error;
    }
    if (!response.stream) {
      record("ok");
      return response;
    }
    const messages = response.message;
    return {
      ...response,
      message: (async function* () {
        let code = "canceled";
        try {
          yield* messages;
          code = "ok";
        } catch (error) {
          code = codeOf(error);
          throw error;
        } finally {
          // A stream the client abandoned ends here without an error: "canceled".
          record(code);
        }
      })(),
    };
  };
}

/** The procedures a set of routes serves ("cloudless.v1.NodeService/Enroll"…). */
export function proceduresOf(routes: (router: ConnectRouter) => void): ReadonlySet<string> {
  const router = createConnectRouter();
  routes(router);
  return new Set(router.handlers.map((handler) => handler.requestPath.replace(/^\//, "")));
}

/**
 * Counts a call refused before routing (no valid client certificate). `known`: the
 * procedures served (the modules' routes); anything else is "other", so a scanner's
 * paths cannot grow the label set.
 */
export function countRefusedRequest(
  metrics: ApiMetrics,
  pathname: string,
  known: ReadonlySet<string> = knownProcedures,
): void {
  const procedure = pathname.replace(/^\//, "");
  const method = known.has(procedure) ? procedure : "other";
  metrics.apiRequests.inc({ method, code: "unauthenticated" });
}

/**
 * Serves GET /metrics to an authenticated peer (NFR-S1: the caller has a client
 * certificate from the cluster CA carrying a cluster identity). A node must still be a
 * member with that certificate, as for the API: a deleted node's certificate stays
 * valid until it expires but no longer opens anything.
 */
/** The refusal of a certificate whose node was deleted or enrolled again. */
export const formerMemberMessage = "this certificate no longer belongs to a member of the cluster";

export async function serveMetrics(
  services: Members & { metrics: CoordinatorMetrics },
  peer: Peer,
  request: IncomingMessage | Http2ServerRequest,
  response: ServerResponse | Http2ServerResponse,
): Promise<void> {
  if (!peer.identity || !(await isCurrentMember(services, peer.identity))) {
    const reply = response as ServerResponse;
    reply.writeHead(401, { "content-type": "application/json" });
    reply.end(JSON.stringify({ code: "unauthenticated", message: formerMemberMessage }));
    return;
  }
  await writeMetrics(services.metrics.registry, request, response);
}

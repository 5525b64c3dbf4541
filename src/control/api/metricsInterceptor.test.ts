import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { EventService } from "../../api/gen/cloudless/v1/event_pb.js";
import { createCoordinatorMetrics } from "../../observe/metrics.js";
import {
  countRefusedRequest,
  knownProcedures,
  metricsInterceptor,
  proceduresOf,
} from "./metricsInterceptor.js";
import { startInProcessApi } from "./testing/inProcessApi.js";

async function requests(metrics: ReturnType<typeof createCoordinatorMetrics>) {
  const found: Record<string, number> = {};
  for (const value of (await metrics.apiRequests.get()).values) {
    found[`${value.labels.method} ${value.labels.code}`] = value.value;
  }
  return found;
}

async function timedCalls(metrics: ReturnType<typeof createCoordinatorMetrics>) {
  const found: Record<string, number> = {};
  for (const value of (await metrics.apiRequestDuration.get()).values) {
    if (value.metricName?.endsWith("_count")) found[String(value.labels.method)] = value.value;
  }
  return found;
}

describe("API metrics interceptor", () => {
  it("REQ-070 counts unary and streaming calls by full procedure name and Connect code, and times them", async () => {
    const metrics = createCoordinatorMetrics({ defaultMetrics: false });
    let fail = false;
    const transport = createRouterTransport(
      (router) =>
        router.service(EventService, {
          async listEvents() {
            if (fail) throw new ConnectError("no", Code.PermissionDenied);
            return { events: [] };
          },
          async *watchEvents() {
            yield { event: { id: "1" } };
            throw new ConnectError("gone", Code.Unavailable);
          },
        }),
      { router: { interceptors: [metricsInterceptor(metrics)] } },
    );
    const client = createClient(EventService, transport);
    await client.listEvents({});
    await client.listEvents({});
    fail = true;
    await expect(client.listEvents({})).rejects.toThrow();
    await expect(
      (async () => {
        for await (const _ of client.watchEvents({})) {
          // one event, then the stream fails
        }
      })(),
    ).rejects.toThrow();

    expect(await requests(metrics)).toEqual({
      "cloudless.v1.EventService/ListEvents ok": 2,
      "cloudless.v1.EventService/ListEvents permission_denied": 1,
      "cloudless.v1.EventService/WatchEvents unavailable": 1,
    });
    expect(await timedCalls(metrics)).toEqual({
      "cloudless.v1.EventService/ListEvents": 3,
      "cloudless.v1.EventService/WatchEvents": 1,
    });
  });

  it("REQ-070 NFR-S1 refusals before routing are counted with a bounded method label", async () => {
    const metrics = createCoordinatorMetrics({ defaultMetrics: false });
    expect(knownProcedures.has("cloudless.v1.NodeService/ListNodes")).toBe(true);
    countRefusedRequest(metrics, "/cloudless.v1.NodeService/ListNodes");
    countRefusedRequest(metrics, "/metrics");
    countRefusedRequest(metrics, "/../../etc/passwd-and-anything-a-scanner-sends");
    expect(await requests(metrics)).toEqual({
      "cloudless.v1.NodeService/ListNodes unauthenticated": 1,
      "other unauthenticated": 2,
    });
  });

  it("REQ-070 the procedures counted by name are the ones the modules route (ADR 0045), today exactly the known ones", async () => {
    const api = await startInProcessApi();
    try {
      const routed = proceduresOf((router) => api.modules.routes(router));
      expect([...routed].sort()).toEqual([...knownProcedures].sort());
      const metrics = createCoordinatorMetrics({ defaultMetrics: false });
      countRefusedRequest(metrics, "/cloudless.v1.WorkloadService/ApplyWorkload", routed);
      countRefusedRequest(metrics, "/cloudless.v1.NoSuchService/Call", routed);
      expect(await requests(metrics)).toEqual({
        "cloudless.v1.WorkloadService/ApplyWorkload unauthenticated": 1,
        "other unauthenticated": 1,
      });
    } finally {
      await api.close();
    }
  });
});

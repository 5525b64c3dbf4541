import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { EventService } from "../../api/gen/cloudless/v1/event_pb.js";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  NodeService,
} from "../../api/gen/cloudless/v1/node_pb.js";
import { ServiceService } from "../../api/gen/cloudless/v1/service_pb.js";
import { TokenService } from "../../api/gen/cloudless/v1/token_pb.js";
import { WorkloadService } from "../../api/gen/cloudless/v1/workload_pb.js";
import { generateKeyAndCsr } from "../../api/identity.js";
import {
  anonymous,
  type InProcessApi,
  nodePeer,
  startInProcessApi,
} from "../api/testing/inProcessApi.js";

async function refusal(call: Promise<unknown>): Promise<ConnectError> {
  const error = await call.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  if (!(error instanceof ConnectError)) throw new Error(`expected a refusal, got ${String(error)}`);
  return error;
}

let api: InProcessApi;
beforeEach(async () => {
  api = await startInProcessApi();
});
afterEach(async () => {
  await api.close();
});

async function enroll(name: string): Promise<void> {
  const { token } = await api.client(TokenService).createToken({ ttlSeconds: 600 });
  const { csrPem } = await generateKeyAndCsr({ commonName: name });
  await api.client(NodeService, anonymous).enroll({ name, token, csrPem, zone: "a", region: "eu" });
}

/** A heartbeat stream the test drives; `next(match)` waits for a response that matches. */
function heartbeatStream(name: string) {
  const pending: HeartbeatRequest[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  async function* requests(): AsyncGenerator<HeartbeatRequest> {
    for (;;) {
      const next = pending.shift();
      if (next) {
        yield next;
        continue;
      }
      if (ended) return;
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
    }
  }
  const push = (kind: MessageInitShape<typeof HeartbeatRequestSchema>["kind"]) => {
    pending.push(create(HeartbeatRequestSchema, { kind }));
    wake?.();
  };
  push({
    case: "hello",
    value: {
      nodeName: name,
      capacity: { cpuMillicores: 4000, memoryMib: 4096 },
      info: { drivers: ["process"] },
      zone: "a",
      region: "eu",
    },
  });
  const responses = api.client(NodeService, nodePeer(name)).heartbeat(requests());
  const iterator = responses[Symbol.asyncIterator]() as AsyncIterator<HeartbeatResponse>;
  // A read in flight outlives the wait that started it, so no response is lost.
  let inFlight: Promise<IteratorResult<HeartbeatResponse>> | undefined;
  let seq = 1n;
  return {
    push,
    /**
     * The next response that matches, within a deadline (no fixed sleeps). While waiting
     * the manual clock moves on (the workload controller's passes run on it) and the
     * node beats, as an agent would.
     */
    async next(
      match: (r: HeartbeatResponse) => boolean,
      timeoutMs = 5_000,
    ): Promise<HeartbeatResponse> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (Date.now() > deadline)
          throw new Error("no matching heartbeat response before the deadline");
        let timer: NodeJS.Timeout | undefined;
        inFlight ??= iterator.next();
        const result = await Promise.race([
          inFlight,
          new Promise<"tick">((resolve) => {
            timer = setTimeout(() => resolve("tick"), 20);
          }),
        ]);
        clearTimeout(timer);
        if (result === "tick") {
          push({ case: "beat", value: { seq: seq++ } });
          api.clock.advance(100);
          continue;
        }
        if (result.done) throw new Error("heartbeat stream ended");
        inFlight = undefined;
        if (match(result.value)) return result.value;
      }
    },
    end() {
      ended = true;
      wake?.();
    },
  };
}

const webSpec = (extra = "") => `
apiVersion: cloudless/v1
kind: Workload
metadata: {name: web}
spec:
  command: ["/bin/sleep", "600"]
  resources: {cpuMillicores: 100, memoryMiB: 64}
  replicas: 1
  ports: [{name: http, containerPort: 8080}]
${extra}`;

describe("services module in process (heartbeat stream, router transport)", () => {
  it("REQ-041 a full service range: the service has no VIP and an event says why; nothing crashes, others keep theirs", async () => {
    await api.close();
    // A /28 has 12 usable addresses (16 less network, .1, DNS and broadcast).
    api = await startInProcessApi({ coordinatorOptions: { serviceCidr: "10.99.0.0/28" } });
    await api.lead();
    const workloads = api.client(WorkloadService);
    for (let i = 0; i < 13; i++) {
      await workloads.applyWorkload({
        specText: webSpec().replace("name: web", `name: s${String(i).padStart(2, "0")}`),
      });
    }
    const services = api.client(ServiceService);
    let listed = await services.listServices({});
    for (let i = 0; i < 100 && listed.services.filter((s) => s.vip !== "").length < 12; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      listed = await services.listServices({});
    }
    expect(listed.serviceCidr).toBe("10.99.0.0/28");
    const vips = listed.services.map((s) => s.vip);
    expect(vips.filter((vip) => vip !== "")).toHaveLength(12);
    expect(new Set(vips.filter((vip) => vip !== "")).size).toBe(12);
    expect(vips.filter((vip) => vip === "")).toHaveLength(1);
    for (const reserved of ["10.99.0.0", "10.99.0.1", "10.99.0.10", "10.99.0.15"]) {
      expect(vips).not.toContain(reserved);
    }
    const events = await api
      .client(EventService)
      .listEvents({ types: ["ServiceAddressUnavailable"] });
    expect(events.events.map((e) => e.reason)).toEqual(["ServiceRangeFull"]);
    expect(events.events[0]?.message).toContain(
      "no free address in the service range 10.99.0.0/28",
    );
    // Deleting a service frees its address for the one waiting.
    await workloads.deleteWorkload({ name: "s00" });
    for (let i = 0; i < 100; i++) {
      listed = await services.listServices({});
      if (listed.services.every((s) => s.vip !== "")) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(listed.services.map((s) => s.vip).filter((vip) => vip !== "")).toHaveLength(12);
  });

  it("REQ-041 REQ-042 a heartbeat client receives a NetworkSnapshot with the service when it is applied, and a new version when a replica's readiness changes", async () => {
    await enroll("n1");
    // Coordinators in the registry: an alive one is a relay, a stale one is not.
    const now = api.clock.nowMs();
    await api.store.put(
      "/coordinators/c1",
      JSON.stringify({ id: "c1", url: "https://10.0.0.1:7443", lastSeenMs: now + 600_000 }),
    );
    await api.store.put(
      "/coordinators/c2",
      JSON.stringify({ id: "c2", url: "https://10.0.0.2:7443", lastSeenMs: now - 60_000 }),
    );
    await api.lead();
    const stream = heartbeatStream("n1");
    try {
      await stream.push({
        case: "network",
        value: { meshPort: 7444, advertiseAddresses: ["203.0.113.5"], relay: true, peers: [] },
      });
      await api.client(WorkloadService).applyWorkload({ specText: webSpec() });
      const assigned = await stream.next((r) => (r.assignments?.replicas.length ?? 0) === 1);
      const replicaId = assigned.assignments?.replicas[0]?.replicaId ?? "";
      const report = (ready: boolean) =>
        stream.push({
          case: "reports",
          value: {
            full: true,
            replicas: [
              {
                replicaId,
                phase: "Running",
                ready,
                hostPorts: { http: 31080 },
                driver: "process",
                generation: 1n,
              },
            ],
          },
        });
      report(false);
      const first = await stream.next(
        (r) => r.network?.services.some((s) => s.endpoints.length === 1) ?? false,
      );
      const web = first.network?.services.find((s) => s.name === "web");
      expect(web).toMatchObject({
        namespace: "default",
        dnsName: "web.default.svc.cluster.local",
        vip: expect.stringMatching(/^10\.43\.\d+\.\d+$/),
        ports: [expect.objectContaining({ name: "http", port: 8080, protocol: "tcp" })],
      });
      expect(web?.endpoints[0]).toMatchObject({
        replicaId,
        node: "n1",
        zone: "a",
        ready: false,
        weight: 100,
      });
      expect(web?.endpoints[0]?.hostPorts).toEqual({ http: 31080 });
      expect(first.network?.serviceCidr).toBe("10.43.0.0/16");
      expect(first.network?.clusterDomain).toBe("cluster.local");
      expect(first.network?.coordinatorRelays).toEqual(["10.0.0.1:7443"]);
      expect(first.network?.peers).toEqual([
        expect.objectContaining({
          node: "n1",
          meshPort: 7444,
          relay: true,
          addresses: ["203.0.113.5", "127.0.0.2"],
        }),
      ]);
      report(true);
      const second = await stream.next(
        (r) => r.network?.services.find((s) => s.name === "web")?.endpoints[0]?.ready === true,
      );
      expect(second.network?.version).toBeGreaterThan(first.network?.version ?? 0n);
      expect(second.network?.services[0]?.vip).toBe(web?.vip);

      // The API shows the same service; weight changes start no rollout but reach agents.
      const got = await api.client(ServiceService).getService({ name: "web" });
      expect(got.service?.vip).toBe(web?.vip);
      expect(got.service?.endpoints[0]?.ready).toBe(true);
      const applied = await api
        .client(WorkloadService)
        .applyWorkload({ specText: webSpec("  service: {weight: 0}") });
      expect(applied.action).toBe("updated");
      expect(applied.workload?.status?.revision).toBe(1n);
      const drained = await stream.next((r) => r.network?.services[0]?.endpoints[0]?.weight === 0);
      expect(drained.network?.services[0]?.vip).toBe(web?.vip);
      const peers = await api.client(ServiceService).listPeers({});
      expect(peers.nodes.map((n) => [n.node, n.meshPort, n.relay])).toEqual([["n1", 7444, true]]);
      // A follower answers from the store record the leader wrote (any coordinator).
      await api.modules.onFollower();
      api.leadership.isLeader = false;
      const fromStore = await api.client(ServiceService).listPeers({ node: "n1" });
      expect(fromStore.nodes.map((n) => [n.node, n.meshPort, n.addresses])).toEqual([
        ["n1", 7444, ["203.0.113.5"]],
      ]);
    } finally {
      stream.end();
    }
  });

  it("REQ-041 the VIP is stored: a new leadership term (restart or leader change) keeps it; deleting the workload releases it", async () => {
    await api.lead();
    await api.client(WorkloadService).applyWorkload({ specText: webSpec() });
    const services = api.client(ServiceService);
    const vipOf = async () => (await services.getService({ name: "web" })).service?.vip ?? "";
    let vip = "";
    for (let i = 0; i < 100 && vip === ""; i++) {
      vip = await vipOf();
      if (vip === "") await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(vip).toMatch(/^10\.43\./);
    // The term ends (demotion); a follower answers from the store with the same VIP.
    await api.modules.onFollower();
    api.leadership.isLeader = false;
    expect(await vipOf()).toBe(vip);
    await api.lead();
    // Another service takes another address; web keeps its own.
    await api.client(WorkloadService).applyWorkload({
      specText: webSpec().replace("name: web", "name: api"),
    });
    let apiVip = "";
    for (let i = 0; i < 100 && apiVip === ""; i++) {
      apiVip =
        (await services.getService({ name: "api" }).catch(() => undefined))?.service?.vip ?? "";
      if (apiVip === "") await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(apiVip).not.toBe(vip);
    expect(await vipOf()).toBe(vip);
    await api.client(WorkloadService).deleteWorkload({ name: "web" });
    for (let i = 0; i < 100; i++) {
      if ((await api.store.get("/services/default/web")) === undefined) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(await api.store.get("/services/default/web")).toBeUndefined();
    expect((await refusal(services.getService({ name: "web" }))).code).toBe(Code.NotFound);
  });

  it("REQ-041 two workloads naming one service with a clashing port: the later apply is refused naming the other", async () => {
    await api
      .client(WorkloadService)
      .applyWorkload({ specText: webSpec("  service: {name: shop}") });
    const clash = await refusal(
      api.client(WorkloadService).applyWorkload({
        specText: webSpec("  service: {name: shop}")
          .replace("name: web", "name: web2")
          .replace("containerPort: 8080", "containerPort: 9090"),
      }),
    );
    expect(clash.code).toBe(Code.FailedPrecondition);
    expect(clash.rawMessage).toBe(
      'spec.service: service "shop" port "http" is 8080 in workload "web" but 9090 here; use the same number or another service.name',
    );
  });

  it("REQ-041 NFR-S1 the service API is the administrator's, and checks names before work", async () => {
    const asNode = api.client(ServiceService, nodePeer("n1"));
    expect((await refusal(asNode.listServices({}))).code).toBe(Code.PermissionDenied);
    const services = api.client(ServiceService);
    const bad = await refusal(services.getService({ name: "Web_1" }));
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.rawMessage).toContain('name "Web_1" is not a DNS label');
    expect((await refusal(services.getService({ name: "" }))).code).toBe(Code.InvalidArgument);
    expect((await refusal(services.listPeers({ node: "x".repeat(500) }))).code).toBe(
      Code.InvalidArgument,
    );
    expect((await services.listServices({})).services).toEqual([]);
  });
});

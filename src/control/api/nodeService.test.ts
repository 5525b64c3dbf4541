import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { EventService } from "../../api/gen/cloudless/v1/event_pb.js";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  NodeService,
} from "../../api/gen/cloudless/v1/node_pb.js";
import { TokenService } from "../../api/gen/cloudless/v1/token_pb.js";
import { generateKeyAndCsr } from "../../api/identity.js";
import { limits } from "../../api/limits.js";
import {
  anonymous,
  type InProcessApi,
  nodePeer,
  startInProcessApi,
} from "./testing/inProcessApi.js";

async function refusal(call: Promise<unknown>): Promise<ConnectError> {
  const error = await call.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  if (!(error instanceof ConnectError)) throw new Error(`expected a refusal, got ${String(error)}`);
  return error;
}

let api: InProcessApi;
let csrPem: string;
beforeEach(async () => {
  api = await startInProcessApi();
  csrPem = (await generateKeyAndCsr({ commonName: "n1" })).csrPem;
});
afterEach(async () => {
  await api.close();
});

async function newToken(): Promise<string> {
  return (await api.client(TokenService).createToken({ ttlSeconds: 600 })).token;
}

async function enroll(name: string) {
  return api.client(NodeService, anonymous).enroll({ name, token: await newToken(), csrPem });
}

/** A heartbeat stream whose requests are pushed by the test; `end()` closes it. */
function heartbeatStream(name: string, as = name) {
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
  const push = (request: HeartbeatRequest) => {
    pending.push(request);
    wake?.();
  };
  push(
    create(HeartbeatRequestSchema, {
      kind: {
        case: "hello",
        value: {
          nodeName: name,
          capacity: { cpuMillicores: 2000, memoryMib: 2048 },
          region: "eu",
          zone: "eu-1",
        },
      },
    }),
  );
  const responses = api.client(NodeService, nodePeer(as)).heartbeat(requests());
  return {
    responses: responses[Symbol.asyncIterator]() as AsyncIterator<HeartbeatResponse>,
    end() {
      ended = true;
      wake?.();
    },
  };
}

describe("node API in process (router transport, ManualClock)", () => {
  it("REQ-001 contract: a token enrolls a node once: certificate, uid and cluster; the node waits for its first heartbeat", async () => {
    const enrolled = await enroll("n1");
    expect(enrolled.nodeName).toBe("n1");
    expect(enrolled.clusterName).toBe("test");
    expect(enrolled.certificatePem).toMatch(/^-----BEGIN CERTIFICATE-----/);
    expect(enrolled.nodeUid).toMatch(/^[0-9a-f-]{36}$/);
    const listed = await api.client(NodeService).listNodes({});
    expect(listed.nodes.map((n) => [n.name, n.status])).toEqual([["n1", "NotReady"]]);
  });

  it("REQ-001 NFR-S1 contract: a used or malformed token, a taken name, a bad name and an oversized CSR are refused, and refusals are events", async () => {
    const nodes = api.client(NodeService, anonymous);
    const token = await newToken();
    await nodes.enroll({ name: "n1", token, csrPem });
    const reused = await refusal(nodes.enroll({ name: "n2", token, csrPem }));
    expect(reused.code).toBe(Code.Unauthenticated);
    const malformed = await refusal(nodes.enroll({ name: "n2", token: "nope", csrPem }));
    expect(malformed.code).toBe(Code.Unauthenticated);
    const taken = await refusal(nodes.enroll({ name: "n1", token: await newToken(), csrPem }));
    expect(taken.code).toBe(Code.AlreadyExists);
    expect(taken.rawMessage).toContain('node "n1" is already enrolled');
    const badName = await refusal(nodes.enroll({ name: "N 1", token: await newToken(), csrPem }));
    expect(badName.code).toBe(Code.InvalidArgument);
    expect(badName.rawMessage).toMatch(/^name: /);
    const bigCsr = await refusal(
      nodes.enroll({
        name: "n3",
        token: await newToken(),
        csrPem: "x".repeat(limits.csrPemBytes + 1),
      }),
    );
    expect(bigCsr.code).toBe(Code.InvalidArgument);
    expect(bigCsr.rawMessage).toContain(`at most ${limits.csrPemBytes} bytes`);
    const events = await api.client(EventService).listEvents({ types: ["EnrollmentRefused"] });
    // Refusals from one address are rate-limited: the first is recorded.
    expect(events.events.length).toBeGreaterThanOrEqual(1);
    expect(events.events[0]?.actor).toBe(`anonymous@${anonymous.address}`);
    expect((await api.client(NodeService).listNodes({})).nodes.map((n) => n.name)).toEqual(["n1"]);
  });

  it("NFR-R1 contract: a follower refuses heartbeats and names the leader", async () => {
    await enroll("n1");
    api.leadership.leaderUrl = "https://10.0.0.9:6443";
    const stream = heartbeatStream("n1");
    const refused = await refusal(stream.responses.next());
    expect(refused.code).toBe(Code.Unavailable);
    expect(refused.rawMessage).toBe("not the leader; the leader is https://10.0.0.9:6443");
    stream.end();
  });

  it("REQ-002 REQ-010 contract: on the leader a hello makes the node Ready with what it reports; the ack names uid and cluster", async () => {
    const enrolled = await enroll("n1");
    await api.lead();
    const stream = heartbeatStream("n1");
    const first = await stream.responses.next();
    expect(first.done).toBe(false);
    expect(first.value?.nodeUid).toBe(enrolled.nodeUid);
    expect(first.value?.clusterId).toBe(enrolled.clusterId);
    const node = (await api.client(NodeService).getNode({ name: "n1" })).node;
    expect(node?.status).toBe("Ready");
    expect(node?.zone).toBe("eu-1");
    expect(node?.capacity?.cpuMillicores).toBe(2000);
    // A deleted node's stream ends at once.
    await api.client(NodeService).deleteNode({ name: "n1" });
    // Messages already queued (the services module's NetworkSnapshot) come first.
    const ended = await refusal(
      (async () => {
        for (let read = 0; read < 10; read++) await stream.responses.next();
      })(),
    );
    expect(ended.code).toBe(Code.Unauthenticated);
    expect(ended.rawMessage).toContain('node "n1" was deleted from the cluster');
    stream.end();
  });

  it("NFR-S1 contract: a node may not heartbeat as another; the attempt is a security event", async () => {
    await enroll("n1");
    await api.lead();
    const stream = heartbeatStream("n1", "n2");
    const denied = await refusal(stream.responses.next());
    expect(denied.code).toBe(Code.PermissionDenied);
    expect(denied.rawMessage).toBe('node "n2" may not act as node "n1"');
    stream.end();
    const events = await api.client(EventService).listEvents({ types: ["PermissionDenied"] });
    expect(events.events.map((e) => e.reason)).toEqual(["ImpersonationAttempt"]);
  });

  it("NFR-S1 contract: nodes read only themselves; listing, cordoning and deleting are the administrator's", async () => {
    await enroll("n1");
    const asNode = api.client(NodeService, nodePeer("n1"));
    expect((await asNode.getNode({ name: "n1" })).node?.name).toBe("n1");
    expect((await refusal(asNode.getNode({ name: "n2" }))).code).toBe(Code.PermissionDenied);
    expect((await refusal(asNode.listNodes({}))).code).toBe(Code.PermissionDenied);
    expect((await refusal(asNode.cordonNode({ name: "n1" }))).code).toBe(Code.PermissionDenied);
    const admin = api.client(NodeService);
    expect((await admin.drainNode({ name: "n1" })).node?.draining).toBe(true);
    expect((await admin.uncordonNode({ name: "n1" })).node?.cordoned).toBe(false);
    await admin.deleteNode({ name: "n1" });
    expect((await refusal(admin.getNode({ name: "n1" }))).code).toBe(Code.NotFound);
  });
});

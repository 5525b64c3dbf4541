import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { type HeartbeatRequest, HeartbeatResponseSchema } from "../api/gen/cloudless/v1/node_pb.js";
import { ManualClock } from "../lib/clock.js";
import { seededRng } from "../lib/rng.js";
import { silentLogger } from "../observe/logger.js";
import { FakeDriver } from "./drivers/fakeDriver.js";
import { ReplicaOwner } from "./drivers/index.js";
import { ReplicaModule } from "./replicaModule.js";
import { createFileReservationAllocator } from "./supervisor/hostPortReservations.js";

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

function assignments(extraSpec: Record<string, unknown>) {
  const spec = {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: "web", namespace: "shop" },
    spec: { image: "nginx:1", resources: { cpuMillicores: 10, memoryMiB: 8 }, ...extraSpec },
  };
  return create(HeartbeatResponseSchema, {
    assignments: {
      version: 1n,
      replicas: [
        {
          replicaId: "web-1",
          namespace: "shop",
          workload: "web",
          revision: 1n,
          specJson: JSON.stringify(spec),
        },
      ],
    },
  });
}

async function startedModule() {
  const dir = await mkdtemp(path.join(tmpdir(), "cloudless-replica-module-"));
  const clock = new ManualClock();
  const driver = new FakeDriver("container", clock);
  const module = new ReplicaModule({
    nodeName: "edge-1",
    dataDir: dir,
    agentVersion: "0.1.0",
    drivers: new Map([[driver.name, driver]]),
    hostPorts: createFileReservationAllocator({
      nodeName: "edge-1",
      dir: path.join(dir, "ports"),
    }),
    owner: new ReplicaOwner("0123456789abcdef", "edge-1", "uid-1"),
    clock,
    rng: seededRng(7),
    logger: silentLogger,
    persistState: false,
    onProbeResult: () => undefined,
  });
  const sent: HeartbeatRequest[] = [];
  await module.start({ send: (message) => sent.push(message) });
  cleanups.push(async () => {
    await module.stop({ leaving: true });
    await rm(dir, { recursive: true, force: true });
  });
  const settle = async () => {
    for (let i = 0; i < 20; i++) {
      clock.advance(100);
      await new Promise((resolve) => setImmediate(resolve));
    }
  };
  return { module, driver, sent, settle };
}

describe("the replica supervisor as an agent module", () => {
  it("REQ-071 NFR-A1 contract: a desired set from a newer coordinator keeps the running replica and raises one UnknownSpecFields event", async () => {
    const { module, driver, sent, settle } = await startedModule();
    module.receive(assignments({}));
    await settle();
    expect(driver.replicas.get("web-1")?.state).toBe("running");
    const startsBefore = driver.calls.filter((call) => call.method === "start").length;

    module.receive(assignments({ futureSidecar: { image: "x" } }));
    module.receive(assignments({ futureSidecar: { image: "x" } }));
    await settle();
    expect(driver.replicas.get("web-1")?.state).toBe("running");
    expect(driver.calls.filter((call) => call.method === "stop")).toEqual([]);
    expect(driver.calls.filter((call) => call.method === "start")).toHaveLength(startsBefore);
    const events = sent.flatMap((message) =>
      message.kind.case === "events" ? message.kind.value.events : [],
    );
    expect(events.map((event) => event.reason)).toEqual(["UnknownSpecFields"]);
    expect(events[0]?.message).toContain("spec.futureSidecar");
    // Status resent on a timer carries the reports, not the event again.
    expect(module.statusMessages().map((message) => message.kind.case)).toEqual(["reports"]);
  });

  it("REQ-071 NFR-A1 contract: a spec the agent cannot read keeps what the replica ran and says so", async () => {
    const { module, driver, sent, settle } = await startedModule();
    module.receive(assignments({}));
    await settle();
    module.receive(assignments({ resources: { cpuMillicores: "lots", memoryMiB: 8 } }));
    await settle();
    expect(driver.replicas.get("web-1")?.state).toBe("running");
    const events = sent.flatMap((message) =>
      message.kind.case === "events" ? message.kind.value.events : [],
    );
    expect(events.map((event) => event.reason)).toEqual(["SpecNotUnderstood"]);
    expect(events[0]?.message).toContain("keeps running revision 1");
  });
});

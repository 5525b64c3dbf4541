import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { waitFor } from "../../test/helpers/processes.js";
import { type HeartbeatRequest, HeartbeatResponseSchema } from "../api/gen/cloudless/v1/node_pb.js";
import { ManualClock } from "../lib/clock.js";
import { seededRng } from "../lib/rng.js";
import { silentLogger } from "../observe/logger.js";
import { FakeDriver } from "./drivers/fakeDriver.js";
import { ReplicaOwner } from "./drivers/index.js";
import { ReplicaFiles } from "./replicaFiles/replicaFiles.js";
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

async function startedModule(withFiles?: (dir: string) => ReplicaFiles) {
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
    ...(withFiles ? { files: withFiles(dir) } : {}),
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

  it("REQ-063 a replica whose secret lacks an env key is not started: one ReplicaFilesFailed event naming the secret and key, never a value; files are written and swapped for a referenced secret", async () => {
    let password = "value-one-4c1d";
    let version = 1n;
    const { module, driver, sent, settle } = await startedModule(
      (dir) =>
        new ReplicaFiles({
          dataDir: dir,
          logger: silentLogger,
          secretsOnTmpfs: false,
          fetch: async () => ({ version, data: { password: Buffer.from(password) } }),
        }),
    );
    module.receive(
      assignments({ secrets: [{ name: "db", env: [{ name: "DB_USER", key: "user" }] }] }),
    );
    await settle();
    await settle();
    expect(driver.replicas.has("web-1")).toBe(false);
    const events = sent.flatMap((message) =>
      message.kind.case === "events" ? message.kind.value.events : [],
    );
    expect(events.map((event) => `${event.type} ${event.reason}`)).toEqual([
      "ReplicaFilesFailed SecretKeyMissing",
    ]);
    expect(events[0]?.message).toBe(
      'replica web-1 is not started: secret db has no key "user" for environment variable DB_USER; add the key to the secret or fix spec.secrets',
    );
    expect(
      JSON.stringify(sent, (_key, value) => (typeof value === "bigint" ? String(value) : value)),
    ).not.toContain(password);

    // The spec fixed: the replica starts with its mount, and a pushed version swaps it.
    const fixed = assignments({ secrets: [{ name: "db" }] });
    const fixedReplica = fixed.assignments?.replicas[0];
    if (fixedReplica) fixedReplica.revision = 2n;
    module.receive(fixed);
    // The files are written with real I/O: wait in real time, moving the clock meanwhile.
    await waitFor("the replica to start", async () => {
      await settle();
      return driver.replicas.get("web-1")?.state === "running";
    });
    const started = driver.replicas.get("web-1")?.spec;
    expect(started?.mounts?.map((mount) => mount.target)).toEqual(["/run/secrets/db"]);
    const source = started?.mounts?.[0]?.source ?? "";
    expect(await readFile(path.join(source, "password"), "utf8")).toBe("value-one-4c1d");
    password = "value-two-9e0a";
    version = 2n;
    module.receive(
      create(HeartbeatResponseSchema, {
        objectVersions: {
          objects: [{ kind: "secret", namespace: "shop", name: "db", version: 2n }],
        },
      }),
    );
    await waitFor(
      "the swapped file",
      async () => (await readFile(path.join(source, "password"), "utf8")) === "value-two-9e0a",
    );
  });
});

import { Code, ConnectError } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { EventService } from "../../api/gen/cloudless/v1/event_pb.js";
import { WorkloadService } from "../../api/gen/cloudless/v1/workload_pb.js";
import { limits } from "../../api/limits.js";
import { type ReplicaRecord, replicaKey, revisionListPrefix } from "../controllers/records.js";
import { type InProcessApi, nodePeer, startInProcessApi } from "./testing/inProcessApi.js";

function spec(name: string, overrides: { replicas?: number; command?: string[] } = {}) {
  return JSON.stringify({
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name },
    spec: {
      command: overrides.command ?? ["/bin/sleep", "600"],
      resources: { cpuMillicores: 100, memoryMiB: 64 },
      replicas: overrides.replicas ?? 2,
    },
  });
}

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

describe("workload API in process (router transport, ManualClock)", () => {
  it("REQ-080 contract: apply creates, answers the same spec with unchanged, a count change with scaled, a template change with a new revision", async () => {
    const workloads = api.client(WorkloadService);
    const created = await workloads.applyWorkload({ specText: spec("web") });
    expect(created.action).toBe("created");
    expect(created.workload?.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(Number(created.workload?.createdAt?.seconds) * 1000).toBe(
      Math.floor(api.clock.nowMs() / 1000) * 1000,
    );
    expect(created.workload?.status?.revision).toBe(1n);
    expect(created.workload?.status?.desiredReplicas).toBe(2);

    expect((await workloads.applyWorkload({ specText: spec("web") })).action).toBe("unchanged");

    api.clock.advance(5_000);
    const scaled = await workloads.applyWorkload({ specText: spec("web", { replicas: 3 }) });
    expect(scaled.action).toBe("scaled");
    expect(scaled.workload?.status?.revision).toBe(1n);
    expect(Number(scaled.workload?.updatedAt?.seconds) * 1000).toBe(
      Math.floor(api.clock.nowMs() / 1000) * 1000,
    );

    const updated = await workloads.applyWorkload({
      specText: spec("web", { replicas: 3, command: ["/bin/sleep", "700"] }),
    });
    expect(updated.action).toBe("updated");
    expect(updated.workload?.status?.revision).toBe(2n);
    expect(updated.workload?.uid).toBe(created.workload?.uid);

    const events = await api.client(EventService).listEvents({});
    expect(
      events.events
        .filter((e) => e.subject === "workload/default/web")
        .map((e) => `${e.type}/${e.reason}/${e.actor}`),
    ).toEqual([
      "WorkloadCreated/Applied/admin/admin",
      "WorkloadScaled/Applied/admin/admin",
      "WorkloadUpdated/NewRevision/admin/admin",
    ]);
  });

  it("REQ-080 contract: a dry run answers what apply would do and writes nothing, no uid, no times", async () => {
    const workloads = api.client(WorkloadService);
    const before = await api.store.currentRevision();
    const preview = await workloads.applyWorkload({ specText: spec("web"), dryRun: true });
    expect(preview.action).toBe("created");
    expect(preview.workload?.uid).toBe("");
    expect(preview.workload?.createdAt).toBeUndefined();
    expect(await api.store.currentRevision()).toBe(before);
    const missing = await refusal(workloads.getWorkload({ name: "web" }));
    expect(missing.code).toBe(Code.NotFound);
    expect(missing.rawMessage).toBe(
      'workload "web" not found in namespace "default"; run `cloudless workload list` to see workloads',
    );

    await workloads.applyWorkload({ specText: spec("web") });
    const after = await api.store.currentRevision();
    const change = await workloads.applyWorkload({
      specText: spec("web", { command: ["/bin/true"] }),
      dryRun: true,
    });
    expect(change.action).toBe("updated");
    expect(change.workload?.status?.revision).toBe(2n);
    expect(await api.store.currentRevision()).toBe(after);
  });

  it("REQ-081 contract: a bad spec, a missing spec and one over specBytes are refused with one line naming what is wrong, before anything is written", async () => {
    const workloads = api.client(WorkloadService);
    const before = await api.store.currentRevision();
    const invalid = await refusal(
      workloads.applyWorkload({ specText: '{"apiVersion":"cloudless/v1","kind":"Workload"}' }),
    );
    expect(invalid.code).toBe(Code.InvalidArgument);
    expect(invalid.rawMessage).toMatch(/^workload spec is invalid:\n/);
    const none = await refusal(workloads.applyWorkload({}));
    expect(none.code).toBe(Code.InvalidArgument);
    expect(none.rawMessage).toBe("no spec given: send spec_text (YAML or JSON) or spec");
    const huge = await refusal(
      workloads.applyWorkload({ specText: `# ${"x".repeat(limits.specBytes)}\n${spec("web")}` }),
    );
    expect(huge.code).toBe(Code.InvalidArgument);
    expect(huge.rawMessage).toContain("(limit specBytes)");
    expect(await api.store.currentRevision()).toBe(before);
  });

  it("REQ-080 contract: scale checks its range before it reads; scales and caps minAvailable; names a missing workload", async () => {
    const workloads = api.client(WorkloadService);
    await workloads.applyWorkload({ specText: spec("web") });
    const negative = await refusal(workloads.scaleWorkload({ name: "web", replicas: -1 }));
    expect(negative.code).toBe(Code.InvalidArgument);
    expect(negative.rawMessage).toBe("replicas must be a non-negative integer, not -1");
    const tooMany = await refusal(
      workloads.scaleWorkload({ name: "web", replicas: limits.replicasPerWorkload + 1 }),
    );
    expect(tooMany.code).toBe(Code.InvalidArgument);
    expect(tooMany.rawMessage).toBe(
      `replicas must be at most ${limits.replicasPerWorkload} (limit replicasPerWorkload), not ${limits.replicasPerWorkload + 1}`,
    );
    const missing = await refusal(workloads.scaleWorkload({ name: "api", replicas: 1 }));
    expect(missing.code).toBe(Code.NotFound);
    const badName = await refusal(workloads.scaleWorkload({ name: "Web_1", replicas: 1 }));
    expect(badName.code).toBe(Code.InvalidArgument);
    expect(badName.rawMessage).toContain('name "Web_1" is not a workload name');

    const scaled = await workloads.scaleWorkload({ name: "web", replicas: 0 });
    expect(scaled.workload?.status?.desiredReplicas).toBe(0);
    expect(scaled.workload?.status?.minAvailable).toBe(0);
    const got = await workloads.getWorkload({ name: "web" });
    const stored = got.workload?.spec as { spec?: { replicas?: number } } | undefined;
    expect(stored?.spec?.replicas).toBe(0);
  });

  it("REQ-080 contract: undo rolls back to the previous template as a new revision, and says when there is none", async () => {
    const workloads = api.client(WorkloadService);
    await workloads.applyWorkload({ specText: spec("web") });
    const none = await refusal(workloads.rolloutUndo({ name: "web" }));
    expect(none.code).toBe(Code.InvalidArgument);
    expect(none.rawMessage).toBe(
      'workload "web" has no previous revision to roll back to (current revision 1)',
    );
    await workloads.applyWorkload({ specText: spec("web", { command: ["/bin/sleep", "700"] }) });
    await workloads.scaleWorkload({ name: "web", replicas: 4 });
    const undone = await workloads.rolloutUndo({ name: "web" });
    expect(undone.fromRevision).toBe(2n);
    expect(undone.toRevision).toBe(1n);
    expect(undone.workload?.status?.revision).toBe(3n);
    const restored = undone.workload?.spec as { spec: { command: string[]; replicas: number } };
    expect(restored.spec.command).toEqual(["/bin/sleep", "600"]);
    // The replica count is the current one, not the old revision's.
    expect(restored.spec.replicas).toBe(4);
    const history = await api.store.range(revisionListPrefix("default", "web"));
    expect(history.kvs).toHaveLength(3);
  });

  it("REQ-080 contract: delete removes the workload and its history; get, list and delete of a missing one say NotFound", async () => {
    const workloads = api.client(WorkloadService);
    await workloads.applyWorkload({ specText: spec("web") });
    await workloads.applyWorkload({ specText: spec("api") });
    const listed = await workloads.listWorkloads({});
    expect(listed.workloads.map((w) => w.name)).toEqual(["api", "web"]);
    expect((await workloads.listWorkloads({ namespace: "other" })).workloads).toEqual([]);
    await workloads.deleteWorkload({ name: "web" });
    expect((await api.store.range(revisionListPrefix("default", "web"))).kvs).toEqual([]);
    expect((await refusal(workloads.deleteWorkload({ name: "web" }))).code).toBe(Code.NotFound);
    expect((await refusal(workloads.getWorkload({ name: "" }))).rawMessage).toBe(
      "a workload name is required",
    );
  });

  it("NFR-S1 contract: only administrators call the workload API; a node is refused", async () => {
    const asNode = api.client(WorkloadService, nodePeer("n1"));
    const denied = await refusal(asNode.applyWorkload({ specText: spec("web") }));
    expect(denied.code).toBe(Code.PermissionDenied);
    expect((await refusal(asNode.listWorkloads({}))).code).toBe(Code.PermissionDenied);
  });

  it("NFR-R1 contract: exec and logs are the leader's; a follower names the leader, limits are checked first", async () => {
    const workloads = api.client(WorkloadService);
    await workloads.applyWorkload({ specText: spec("web") });
    // No replica is placed yet: that is said first.
    const unplaced = await refusal(workloads.execWorkload({ name: "web", command: ["true"] }));
    expect(unplaced.code).toBe(Code.Unavailable);
    expect(unplaced.rawMessage).toContain("has no placed replica yet");
    const placed: ReplicaRecord = {
      id: "r1",
      namespace: "default",
      workload: "web",
      revision: 1,
      node: "n1",
      desired: "Running",
      resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0, bandwidthMbps: 0 },
      createdAtMs: api.clock.nowMs(),
    };
    await api.store.put(replicaKey("default", "web", "r1"), JSON.stringify(placed));
    api.leadership.leaderUrl = "https://10.0.0.9:6443";
    const follower = await refusal(workloads.execWorkload({ name: "web", command: ["true"] }));
    expect(follower.code).toBe(Code.Unavailable);
    expect(follower.rawMessage).toBe("not the leader; the leader is https://10.0.0.9:6443");
    const logs = await refusal(
      (async () => {
        for await (const _ of workloads.workloadLogs({ name: "web" })) break;
      })(),
    );
    expect(logs.rawMessage).toBe("not the leader; the leader is https://10.0.0.9:6443");
    const tooLong = await refusal(
      workloads.execWorkload({ name: "web", command: ["x".repeat(limits.execCommandBytes)] }),
    );
    expect(tooLong.code).toBe(Code.InvalidArgument);
    expect(tooLong.rawMessage).toContain("(limit execCommandBytes)");
  });
});

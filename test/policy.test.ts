/**
 * Cluster policies (REQ-061, ADR 0053) with a real coordinator and the real CLI: a policy
 * is applied, a workload whose image it denies is refused at apply with the policy and rule
 * named (nothing written), `policy test` names the deciding rule, a policy that does not
 * compile is refused in one line, and only the roles that may read or change policies do.
 * The agent judges every replica again: one whose record reached the store past the API
 * (a scale, or records written straight into etcd) is refused with a PolicyDenied event.
 */
import { randomUUID } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { WorkloadSpecDocument } from "../src/api/workload/spec.js";
import {
  revisionKey,
  type WorkloadRecord,
  type WorkloadRevisionRecord,
  workloadKey,
} from "../src/control/controllers/records.js";
import { templateHash } from "../src/control/workloads/workloadRegistry.js";
import { startAgents, workloadDoc } from "./helpers/behaviour.js";
import { type EventJson, TestCluster } from "./helpers/cluster.js";
import { type EtcdCluster, etcdUnavailableReason, startEtcd } from "./helpers/etcd.js";
import { run } from "./helpers/netlab.js";
import { ensurePodman, testImage } from "./helpers/podman.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

/** The exit codes the CLI gives (src/cli/run.ts). */
const invalidArgumentExit = 2;
const permissionDeniedExit = 5;

const etcdMissing = await etcdUnavailableReason();

const imagesPolicy = `apiVersion: cloudless/v1
kind: Policy
metadata:
  name: images
spec:
  description: images come from our registry
  rules:
    - name: ours
      subject: image
      effect: allow
      match: ["registry.example.com/**"]
    - name: everything-else
      subject: image
      effect: deny
      message: pull from registry.example.com
`;

describe("cluster policies with a real coordinator (ADR 0053)", () => {
  let resources: TestResources;

  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    await resources.cleanup();
  });

  it("REQ-061 an image from a denied registry is refused at apply with the policy and rule named, nothing is written, and policy test names the deciding rule", async () => {
    const cluster = await TestCluster.start(resources);
    const dir = await resources.tempDir("cloudless-policy-");
    const policyFile = path.join(dir, "images.yaml");
    await writeFile(policyFile, imagesPolicy);

    const applied = await cluster.cli(["policy", "apply", "-f", policyFile]);
    expect(applied.code, applied.stderr).toBe(0);
    expect(applied.stdout).toBe("policy/images created: 2 rules\n");
    expect((await cluster.cli(["policy", "apply", "-f", policyFile])).stdout).toBe(
      "policy/images unchanged: 2 rules\n",
    );

    const denied = await writeSpec(
      dir,
      "miner",
      workloadDoc("miner", "default", { image: "docker.io/evil/miner:1", replicas: 1 }),
    );
    const refused = await cluster.cli(["workload", "apply", "-f", denied]);
    expect(refused.code).toBe(permissionDeniedExit);
    expect(refused.stderr).toBe(
      "error: workload default/miner is denied by policy images rule everything-else (image docker.io/evil/miner:1): pull from registry.example.com; see `cloudless policy get images`\n",
    );
    // Refused before anything was written; a dry run is judged the same way.
    const list = await cluster.cli(["workload", "list", "-o", "json"]);
    expect(list.stdout).not.toContain("miner");
    expect((await cluster.cli(["workload", "apply", "--dry-run", "-f", denied])).code).toBe(
      permissionDeniedExit,
    );

    const allowed = await writeSpec(
      dir,
      "app",
      workloadDoc("app", "default", { image: "registry.example.com/team/app:2", replicas: 1 }),
    );
    const ok = await cluster.cli(["workload", "apply", "--dry-run", "-f", allowed]);
    expect(ok.code, ok.stderr).toBe(0);

    // policy test: a dry run that names the rule; exit 1 when denied.
    const tested = await cluster.cli(["policy", "test", "-f", denied, "-o", "json"]);
    expect(tested.code).toBe(1);
    expect(JSON.parse(tested.stdout)).toEqual({
      allowed: false,
      decisions: [
        {
          subject: "image",
          item: "docker.io/evil/miner:1",
          effect: "deny",
          policy: "images",
          rule: "everything-else",
          reason:
            "denied by policy images rule everything-else (image docker.io/evil/miner:1): pull from registry.example.com",
        },
      ],
    });
    const testedOk = await cluster.cli(["policy", "test", "-f", allowed]);
    expect(testedOk.code, testedOk.stderr).toBe(0);
    expect(testedOk.stdout).toMatch(
      /image +registry\.example\.com\/team\/app:2 +allow +images +ours/,
    );
    expect(testedOk.stdout.endsWith("allowed\n")).toBe(true);

    // list and get; after delete the image is no longer refused.
    const listed = JSON.parse((await cluster.cli(["policy", "list", "-o", "json"])).stdout);
    expect(listed).toMatchObject([
      { name: "images", rules: 2, description: "images come from our registry" },
    ]);
    expect((await cluster.cli(["policy", "get", "images"])).stdout).toBe(imagesPolicy);
    expect((await cluster.cli(["policy", "delete", "images"])).code).toBe(0);
    expect((await cluster.cli(["workload", "apply", "--dry-run", "-f", denied])).code).toBe(0);
    const missing = await cluster.cli(["policy", "get", "images"]);
    expect(missing.stderr).toBe(
      'error: policy "images" not found; run `cloudless policy list` to see policies\n',
    );
  });

  it("REQ-061 NFR-S1 a policy that does not compile is refused in one line per problem; a viewer may not read policies and an operator may not change them", async () => {
    const cluster = await TestCluster.start(resources);
    const dir = await resources.tempDir("cloudless-policy-");
    const bad = path.join(dir, "bad.yaml");
    await writeFile(
      bad,
      imagesPolicy.replace(
        "message: pull from registry.example.com",
        'condition: "image.registry =="',
      ),
    );
    const refused = await cluster.cli(["policy", "apply", "-f", bad]);
    expect(refused.code).toBe(invalidArgumentExit);
    expect(refused.stderr).toMatch(
      /^error: the policy is invalid:\n {2}spec\.rules\[1\]\.condition: is not valid CEL: .+\n$/,
    );
    expect(JSON.parse((await cluster.cli(["policy", "list", "-o", "json"])).stdout)).toEqual([]);

    const good = path.join(dir, "images.yaml");
    await writeFile(good, imagesPolicy);
    const confs: Record<string, string> = {};
    for (const [name, role] of [
      ["vera", "viewer"],
      ["otto", "operator"],
    ] as const) {
      confs[name] = path.join(dir, `${name}.conf`);
      const created = await cluster.cli([
        "user",
        "create",
        name,
        "--role",
        role,
        "-f",
        confs[name],
      ]);
      expect(created.code, created.stderr).toBe(0);
    }
    const viewerList = await cluster.cli(["policy", "list"], { CLOUDLESS_CONFIG: confs.vera });
    expect(viewerList.code).toBe(permissionDeniedExit);
    expect(viewerList.stderr).toContain("it needs permission policies.read");
    const operatorApply = await cluster.cli(["policy", "apply", "-f", good], {
      CLOUDLESS_CONFIG: confs.otto,
    });
    expect(operatorApply.code).toBe(permissionDeniedExit);
    expect(operatorApply.stderr).toContain("it needs permission policies.write (role admin)");
    // An operator may read them, to learn why an apply was refused.
    expect((await cluster.cli(["policy", "apply", "-f", good])).code).toBe(0);
    const operatorList = await cluster.cli(["policy", "list"], { CLOUDLESS_CONFIG: confs.otto });
    expect(operatorList.code, operatorList.stderr).toBe(0);
    expect(operatorList.stdout).toContain("images");
  });

  it("REQ-061 the agent refuses a replica the policies deny even when its record reached the store without an apply check (a scale after the policy), with a PolicyDenied event", async () => {
    const podman = await ensurePodman();
    if (!podman.available) throw new Error(`podman unavailable: ${podman.reason}`);
    const stopPodman = podman.stop;
    try {
      await agentRefuses(podman.socketPath);
    } finally {
      for (const running of clusters.splice(0)) {
        for (const agentProcess of running.agents.values()) await agentProcess.stop(10_000);
      }
      await stopPodman();
    }
  });

  const clusters: TestCluster[] = [];

  async function agentRefuses(socketPath: string): Promise<void> {
    const cluster = await TestCluster.start(resources);
    clusters.push(cluster);
    const node = "policy-node";
    const agents = await startAgents(cluster, [
      { name: node, drivers: ["container"], socket: socketPath },
    ]);
    const agent = agents.get(node);
    const dir = await resources.tempDir("cloudless-policy-");
    // Admitted while no policy exists, with no replica yet.
    const spec = await writeSpec(
      dir,
      "locked",
      workloadDoc("locked", "default", { image: testImage, replicas: 0 }),
    );
    expect((await cluster.cli(["workload", "apply", "-f", spec])).code).toBe(0);
    const policyFile = path.join(dir, "no-test-images.yaml");
    await writeFile(
      policyFile,
      `apiVersion: cloudless/v1
kind: Policy
metadata:
  name: no-test-images
spec:
  rules:
    - name: ci-only
      subject: image
      effect: deny
      match: ["localhost/cloudless-test/**"]
      message: test images stay in CI
`,
    );
    expect((await cluster.cli(["policy", "apply", "-f", policyFile])).code).toBe(0);
    // The agent holds the policies (kept on disk, 0600, for restarts without a coordinator).
    const kept = path.join(await cluster.agentDir(node), "policies.json");
    await waitFor(
      "the agent to hold the policy",
      async () => (await readFile(kept, "utf8").catch(() => "")).includes("no-test-images"),
      15_000,
    );
    // A scale creates a replica from the stored spec without an apply check.
    const scaled = await cluster.cli(["workload", "scale", "locked", "--replicas", "1"]);
    expect(scaled.code, scaled.stderr).toBe(0);
    let refusal: EventJson | undefined;
    await waitFor(
      "a PolicyDenied event from the agent",
      async () => {
        const events = await cluster.cliJson<EventJson[]>(["events", "--type", "ReplicaRefused"]);
        refusal = events.find((event) => event.reason === "PolicyDenied");
        return refusal !== undefined;
      },
      30_000,
    );
    expect(refusal?.message).toMatch(
      /^replica locked-\S+ \(revision 1\) is denied by policy no-test-images rule ci-only \(image localhost\/cloudless-test\/busybox:1\): test images stay in CI; it is not started$/,
    );
    expect(agent?.stderr).toContain("replica refused by policy");
    // Never started: no container of this cluster's replica exists.
    const replicaId = /^replica (\S+) /.exec(refusal?.message ?? "")?.[1] ?? "";
    const containers = await run("podman", [
      "--url",
      `unix://${socketPath}`,
      "ps",
      "-a",
      "--filter",
      `label=cloudless.replica=${replicaId}`,
      "--format",
      "{{.ID}}",
    ]);
    expect(containers.stdout.trim()).toBe("");
  }
  it.skipIf(etcdMissing !== undefined)(
    "REQ-061 a workload record written straight into the etcd store, past the API, is refused by the agent with a PolicyDenied event",
    async () => {
      const podman = await ensurePodman();
      if (!podman.available) throw new Error(`podman unavailable: ${podman.reason}`);
      let etcd: EtcdCluster | undefined;
      const started: TestCluster[] = [];
      try {
        etcd = await startEtcd({ members: 1 });
        await refusedPastTheApi(etcd, podman.socketPath, started);
      } finally {
        // Agents and the coordinator first: a coordinator whose etcd is gone only retries.
        for (const cluster of started) {
          for (const agentProcess of cluster.agents.values()) await agentProcess.stop(10_000);
          await cluster.coordinator.stop(10_000);
        }
        await podman.stop();
        await etcd?.stop();
      }
    },
  );

  async function refusedPastTheApi(
    etcd: EtcdCluster,
    socketPath: string,
    started: TestCluster[],
  ): Promise<void> {
    const namespace = `/cloudless-bypass-${process.pid}`;
    const cluster = await TestCluster.start(resources, [
      "--store",
      `etcd://${etcd.endpoints.join(",")}${namespace}`,
    ]);
    started.push(cluster);
    const node = "bypass-node";
    const agents = await startAgents(cluster, [
      { name: node, drivers: ["container"], socket: socketPath },
    ]);
    const agent = agents.get(node);
    const dir = await resources.tempDir("cloudless-policy-");
    const policyFile = path.join(dir, "no-miners.yaml");
    await writeFile(
      policyFile,
      `apiVersion: cloudless/v1
kind: Policy
metadata:
  name: no-miners
spec:
  rules:
    - name: no-evil
      subject: image
      effect: deny
      match: ["registry.example.com/evil/**"]
      message: miners are not welcome
`,
    );
    expect((await cluster.cli(["policy", "apply", "-f", policyFile])).code).toBe(0);
    const kept = path.join(await cluster.agentDir(node), "policies.json");
    await waitFor(
      "the agent to hold the policy",
      async () => (await readFile(kept, "utf8").catch(() => "")).includes("no-miners"),
      15_000,
    );
    // An admitted workload: its records are what the API writes for an apply.
    const clean = await writeSpec(
      dir,
      "clean",
      workloadDoc("clean", "default", { image: testImage, replicas: 0 }),
    );
    const applied = await cluster.cli(["workload", "apply", "-f", clean]);
    expect(applied.code, applied.stderr).toBe(0);

    // Behind the API's back: the same records under a new name, with the denied image.
    const deniedImage = "registry.example.com/evil/miner:1";
    const { Etcd3 } = await import("etcd3");
    const client = new Etcd3({
      hosts: etcd.endpoints.map((e) => `http://${e}`),
      dialTimeout: 2_000,
    });
    try {
      // Where the coordinator keeps its keys in etcd: found, not assumed.
      const stored = await client.getAll().prefix(namespace).keys();
      const cleanKey = workloadKey("default", "clean");
      const found = stored.find((key) => key.endsWith(cleanKey));
      if (found === undefined) {
        throw new Error(`no key ending ${cleanKey} under ${namespace}: ${stored.join(", ")}`);
      }
      const keyPrefix = found.slice(0, found.length - cleanKey.length);
      const workloadText = await client.get(found);
      const revisionText = await client.get(`${keyPrefix}${revisionKey("default", "clean", 1)}`);
      if (workloadText === null || revisionText === null) {
        throw new Error("the applied workload's records are not in etcd");
      }
      const admitted = JSON.parse(workloadText) as WorkloadRecord;
      const admittedRevision = JSON.parse(revisionText) as WorkloadRevisionRecord;
      const template = admitted.spec as WorkloadSpecDocument;
      const spec = {
        ...template,
        metadata: { ...template.metadata, name: "miner" },
        spec: { ...template.spec, image: deniedImage, replicas: 1 },
      } as WorkloadSpecDocument;
      expect(JSON.stringify(spec)).toContain(deniedImage);
      const hash = templateHash(spec);
      const record: WorkloadRecord = {
        ...admitted,
        uid: randomUUID(),
        name: "miner",
        revision: 1,
        templateHash: hash,
        spec,
        replicas: 1,
      };
      const revision: WorkloadRevisionRecord = {
        ...admittedRevision,
        revision: 1,
        templateHash: hash,
        spec,
      };
      await client
        .if(`${keyPrefix}${workloadKey("default", "miner")}`, "Create", "==", 0)
        .then(
          client
            .put(`${keyPrefix}${revisionKey("default", "miner", 1)}`)
            .value(JSON.stringify(revision)),
          client
            .put(`${keyPrefix}${workloadKey("default", "miner")}`)
            .value(JSON.stringify(record)),
        )
        .commit();
    } finally {
      client.close();
    }

    // The coordinator's watch sees it and schedules a replica; the agent refuses it.
    let refusal: EventJson | undefined;
    await waitFor(
      "a PolicyDenied event from the agent",
      async () => {
        const events = await cluster.cliJson<EventJson[]>(["events", "--type", "ReplicaRefused"]);
        refusal = events.find((event) => event.reason === "PolicyDenied");
        return refusal !== undefined;
      },
      30_000,
    );
    expect(refusal?.message).toMatch(
      /^replica miner-\S+ \(revision 1\) is denied by policy no-miners rule no-evil \(image registry\.example\.com\/evil\/miner:1\): miners are not welcome; it is not started$/,
    );
    expect(agent?.stderr).toContain("replica refused by policy");
    // Never started: no container of the replica exists.
    const replicaId = /^replica (\S+) /.exec(refusal?.message ?? "")?.[1] ?? "";
    const containers = await run("podman", [
      "--url",
      `unix://${socketPath}`,
      "ps",
      "-a",
      "--filter",
      `label=cloudless.replica=${replicaId}`,
      "--format",
      "{{.ID}}",
    ]);
    expect(containers.stdout.trim()).toBe("");
    // The apply path had no part in it: the audit log records the apply of clean, none of miner.
    const auditFile = path.join(cluster.dataDir, "audit", "audit.log");
    const audit = await waitFor(
      "the audit log to record the apply of clean",
      async () => {
        const text = await readFile(auditFile, "utf8").catch(() => "");
        return text.includes("clean") ? text : undefined;
      },
      15_000,
    );
    expect(audit).not.toContain("miner");
  }
});

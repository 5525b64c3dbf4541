/**
 * Cluster policies (REQ-061, ADR 0053) with a real coordinator and the real CLI: a policy
 * is applied, a workload whose image it denies is refused at apply with the policy and rule
 * named (nothing written), `policy test` names the deciding rule, a policy that does not
 * compile is refused in one line, and only the roles that may read or change policies do.
 */
import { readFile, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { startAgents, workloadDoc } from "./helpers/behaviour.js";
import { type EventJson, TestCluster } from "./helpers/cluster.js";
import { run } from "./helpers/netlab.js";
import { ensurePodman, testImage } from "./helpers/podman.js";
import { TestResources, waitFor } from "./helpers/processes.js";
import { writeSpec } from "./helpers/workloads.js";

/** The exit codes the CLI gives (src/cli/run.ts). */
const invalidArgumentExit = 2;
const permissionDeniedExit = 5;

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
});

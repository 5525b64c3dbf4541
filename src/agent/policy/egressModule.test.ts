import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { HeartbeatResponseSchema } from "../../api/gen/cloudless/v1/node_pb.js";
import { PolicySet } from "../../api/policy/evaluate.js";
import { parsePolicyDocument } from "../../api/policy/parse.js";
import { silentLogger } from "../../observe/logger.js";
import { containerTableFile, EgressModule } from "./egressModule.js";
import { egressTableFor } from "./egressRules.js";

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

const denyLab = parsePolicyDocument(`apiVersion: cloudless/v1
kind: Policy
metadata: { name: egress }
spec:
  rules:
    - { name: no-lab, subject: egress, effect: deny, match: ["192.0.2.0/24"], namespaces: [default], condition: 'workload.labels.tier == "web"' }
`);

async function setup(policies: PolicySet | undefined) {
  const dir = await mkdtemp(path.join(tmpdir(), "cloudless-egress-"));
  dirs.push(dir);
  const applied: { nftables: Record<string, Record<string, unknown>>[] }[] = [];
  let current = policies;
  const module = new EgressModule({
    nodeName: "node-1",
    dataDir: dir,
    logger: silentLogger,
    policies: () => current,
    network: () => ({ services: [], exemptions: [] }),
    runNft: async (text) => {
      applied.push(JSON.parse(text));
    },
  });
  const writeUids = (workloads: Record<string, number>) =>
    writeFile(
      path.join(dir, "replica-uids.json"),
      JSON.stringify({
        version: 1,
        workloads: Object.fromEntries(
          Object.entries(workloads).map(([key, uid]) => [key, { uid, replicas: ["r1"] }]),
        ),
      }),
    );
  return {
    module,
    dir,
    applied,
    writeUids,
    setPolicies: (set: PolicySet | undefined) => {
      current = set;
    },
  };
}

const chainsOf = (ruleset: { nftables: Record<string, Record<string, unknown>>[] } | undefined) =>
  (ruleset?.nftables ?? []).flatMap((c) => {
    const chain = c.add?.chain as { name: string } | undefined;
    return chain ? [chain.name] : [];
  });
const deletesTableOnly = (
  ruleset: { nftables: Record<string, Record<string, unknown>>[] } | undefined,
) =>
  ruleset?.nftables.length === 2 &&
  (ruleset.nftables[1]?.delete?.table as { name: string } | undefined)?.name ===
    egressTableFor("node-1");

function assignments(labels: Record<string, string>) {
  return create(HeartbeatResponseSchema, {
    assignments: {
      replicas: [
        {
          replicaId: "r1",
          namespace: "default",
          workload: "web",
          revision: 1n,
          specJson: JSON.stringify({ metadata: { name: "web", namespace: "default", labels } }),
        },
      ],
    },
  });
}

describe("the agent's egress table (REQ-061)", () => {
  it("REQ-061: admit() resolves only after the workload's chain is applied; labels from the assignments decide conditions", async () => {
    const { module, applied, writeUids } = await setup(new PolicySet([denyLab]));
    await module.start();
    // Nothing to enforce yet: the start removes whatever a killed agent left.
    expect(deletesTableOnly(applied.at(-1))).toBe(true);
    module.receive(assignments({ tier: "web" }));
    await writeUids({ "default/web": 61184 });
    await module.admit("default/web", 61184);
    expect(chainsOf(applied.at(-1))).toContain("wl_61184");
    // The labels change so the condition no longer holds: the chain goes, the table too.
    module.receive(assignments({ tier: "batch" }));
    await module.admit("default/web", 61184);
    expect(deletesTableOnly(applied.at(-1))).toBe(true);
  });

  it("REQ-061: an unchanged table is not applied again; the table is removed when the node leaves, kept on a plain stop", async () => {
    const first = await setup(new PolicySet([denyLab]));
    await first.writeUids({ "default/web": 61184 });
    first.module.receive(assignments({ tier: "web" }));
    await first.module.start();
    await first.module.admit("default/web", 61184);
    await first.module.admit("default/web", 61184);
    const tables = first.applied.filter((r) => chainsOf(r).includes("wl_61184"));
    expect(tables).toHaveLength(1);
    await first.module.stop({ leaving: false });
    expect(chainsOf(first.applied.at(-1))).toContain("wl_61184");

    const second = await setup(new PolicySet([denyLab]));
    await second.writeUids({ "default/web": 61184 });
    second.module.receive(assignments({ tier: "web" }));
    await second.module.start();
    await second.module.stop({ leaving: true });
    expect(deletesTableOnly(second.applied.at(-1))).toBe(true);
  });

  it("REQ-061: where nftables cannot be used, a replica whose workload has egress rules is refused with the reason; others start", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "cloudless-egress-"));
    dirs.push(dir);
    const module = new EgressModule({
      nodeName: "node-1",
      dataDir: dir,
      logger: silentLogger,
      policies: () => new PolicySet([denyLab]),
      unavailableReason: "egress enforcement needs root (nftables)",
      runNft: async () => {
        throw new Error("must not be called");
      },
    });
    await module.start();
    module.receive(assignments({ tier: "web" }));
    await expect(module.admit("default/web", 61184)).rejects.toThrow(
      "egress policy applies to workload default/web but cannot be enforced on this node (egress enforcement needs root (nftables))",
    );
    // Another workload without the label: the condition cannot be evaluated and a deny rule
    // fails closed, so it is refused too; a namespace no rule concerns starts.
    await expect(module.admit("default/other", 61185)).rejects.toThrow("default/other");
    await expect(module.admit("jobs/batch", 61186)).resolves.toBeUndefined();
  });

  it("REQ-061: a failed nft apply rejects admit(), so the replica is not started unconfined", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "cloudless-egress-"));
    dirs.push(dir);
    await writeFile(
      path.join(dir, "replica-uids.json"),
      JSON.stringify({
        version: 1,
        workloads: { "default/web": { uid: 61184, replicas: ["r1"] } },
      }),
    );
    const module = new EgressModule({
      nodeName: "node-1",
      dataDir: dir,
      logger: silentLogger,
      policies: () => new PolicySet([denyLab]),
      runNft: async () => {
        throw new Error("nft -j -f failed: Error: Could not process rule");
      },
    });
    await module.start();
    module.receive(assignments({ tier: "web" }));
    await expect(module.admit("default/web", 61184)).rejects.toThrow("Could not process rule");
  });

  it("REQ-061: cloudless_agent_egress_denied_total reads the deny rules' counters by workload and rule, and keeps them across a table replacement", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "cloudless-egress-"));
    dirs.push(dir);
    const uids = (workloads: Record<string, number>) =>
      writeFile(
        path.join(dir, "replica-uids.json"),
        JSON.stringify({
          version: 1,
          workloads: Object.fromEntries(
            Object.entries(workloads).map(([key, uid]) => [key, { uid, replicas: [key] }]),
          ),
        }),
      );
    await uids({ "default/web": 61184 });
    // What the kernel counted in the applied table (as `nft -j list table` prints it).
    let kernelPackets = 3;
    const listed = () =>
      JSON.stringify({
        nftables: [
          { metainfo: { json_schema_version: 1 } },
          {
            rule: {
              chain: "wl_61184",
              comment: "egress/no-lab",
              expr: [
                { counter: { packets: kernelPackets, bytes: 180 } },
                { jump: { target: "deny" } },
              ],
            },
          },
          // The shared deny chain's counter is not a workload's.
          { rule: { chain: "deny", expr: [{ counter: { packets: 99, bytes: 1 } }] } },
        ],
      });
    const registry = new Registry();
    const module = new EgressModule({
      nodeName: "node-1",
      dataDir: dir,
      logger: silentLogger,
      registry,
      policies: () => new PolicySet([denyLab]),
      runNft: async () => {},
      listTable: async () => listed(),
    });
    module.receive(assignments({ tier: "web" }));
    await module.start();
    await module.admit("default/web", 61184);
    expect(await module.denials()).toEqual([
      { workload: "default/web", policy: "egress", rule: "no-lab", packets: 3 },
    ]);
    // Another workload arrives: the table is replaced and its counters start again at 0.
    await uids({ "default/web": 61184, "default/other": 61185 });
    await module.admit("default/other", 61185);
    kernelPackets = 2;
    const text = await registry.getSingleMetricAsString("cloudless_agent_egress_denied_total");
    expect(text).toContain(
      'cloudless_agent_egress_denied_total{workload="default/web",policy="egress",rule="no-lab"} 5',
    );
  });

  it("REQ-061: a container's address is applied before admitContainer resolves, kept across an agent restart (0600 file), and dropped by releaseContainer", async () => {
    const first = await setup(new PolicySet([denyLab]));
    first.module.receive(assignments({ tier: "web" }));
    await first.module.start();
    await first.module.admitContainer("c1", "default/web", "10.88.0.5");
    const saddrs = (ruleset: { nftables: Record<string, Record<string, unknown>>[] } | undefined) =>
      [...JSON.stringify(ruleset).matchAll(/"field":"saddr"\}\},"right":"([0-9.]+)"/g)].map(
        (m) => m[1],
      );
    expect(chainsOf(first.applied.at(-1))).toEqual(expect.arrayContaining(["prerouting", "wc_0"]));
    expect(saddrs(first.applied.at(-1))).toEqual(["10.88.0.5"]);
    // A second container of the same workload; then another workload's container is given
    // c1's address after c1 stopped without the driver saying so (killed agent): the
    // address is the newcomer's, never both.
    await first.module.admitContainer("c2", "default/web", "10.88.0.6");
    await first.module.admitContainer("c3", "jobs/batch", "10.88.0.5");
    expect(saddrs(first.applied.at(-1))).toEqual(["10.88.0.6"]);
    await first.module.stop({ leaving: false });
    const file = path.join(first.dir, containerTableFile);
    expect((await stat(file)).mode & 0o777).toBe(0o600);

    // Restarted: the table is applied from the file at start, before any replica starts.
    const applied: { nftables: Record<string, Record<string, unknown>>[] }[] = [];
    const restarted = new EgressModule({
      nodeName: "node-1",
      dataDir: first.dir,
      logger: silentLogger,
      policies: () => new PolicySet([denyLab]),
      runNft: async (text) => {
        applied.push(JSON.parse(text));
      },
    });
    restarted.receive(assignments({ tier: "web" }));
    await restarted.start();
    expect(saddrs(applied.at(-1))).toEqual(["10.88.0.6"]);
    // The container stops: its rule goes, and with nothing left to enforce, the table.
    await restarted.releaseContainer("c2");
    expect(deletesTableOnly(applied.at(-1))).toBe(true);
    await restarted.stop({ leaving: false });
  });

  it("REQ-061: a container of a workload with egress rules is refused when it cannot be judged: nftables unusable, or no IPv4 address", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "cloudless-egress-"));
    dirs.push(dir);
    const unavailable = new EgressModule({
      nodeName: "node-1",
      dataDir: dir,
      logger: silentLogger,
      policies: () => new PolicySet([denyLab]),
      unavailableReason: "egress enforcement needs root (nftables)",
    });
    unavailable.receive(assignments({ tier: "web" }));
    await expect(unavailable.admitContainer("c1", "default/web", "10.88.0.5")).rejects.toThrow(
      "egress policy applies to workload default/web but cannot be enforced on this node",
    );
    await expect(
      unavailable.admitContainer("c2", "jobs/batch", "10.88.0.7"),
    ).resolves.toBeUndefined();
    const { module } = await setup(new PolicySet([denyLab]));
    module.receive(assignments({ tier: "web" }));
    await module.start();
    await expect(module.admitContainer("c1", "default/web", undefined)).rejects.toThrow(
      "has no IPv4 address",
    );
    await expect(module.admitContainer("c2", "jobs/batch", undefined)).resolves.toBeUndefined();
  });
});

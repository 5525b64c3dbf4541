import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { HeartbeatResponseSchema } from "../../api/gen/cloudless/v1/node_pb.js";
import { parseWorkloadValue } from "../../api/workload/parse.js";
import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import { silentLogger } from "../../observe/logger.js";
import { PolicyModule, policiesFileName } from "./policyModule.js";

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

const denyBusybox = `apiVersion: cloudless/v1
kind: Policy
metadata: { name: no-busybox }
spec:
  rules:
    - { name: deny, subject: image, effect: deny, match: ["docker.io/library/busybox"] }
`;

function doc(image: string): WorkloadSpecDocument {
  const parsed = parseWorkloadValue({
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: "w" },
    spec: { image, replicas: 1, resources: { cpuMillicores: 10, memoryMiB: 8 } },
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  return parsed.doc;
}

function snapshot(fingerprint: string, documents: string[]) {
  return create(HeartbeatResponseSchema, { policies: { fingerprint, documents } });
}

async function moduleIn(dir: string, onChange = () => {}) {
  const module = new PolicyModule({ dataDir: dir, logger: silentLogger, onChange });
  await module.start();
  return module;
}

describe("the agent's policies (REQ-061)", () => {
  it("REQ-061: judges by what the coordinator sent, keeps it 0600 on disk, and judges the same after a restart without a coordinator", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "cloudless-policies-"));
    dirs.push(dir);
    let changes = 0;
    const first = await moduleIn(dir, () => {
      changes += 1;
    });
    expect(first.judge(doc("busybox"))).toBeUndefined();
    first.receive(snapshot("f1", [denyBusybox]));
    // The same snapshot again (every new stream) changes nothing.
    first.receive(snapshot("f1", [denyBusybox]));
    expect(changes).toBe(1);
    expect(first.judge(doc("busybox"))?.denied?.rule).toBe("deny");
    expect(first.judge(doc("registry.example.com/app:1"))?.allowed).toBe(true);
    await first.stop();
    const file = path.join(dir, policiesFileName);
    expect((await stat(file)).mode & 0o777).toBe(0o600);

    const restarted = await moduleIn(dir);
    expect(restarted.judge(doc("busybox"))?.denied?.policy).toBe("no-busybox");
    // An empty set (every policy deleted) allows again.
    restarted.receive(snapshot("f2", []));
    expect(restarted.judge(doc("busybox"))?.allowed).toBe(true);
    await restarted.stop();
    expect(JSON.parse(await readFile(file, "utf8"))).toEqual({ fingerprint: "f2", documents: [] });
  });

  it("REQ-061: a document it cannot read keeps the previous set; a corrupt file on disk is ignored with a warning", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "cloudless-policies-"));
    dirs.push(dir);
    const module = await moduleIn(dir);
    module.receive(snapshot("f1", [denyBusybox]));
    module.receive(snapshot("f2", ["kind: Policy\nnot: valid"]));
    expect(module.judge(doc("busybox"))?.denied?.rule).toBe("deny");
    await module.stop();
    await writeFile(path.join(dir, policiesFileName), "{not json");
    const fresh = await moduleIn(dir);
    expect(fresh.judge(doc("busybox"))).toBeUndefined();
  });
});

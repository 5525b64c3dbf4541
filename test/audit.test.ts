/**
 * The audit log with real processes (NFR-C1): every state-changing request — who, what,
 * when, from where, result — lands in <data dir>/audit/audit.log, chained by hash, with no
 * secrets; `cloudless audit verify` passes on it and names the line of a one-byte change.
 */
import { randomBytes } from "node:crypto";
import { readFile, stat, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadClientConfig } from "../src/client/config.js";
import type { AuditEntry } from "../src/observe/audit.js";
import { fastAgentFlags, removeProcessReplicas, workloadDoc } from "./helpers/behaviour.js";
import { TestCluster } from "./helpers/cluster.js";
import { runCli, TestResources } from "./helpers/processes.js";
import { clientsFor, rpcError } from "./helpers/tlsProbe.js";
import { writeSpec } from "./helpers/workloads.js";

const nodeName = "audited";

async function readEntries(file: string): Promise<{ lines: string[]; entries: AuditEntry[] }> {
  const lines = (await readFile(file, "utf8")).split("\n").filter((line) => line.length > 0);
  return { lines, entries: lines.map((line) => JSON.parse(line) as AuditEntry) };
}

describe("NFR-C1 audit log of state-changing requests, with real processes", () => {
  let resources: TestResources;
  let agentDirs: string[];

  beforeEach(() => {
    resources = new TestResources();
    agentDirs = [];
  });
  afterEach(async () => {
    await resources.cleanup();
    await removeProcessReplicas(agentDirs);
  });

  it("NFR-C1 NFR-S1 records who, what, where and the result of each change and refusal, never a secret; survives a restart; verify passes and names the line of a one-byte change", async () => {
    const cluster = await TestCluster.start(resources);
    const auditFile = path.join(cluster.dataDir, "audit", "audit.log");

    // token create + Enroll (anonymous, with the token) by an agent running processes.
    const token = await cluster.createToken();
    const tokenId = /::([a-z0-9]{10})\./.exec(token)?.[1];
    expect(tokenId).toBeDefined();
    agentDirs.push(await cluster.agentDir(nodeName));
    await cluster.startAgent(nodeName, {
      token,
      zone: "a",
      extra: [...fastAgentFlags, "--driver", "process"],
    });
    await cluster.waitForStatus(nodeName, "Ready", 30_000);

    // Admin changes.
    for (const verb of ["cordon", "uncordon"]) {
      const result = await cluster.cli(["node", verb, nodeName]);
      expect(result.code, result.stderr).toBe(0);
    }
    const namespace = `audit-${randomBytes(3).toString("hex")}`;
    const specDir = await resources.tempDir("cloudless-specs-");
    const spec = await writeSpec(
      specDir,
      "ticker",
      workloadDoc("ticker", namespace, {
        command: [process.execPath, "-e", "setInterval(()=>{},1000)"],
        replicas: 1,
      }),
    );
    const applied = await cluster.cli(["workload", "apply", "-f", spec]);
    expect(applied.code, applied.stderr).toBe(0);
    // A read is not audited.
    expect((await cluster.cli(["node", "list"])).code).toBe(0);

    // Refusals: a node certificate may not cordon; no certificate at all is refused up front.
    const { caPem } = await loadClientConfig(cluster.configPath);
    const agentDir = await cluster.agentDir(nodeName);
    const asNode = clientsFor({
      url: cluster.url,
      caPem,
      certPem: await readFile(path.join(agentDir, "node.crt"), "utf8"),
      keyPem: await readFile(path.join(agentDir, "node.key"), "utf8"),
    });
    expect((await rpcError(asNode.nodes.cordonNode({ name: nodeName }))).codeName).toBe(
      "PermissionDenied",
    );
    const anonymous = clientsFor({ url: cluster.url, caPem });
    expect((await rpcError(anonymous.nodes.cordonNode({ name: nodeName }))).codeName).toBe(
      "Unauthenticated",
    );

    // A response is sent only once its entry is on disk: no waiting needed.
    const { entries } = await readEntries(auditFile);
    const summary = entries.map((e) => `${e.actor} ${e.method.split("/")[1]} ${e.result}`);
    const find = (method: string, actor: RegExp, result = "ok") => {
      const found = entries.find(
        (e) => e.method.endsWith(`/${method}`) && actor.test(e.actor) && e.result === result,
      );
      expect(found, `${method} by ${actor} (${result}) in:\n${summary.join("\n")}`).toBeDefined();
      return found as AuditEntry;
    };
    const loopback = /^127\.0\.0\.1:\d+$/;
    expect(find("CreateToken", /^admin\/admin$/)).toMatchObject({
      method: "cloudless.v1.TokenService/CreateToken",
      target: `token/${tokenId}`,
      address: expect.stringMatching(loopback),
    });
    expect(find("Enroll", /^anonymous@127\.0\.0\.1:\d+$/).target).toBe(`node/${nodeName}`);
    for (const method of ["CordonNode", "UncordonNode"]) {
      expect(find(method, /^admin\/admin$/)).toMatchObject({
        method: `cloudless.v1.NodeService/${method}`,
        target: `node/${nodeName}`,
        address: expect.stringMatching(loopback),
      });
    }
    expect(find("ApplyWorkload", /^admin\/admin$/).target).toBe(`workload/${namespace}/ticker`);
    const denied = find("CordonNode", new RegExp(`^node/${nodeName}$`), "PermissionDenied");
    expect(denied.target).toBe(`node/${nodeName}`);
    expect(denied.error).toMatch(/admin/i);
    const refused = find("CordonNode", /^anonymous@127\.0\.0\.1:\d+$/, "Unauthenticated");
    expect(refused.address).toMatch(loopback);
    for (const entry of entries) {
      expect(Number.isNaN(Date.parse(entry.time))).toBe(false);
      expect(entry.durationMs).toBeGreaterThanOrEqual(0);
    }
    // Reads, heartbeats and reports are not audited.
    expect(
      entries.filter((e) => /\/(ListNodes|GetNode|Heartbeat|ListWorkloads)$/.test(e.method)),
    ).toEqual([]);

    // No secret anywhere in the file: not the token, its secret part, a CSR, a key or a cert.
    const text = await readFile(auditFile, "utf8");
    expect(text).not.toContain(token);
    expect(text).not.toContain(token.split(".").at(-1) as string);
    expect(text).not.toMatch(/BEGIN|PRIVATE|CERTIFICATE/);
    expect((await stat(auditFile)).mode & 0o777).toBe(0o600);
    expect((await stat(path.dirname(auditFile))).mode & 0o777).toBe(0o700);

    // A restart of the coordinator continues the same chain.
    await cluster.coordinator.stop();
    await cluster.startCoordinator();
    const deleted = await cluster.cli(["workload", "delete", "ticker", "-n", namespace]);
    expect(deleted.code, deleted.stderr).toBe(0);
    const after = await readEntries(auditFile);
    const last = after.entries.at(-1) as AuditEntry;
    expect(last).toMatchObject({
      method: "cloudless.v1.WorkloadService/DeleteWorkload",
      actor: "admin/admin",
      target: `workload/${namespace}/ticker`,
      result: "ok",
    });
    expect(after.entries.map((e) => e.seq)).toEqual(after.entries.map((_, i) => i + 1));

    const verified = await runCli(["audit", "verify", auditFile]);
    expect(verified.code, verified.stderr).toBe(0);
    expect(verified.stdout).toBe(`${auditFile}: ${after.entries.length} entries, chain intact\n`);

    // One byte changed in the actor of the admin's cordon: verify names that line.
    const index = after.entries.findIndex(
      (e) => e.method.endsWith("/CordonNode") && e.actor === "admin/admin",
    );
    const tampered = [...after.lines];
    tampered[index] = (tampered[index] as string).replace(
      '"actor":"admin/admin"',
      '"actor":"admin/admiN"',
    );
    expect(Buffer.byteLength(tampered.join("\n"))).toBe(Buffer.byteLength(after.lines.join("\n")));
    await writeFile(auditFile, `${tampered.join("\n")}\n`);
    const broken = await runCli(["audit", "verify", auditFile]);
    expect(broken.code).not.toBe(0);
    expect(broken.stdout).toBe("");
    expect(broken.stderr).toBe(
      `error: ${auditFile} line ${index + 1} (seq ${index + 1}): hash mismatch: this entry was altered after it was written\n`,
    );
  });

  it("NFR-C1 audit verify reports a missing file on one line", async () => {
    const dir = await resources.tempDir("cloudless-audit-cli-");
    const result = await runCli(["audit", "verify", path.join(dir, "nope.log")]);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toBe(`error: ${path.join(dir, "nope.log")}: no such file\n`);
  });
});

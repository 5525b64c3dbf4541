/**
 * REQ-061 egress for container replicas, for real: Podman (a private API service), the
 * container driver, the egress module programming nftables, and TCP servers on the host.
 * A container's connections reach the host through the bridge gateway; a "VIP" DNATed in
 * prerouting at -100 (as the service VIP table does) shows that the rules judge the
 * destination the container dialled, not the one it was sent to, and refuse it at once.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ensurePodman, type PodmanAvailability, podman } from "../../../test/helpers/podman.js";
import { waitFor } from "../../../test/helpers/processes.js";
import { PolicySet } from "../../api/policy/evaluate.js";
import { parsePolicyDocument } from "../../api/policy/parse.js";
import { silentLogger } from "../../observe/logger.js";
import { createContainerDriver } from "../drivers/containerDriver.js";
import type { ReplicaRunSpec } from "../drivers/driver.js";
import { containerTableFile, EgressModule, egressUnavailableReason } from "./egressModule.js";

const service: PodmanAvailability = await ensurePodman();
const nftMissing = await egressUnavailableReason();
const skipReason = !service.available ? service.reason : nftMissing;
if (skipReason) console.warn(`container egress tests skipped: ${skipReason}`);

afterAll(async () => {
  if (service.available) await service.stop();
});

function nft(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile("nft", args, { timeout: 15_000 }, (error, stdout, stderr) =>
      error ? reject(new Error(String(stderr) || error.message)) : resolve(String(stdout)),
    );
  });
}

/** A TCP server on every address that answers each connection with `reply` and closes. */
async function replyServer(reply: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((socket) => {
    // A prober that gave up resets its side: nothing to do about it here.
    socket.on("error", () => undefined);
    socket.end(`${reply}\n`);
  });
  await new Promise<void>((resolve) => server.listen(0, "0.0.0.0", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  return {
    port: address.port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Dials host:port from inside the replica; "answer <text>" or "failed", with the time taken. */
const dialScript = (host: string, port: number) =>
  `out=$(nc -w 3 ${host} ${port} </dev/null 2>&1); rc=$?; echo "rc=$rc out=$out"`;

describe.skipIf(skipReason !== undefined)("egress of container replicas (REQ-061)", () => {
  it("REQ-061: a container replica's connection to a denied destination is refused from its first packet, an allowed one answers, a DNATed VIP is judged by what was dialled, and the rule goes with the replica", async () => {
    if (!service.available) return;
    const dataDir = await mkdtemp(path.join(tmpdir(), "cloudless-ctegress-"));
    const allowed = await replyServer("allowed");
    const denied = await replyServer("denied");
    const nodeName = `ctegress-${process.pid}`;
    const vipTable = `ctegress_vip_${process.pid}`;
    const vip = "10.255.77.1";
    const gateway = (
      await podman([
        "network",
        "inspect",
        "podman",
        "--format",
        "{{range .Subnets}}{{.Gateway}}{{end}}",
      ])
    ).stdout.trim();
    expect(gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    const policy = parsePolicyDocument(`apiVersion: cloudless/v1
kind: Policy
metadata: { name: egress }
spec:
  rules:
    - { name: no-denied-port, subject: egress, effect: deny, match: ["${gateway}/32:${denied.port}"] }
    - { name: no-vip, subject: egress, effect: deny, match: ["${vip}:80"] }
`);
    let policies: PolicySet | undefined = new PolicySet([policy]);
    const egress = new EgressModule({
      nodeName,
      dataDir,
      logger: silentLogger,
      policies: () => policies,
    });
    const driver = createContainerDriver({
      socketPath: service.socketPath,
      dataDir,
      nodeName,
      egress,
    });
    const replicaId = `ctegress-${process.pid}-${Date.now().toString(36)}`;
    const spec: ReplicaRunSpec = {
      replicaId,
      namespace: "default",
      workload: "prober",
      driver: "container",
      image: service.image,
      // The very first thing the container does is dial the denied destination.
      command: ["sh", "-c", `${dialScript(gateway, denied.port)}; exec sleep 3600`],
      env: {},
      ports: [],
      resources: { cpuMillicores: 0, memoryMiB: 0, storageGiB: 0 },
    };
    try {
      await egress.start();
      // A "VIP" DNATed to the allowed server, as the service VIP table does (prerouting -100).
      const vipRules = path.join(dataDir, "vip.nft");
      await writeFile(
        vipRules,
        `table ip ${vipTable} {\n  chain pre {\n    type nat hook prerouting priority -100; policy accept;\n    ip daddr ${vip} tcp dport 80 dnat to ${gateway}:${allowed.port}\n  }\n}\n`,
      );
      await nft(["-f", vipRules]);

      await driver.start(spec);
      const table = egress.table;
      const listed = await nft(["list", "table", "ip", table]);
      const address = JSON.parse(await readFile(path.join(dataDir, containerTableFile), "utf8"))
        .replicas[replicaId].address as string;
      expect(listed).toContain(`ip saddr ${address} jump wc_0`);

      // Its first packet was already judged: the rule was in the kernel before it started.
      await waitFor(
        "the container's first dial",
        async () => {
          const logs: string[] = [];
          for await (const line of driver.logs(replicaId, { follow: false })) logs.push(line.line);
          return logs.some((l) => l.startsWith("rc="));
        },
        15_000,
      );
      const firstLines: string[] = [];
      for await (const line of driver.logs(replicaId, { follow: false }))
        firstLines.push(line.line);
      expect(firstLines.join("\n")).toContain("Connection refused");

      const dial = async (host: string, port: number) => {
        const started = performance.now();
        const result = await driver.exec(replicaId, ["sh", "-c", dialScript(host, port)], 15_000);
        return { text: result.stdout.trim(), ms: performance.now() - started };
      };
      const ok = await dial(gateway, allowed.port);
      expect(ok.text).toContain("out=allowed");
      const refused = await dial(gateway, denied.port);
      expect(refused.text).toContain("Connection refused");
      // Refused at once (tcp reset), not a 3 s timeout: exec itself takes most of this.
      expect(refused.ms).toBeLessThan(2_500);
      const viaVip = await dial(vip, 80);
      expect(viaVip.text).toContain("Connection refused");
      expect(viaVip.ms).toBeLessThan(2_500);
      // The denials were counted per rule.
      const denials = await egress.denials();
      expect(denials.find((d) => d.rule === "no-denied-port")?.packets ?? 0).toBeGreaterThanOrEqual(
        2,
      );
      expect(denials.find((d) => d.rule === "no-vip")?.packets ?? 0).toBeGreaterThanOrEqual(1);
      console.log(
        `REQ-061 container egress: allowed ${ok.ms.toFixed(0)} ms (${ok.text}), denied ${refused.ms.toFixed(0)} ms (${refused.text}), VIP ${viaVip.ms.toFixed(0)} ms (${viaVip.text})`,
      );

      // Without the policy the same destinations answer: the refusals above were the rules'.
      policies = undefined;
      await egress.admitContainer(replicaId, "default/prober", address);
      expect((await dial(gateway, denied.port)).text).toContain("out=denied");
      expect((await dial(vip, 80)).text).toContain("out=allowed");

      // The rule goes with the replica.
      policies = new PolicySet([policy]);
      await egress.admitContainer(replicaId, "default/prober", address);
      expect(await nft(["list", "table", "ip", table])).toContain(`ip saddr ${address}`);
      await driver.stop(replicaId, 1_000);
      await driver.remove(replicaId);
      await expect(nft(["list", "table", "ip", table])).rejects.toThrow();
    } finally {
      await driver.remove(replicaId).catch(() => undefined);
      await egress.stop({ leaving: true });
      await nft(["delete", "table", "ip", vipTable]).catch(() => undefined);
      await allowed.close();
      await denied.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 120_000);
});

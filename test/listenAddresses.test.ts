import { networkInterfaces } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManagedProcess, TestResources, waitFor } from "./helpers/processes.js";
import { killProcesses, processesUsing, withDeadline } from "./helpers/system.js";
import { listeningSockets } from "./helpers/tlsProbe.js";

/** An IPv4 address of this machine that is not loopback, to try the ports from. */
function externalAddress(): string | undefined {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) {
      if (address.family === "IPv4" && !address.internal) return address.address;
    }
  }
  return undefined;
}

/** Whether an HTTP GET to the URL answers at all (any status) within 3 s. */
async function answers(url: string): Promise<boolean> {
  return fetch(url, { signal: AbortSignal.timeout(3_000) }).then(
    () => true,
    () => false,
  );
}

describe("NFR-S1 default listen addresses", () => {
  let resources: TestResources;
  let dataDir: string | undefined;

  beforeEach(() => {
    resources = new TestResources();
    dataDir = undefined;
  });
  afterEach(async () => {
    await resources.cleanup();
    if (dataDir) await killProcesses(await processesUsing(dataDir));
  });

  it("NFR-S1 hardening: `cloudless up` listens on 127.0.0.1 by default, publishes its sample there only, and says how to accept other machines", async () => {
    const external = externalAddress();
    expect(external, "this test needs a non-loopback IPv4 address").toBeDefined();
    dataDir = path.join(await resources.tempDir("cloudless-up-listen-"), "data");
    const up = resources.track(new ManagedProcess(["up", "--data-dir", dataDir, "--port", "0"]));
    const sampleUrl = await waitFor(
      "cloudless up to report its sample",
      () => {
        if (!up.running) throw new Error(`cloudless up exited early: ${up.stderr}`);
        if (/is up at/.test(up.stdout) && !/answers at/.test(up.stdout)) {
          throw new Error(`up started without its sample: ${up.stderr}`);
        }
        return /answers at (http:\/\/\S+)/.exec(up.stdout)?.[1];
      },
      120_000,
      200,
    );
    await waitFor("up to print how to join", () => /Logs: /.test(up.stdout), 10_000);

    // The API: loopback only.
    const sockets = await listeningSockets(up.pid);
    expect(sockets.length, JSON.stringify(sockets)).toBeGreaterThan(0);
    expect(
      sockets.filter((s) => s.address !== "127.0.0.1"),
      JSON.stringify(sockets),
    ).toEqual([]);
    const apiPort = sockets[0]?.port as number;
    expect(await answers(`https://${external}:${apiPort}/`)).toBe(false);

    // The sample (a container: Podman publishes it with HostIp 127.0.0.1) answers on
    // this machine, not from another address of it.
    expect(up.stdout).toMatch(/sample workload "hello" \(container /);
    const port = new URL(sampleUrl).port;
    expect(await answers(`http://127.0.0.1:${port}/`)).toBe(true);
    expect(await answers(`http://${external}:${port}/`)).toBe(false);

    expect(up.stdout).toMatch(
      /this cluster listens on 127\.0\.0\.1 only; restart with --host 0\.0\.0\.0/,
    );
    up.kill("SIGINT");
    expect(await withDeadline(up.exited(), 60_000, "cloudless up to stop")).toBe(0);
  });

  it("NFR-S1 hardening: `cloudless coordinator` listens on every interface by default, for agents on other machines, and says so", async () => {
    dataDir = await resources.tempDir("cloudless-coordinator-listen-");
    const coordinator = resources.track(
      new ManagedProcess(["coordinator", "--data-dir", dataDir, "--port", "0"]),
    );
    await waitFor(
      "the coordinator to listen",
      () => {
        if (!coordinator.running) throw new Error(`coordinator exited: ${coordinator.stderr}`);
        return /listening on https:/.test(coordinator.stderr);
      },
      30_000,
    );
    const sockets = await listeningSockets(coordinator.pid);
    expect(sockets.map((s) => s.address)).toEqual(["0.0.0.0"]);
    expect(coordinator.stderr).toMatch(/coordinator listening on every interface \(0\.0\.0\.0\)/);
  });
});

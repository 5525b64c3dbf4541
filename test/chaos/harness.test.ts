/**
 * Proves the chaos harness itself (test/helpers/netlab.ts): hosts in network namespaces
 * reach each other and the root namespace, each fault does what its documentation says
 * (a cut hangs a TCP connect instead of refusing it), a three-member etcd cluster runs on
 * three hosts and survives losing one, and a lab leaves nothing behind, even after a test
 * that threw half-way.
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import * as net from "node:net";
import { Etcd3 } from "etcd3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  assertNoLeaks,
  findLabLeaks,
  type LabEtcdCluster,
  type LabHost,
  NetLab,
  netlabUnavailableReason,
  run,
  startEtcdCluster,
  sweepStaleLabs,
  waitForOutput,
} from "../helpers/netlab.js";
import { waitFor } from "../helpers/processes.js";

const unavailable = await netlabUnavailableReason();
if (unavailable) console.log(`chaos harness tests skipped: ${unavailable}`);

const port = 7070;

/** put then get through a client of only these endpoints. */
async function putGet(urls: string[], key: string, value: string): Promise<string | null> {
  const client = new Etcd3({ hosts: urls, dialTimeout: 2_000 });
  try {
    return await waitFor(
      `a put and get of ${key} through ${urls.join(",")}`,
      async () => {
        await client.put(key).value(value);
        return (await client.get(key).string()) ?? undefined;
      },
      20_000,
      200,
    );
  } finally {
    client.close();
  }
}

describe.skipIf(unavailable !== undefined)("NFR-R1 chaos harness (network lab)", () => {
  let lab: NetLab;
  let h1: LabHost;
  let h2: LabHost;
  let h3: LabHost;
  /** A TCP server of the root namespace (the test runner) on the bridge address. */
  let rootServer: net.Server | undefined;

  beforeAll(async () => {
    lab = await NetLab.create([
      { name: "h1", zone: "a" },
      { name: "h2", zone: "a" },
      { name: "h3", zone: "b" },
    ]);
    [h1, h2, h3] = lab.hosts as [LabHost, LabHost, LabHost];
    for (const host of lab.hosts) await host.serveTcp(port);
    const server = net.createServer((socket) => {
      // Probes close as soon as they are connected.
      socket.on("error", () => undefined);
      socket.end("root\n");
    });
    rootServer = server;
    await new Promise<void>((resolve) => server.listen(port, lab.rootIp, resolve));
  });

  afterEach(async () => {
    await lab?.heal();
  });

  afterAll(async () => {
    rootServer?.close();
    await lab?.dispose();
  });

  it("NFR-R1 harness: hosts in zones a and b reach each other and the root namespace by IP", async () => {
    expect(h1.zone).toBe("a");
    expect(h3.zone).toBe("b");
    expect(new Set(lab.hosts.map((h) => h.ip)).size).toBe(3);
    for (const from of lab.hosts) {
      for (const to of lab.hosts) {
        if (from !== to)
          expect(await from.probeTcp(to.ip, port), `${from.name}→${to.name}`).toBe("connected");
      }
      expect(await lab.probeTcpFromRoot(from.ip, port), `root→${from.name}`).toBe("connected");
      expect(await from.probeTcp(lab.rootIp, port), `${from.name}→root`).toBe("connected");
    }
    // The root namespace's bridge address is reachable from inside a host, ICMP included.
    const ping = await h1.exec("busybox", ["ping", "-c", "1", "-W", "2", lab.rootIp]);
    expect(ping.code, ping.stdout + ping.stderr).toBe(0);
    // eth0 and lo only: a host reaches the lab and nothing else (no default route).
    const routes = await h1.exec("ip", ["-4", "route", "show"]);
    expect(routes.stdout).not.toContain("default");
    const links = await h1.exec("ip", ["-br", "link", "show"]);
    expect(
      links.stdout
        .split("\n")
        .filter(Boolean)
        .map((l) => l.split(/[\s@]/)[0])
        .sort(),
    ).toEqual(["eth0", "lo"]);
  });

  it("NFR-R1 harness: cutHost makes a TCP connect time out, not be refused, and healHost restores it", async () => {
    // Baseline: a port nobody listens on is refused, so "refused" and "timeout" are told apart.
    expect(await h1.probeTcp(h2.ip, port + 1)).toBe("ECONNREFUSED");

    await lab.cutHost(h2);
    expect(await h1.probeTcp(h2.ip, port, 1_500)).toBe("timeout");
    expect(await h2.probeTcp(h1.ip, port, 1_500)).toBe("timeout");
    expect(await lab.probeTcpFromRoot(h2.ip, port, 1_500)).toBe("timeout");
    // Even a closed port stays silent: nothing reaches the host to refuse it.
    expect(await h1.probeTcp(h2.ip, port + 1, 1_500)).toBe("timeout");
    // The others are unaffected.
    expect(await h1.probeTcp(h3.ip, port)).toBe("connected");

    await lab.healHost(h2);
    expect(await h1.probeTcp(h2.ip, port)).toBe("connected");
    expect(await lab.probeTcpFromRoot(h2.ip, port)).toBe("connected");
  });

  it("NFR-R1 harness: partition separates the two groups in both directions; each side keeps its own group and the root namespace", async () => {
    await lab.partition([h1, h2], [h3]);
    expect(await h1.probeTcp(h3.ip, port)).toBe("timeout");
    expect(await h3.probeTcp(h2.ip, port)).toBe("timeout");
    expect(await h1.probeTcp(h2.ip, port)).toBe("connected");
    expect(await h3.probeTcp(lab.rootIp, port)).toBe("connected");
    expect(await h1.probeTcp(lab.rootIp, port)).toBe("connected");
    expect(await lab.probeTcpFromRoot(h3.ip, port)).toBe("connected");
    expect(await lab.probeTcpFromRoot(h1.ip, port)).toBe("connected");
  });

  it("NFR-R1 harness: cutZone isolates zone a from zone b and the root namespace while its hosts keep each other; healZone restores it", async () => {
    await lab.cutZone("a");
    expect(await h1.probeTcp(h2.ip, port)).toBe("connected");
    expect(await h1.probeTcp(h3.ip, port)).toBe("timeout");
    expect(await h3.probeTcp(h2.ip, port)).toBe("timeout");
    expect(await lab.probeTcpFromRoot(h1.ip, port)).toBe("timeout");
    expect(await h2.probeTcp(lab.rootIp, port)).toBe("timeout");
    expect(await lab.probeTcpFromRoot(h3.ip, port)).toBe("connected");
    await lab.healZone("a");
    expect(await h3.probeTcp(h1.ip, port)).toBe("connected");
    expect(await lab.probeTcpFromRoot(h1.ip, port)).toBe("connected");
  });

  it("NFR-R1 harness: cutOneWay drops datagrams from→to but delivers to→from; TCP between the two hangs", async () => {
    const udpPort = 7171;
    const atH1 = await h1.listenUdp(udpPort);
    const atH2 = await h2.listenUdp(udpPort);
    await lab.cutOneWay(h1, h2);

    // to→from is delivered.
    await h2.sendUdp(h1.ip, udpPort, "from-h2");
    await waitForOutput(atH1, "received from-h2", "h1's UDP listener");

    // from→to is dropped: a datagram sent after it from elsewhere arrives, it does not.
    await h1.sendUdp(h2.ip, udpPort, "from-h1");
    await h3.sendUdp(h2.ip, udpPort, "from-h3-after");
    await waitForOutput(atH2, "received from-h3-after", "h2's UDP listener");
    expect(atH2.stdout).not.toContain("from-h1");

    // A handshake needs both directions.
    expect(await h1.probeTcp(h2.ip, port)).toBe("timeout");
    expect(await h2.probeTcp(h1.ip, port)).toBe("timeout");
    // Nobody else is affected.
    expect(await h1.probeTcp(h3.ip, port)).toBe("connected");
    expect(await h2.probeTcp(h3.ip, port)).toBe("connected");

    await lab.heal();
    await h1.sendUdp(h2.ip, udpPort, "after-heal");
    await waitForOutput(atH2, "received after-heal", "h2's UDP listener");
  });

  it("NFR-R1 harness: pause stops a process (state T, connections get no answer) and resume lets it answer again", async () => {
    const server = await h3.serveTcp(port + 2, "alive");
    expect(await h1.request(h3.ip, port + 2, "alive")).toBe("alive");

    lab.pause(server);
    await waitFor("the server to be stopped", async () => {
      const stat = await readFile(`/proc/${server.pid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2).startsWith("T");
    });
    // The kernel still completes the handshake (listen backlog); the process never answers.
    expect(await h1.probeTcp(h3.ip, port + 2)).toBe("connected");
    expect(await h1.request(h3.ip, port + 2, "alive")).toBe("no-answer");

    lab.resume(server);
    expect(await h1.request(h3.ip, port + 2, "alive")).toBe("alive");

    await lab.kill9(server);
    expect(server.running).toBe(false);
    expect(await h1.probeTcp(h3.ip, port + 2)).toBe("ECONNREFUSED");
  });

  describe("a three-member etcd cluster on three hosts", () => {
    let etcd: LabEtcdCluster;

    beforeAll(async () => {
      etcd = await startEtcdCluster(lab, [h1, h2, h3]);
    }, 120_000);

    afterAll(async () => {
      await etcd?.stop();
    });

    it("NFR-R1 harness: etcd answers on every host's address and keeps serving when one member is cut off silently or killed with -9", async () => {
      expect(etcd.urls).toEqual([h1, h2, h3].map((h) => `http://${h.ip}:2379`));
      const [u1, u2, u3] = etcd.urls as [string, string, string];
      expect(await putGet([u1, u2, u3], "harness/all", "three")).toBe("three");

      // A silent cut of member 1: the other two keep a quorum.
      await lab.cutHost(h1);
      expect(await putGet([u2, u3], "harness/cut", "two")).toBe("two");
      await lab.healHost(h1);
      // The healed member catches up and serves the write made while it was away.
      expect(
        await waitFor("member 1 to serve the write made while it was cut off", async () => {
          const client = new Etcd3({ hosts: [u1], dialTimeout: 2_000 });
          try {
            return (await client.get("harness/cut").string()) === "two";
          } finally {
            client.close();
          }
        }),
      ).toBe(true);

      // kill -9 of member 3.
      await etcd.killMember(2);
      expect(await putGet([u1, u2], "harness/killed", "two-again")).toBe("two-again");
    });
  });

  it("NFR-R1 harness: a startup sweep removes what a crashed run left (namespace, bridge, veth, fault table, processes)", async () => {
    // A lab of a "crashed run": its owner marker names a process that has exited.
    const owner = spawn("true");
    await new Promise((resolve) => owner.once("exit", resolve));
    const id = "dead";
    await run("ip", ["netns", "add", `cltest-${id}-x`]);
    await run("ip", ["link", "add", `cltb${id}`, "type", "bridge"]);
    await run("ip", [
      "link",
      "add",
      `cltv${id}-2`,
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      `cltest-${id}-x`,
    ]);
    await run("nft", ["add", "table", "bridge", `cltest_${id}`]);
    mkdirSync("/run/cloudless-netlab", { recursive: true });
    writeFileSync(`/run/cloudless-netlab/${id}`, String(owner.pid));
    const sleeper = spawn("nsenter", [`--net=/run/netns/cltest-${id}-x`, "--", "sleep", "600"], {
      stdio: "ignore",
    });
    await waitFor("the leftover process to run in the namespace", async () => {
      const pids = await run("ip", ["netns", "pids", `cltest-${id}-x`]);
      return pids.stdout.trim().length > 0;
    });
    expect((await findLabLeaks(id)).length).toBeGreaterThanOrEqual(5);

    const swept = await sweepStaleLabs();
    expect(swept).toContain(id);
    // The live lab of this run is not touched.
    expect(swept).not.toContain(lab.id);
    expect(await h1.probeTcp(h2.ip, port)).toBe("connected");
    await waitFor(
      "the leftover process to be killed",
      () => sleeper.exitCode !== null || sleeper.signalCode !== null,
    );
    await assertNoLeaks(id);
  });

  it("NFR-R1 harness: disposing labs leaves no namespace, interface, fault table or process behind, even after a test that threw half-way", async () => {
    const doomed = await NetLab.create([
      { name: "x1", zone: "a" },
      { name: "x2", zone: "b" },
    ]);
    const [x1, x2] = doomed.hosts as [LabHost, LabHost];
    let thrown: unknown;
    try {
      // A process tree (a shell and its background child), a paused process and a fault.
      const tree = x1.spawn("sh", ["-c", "sleep 600 & echo started; wait"]);
      await waitForOutput(tree, "started", "the shell on x1");
      const paused = x2.spawn("sleep", ["600"]);
      doomed.pause(paused);
      await doomed.cutHost(x2);
      expect((await findLabLeaks(doomed.id)).length).toBeGreaterThan(0);
      throw new Error("the test failed half-way");
    } catch (err) {
      thrown = err;
    } finally {
      await doomed.dispose();
    }
    expect(String(thrown)).toContain("failed half-way");
    await assertNoLeaks(doomed.id);
    // dispose() is idempotent.
    await doomed.dispose();

    // The shared lab of this file, with its servers, UDP listeners and etcd data, too.
    await lab.dispose();
    await assertNoLeaks(lab.id);
  });
});

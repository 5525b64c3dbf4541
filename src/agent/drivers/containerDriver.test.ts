import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { mkdtemp, rm, rmdir } from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import Docker from "dockerode";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { ensurePodman, type PodmanAvailability } from "../../../test/helpers/podman.js";
import { waitFor } from "../../../test/helpers/processes.js";
import {
  containerNameFor,
  containerUlimits,
  createContainerDriver,
  seccompSecurityOpt,
} from "./containerDriver.js";
import { DriverError, type LogLine, type ReplicaRunSpec } from "./driver.js";
import { detectDrivers } from "./index.js";
import { ReplicaOwner } from "./ownership.js";

const podman: PodmanAvailability = await ensurePodman();
/** Where the drivers write the seccomp profile (the agent's data dir in production). */
const driverDataDir = await mkdtemp(path.join(tmpdir(), "cloudless-container-driver-"));
const skipReason = podman.available ? "" : podman.reason;
if (skipReason) console.warn(`container driver tests skipped: ${skipReason}`);

afterAll(async () => {
  if (podman.available) await podman.stop();
  await rm(driverDataDir, { recursive: true, force: true });
});

/** A port that was free a moment ago (the engine binds it, so it cannot be held open). */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

let counter = 0;
function replicaId(): string {
  counter += 1;
  return `ct-${process.pid}-${Date.now().toString(36)}-${counter}`;
}

function spec(overrides: Partial<ReplicaRunSpec> & { replicaId: string }): ReplicaRunSpec {
  return {
    namespace: "default",
    workload: "web",
    driver: "container",
    image: podman.available ? podman.image : "none",
    env: {},
    ports: [],
    resources: { cpuMillicores: 0, memoryMiB: 0, storageGiB: 0 },
    ...overrides,
  };
}

async function collect(iterable: AsyncIterable<LogLine>): Promise<LogLine[]> {
  const lines: LogLine[] = [];
  for await (const line of iterable) lines.push(line);
  return lines;
}

/**
 * Where a process's cgroup files are on the host, for both interfaces: v1 lists a
 * path per controller in /proc/<pid>/cgroup, v2 a single "0::" path.
 */
function hostCgroupFiles(pid: number): { memoryLimit: string; cpuLimit: string } {
  const lines = readFileSync(`/proc/${pid}/cgroup`, "utf8").trim().split("\n");
  const pathFor = (controller: string): string | undefined =>
    lines
      .map((line) => /^\d+:([^:]*):(.*)$/.exec(line))
      .find((match) => match?.[1]?.split(",").includes(controller))?.[2];
  const memoryV1 = pathFor("memory");
  const cpuV1 = pathFor("cpu");
  if (memoryV1 !== undefined && cpuV1 !== undefined && existsSync("/sys/fs/cgroup/memory")) {
    const memoryDir = path.join("/sys/fs/cgroup/memory", memoryV1);
    const cpuDir = path.join("/sys/fs/cgroup/cpu", cpuV1);
    return {
      memoryLimit: readFileSync(path.join(memoryDir, "memory.limit_in_bytes"), "utf8").trim(),
      cpuLimit: [
        readFileSync(path.join(cpuDir, "cpu.cfs_quota_us"), "utf8").trim(),
        readFileSync(path.join(cpuDir, "cpu.cfs_period_us"), "utf8").trim(),
      ].join(" "),
    };
  }
  const unified = lines.find((line) => line.startsWith("0::"))?.slice(3) ?? "/";
  const dir = path.join("/sys/fs/cgroup", unified);
  return {
    memoryLimit: readFileSync(path.join(dir, "memory.max"), "utf8").trim(),
    cpuLimit: readFileSync(path.join(dir, "cpu.max"), "utf8").trim(),
  };
}

describe("container rlimits (REQ-062)", () => {
  it("REQ-062 gives nofile and nproc explicitly, never above the agent's own hard limit (runc cannot raise it)", () => {
    const limits = (nofileHard: string, nprocHard: string) =>
      [
        "Limit                     Soft Limit           Hard Limit           Units",
        `Max processes             4096                 ${nprocHard}                processes`,
        `Max open files            1024                 ${nofileHard}                files`,
      ].join("\n");
    expect(containerUlimits(limits("20000", "96367"))).toEqual([
      { Name: "nofile", Soft: 20_000, Hard: 20_000 },
      { Name: "nproc", Soft: 4096, Hard: 4096 },
    ]);
    expect(containerUlimits(limits("unlimited", "unlimited"))).toEqual([
      { Name: "nofile", Soft: 65_536, Hard: 65_536 },
      { Name: "nproc", Soft: 4096, Hard: 4096 },
    ]);
  });
});

describe("container seccomp option (REQ-062)", () => {
  it("REQ-062 gives Podman the profile's path and Docker the profile itself; unconfined without one", () => {
    const profile = {
      path: "/agent/seccomp-default.json",
      json: '{"defaultAction":"SCMP_ACT_ALLOW"}',
    };
    expect(seccompSecurityOpt(profile, true)).toBe("seccomp=/agent/seccomp-default.json");
    expect(seccompSecurityOpt(profile, false)).toBe('seccomp={"defaultAction":"SCMP_ACT_ALLOW"}');
    expect(seccompSecurityOpt(undefined, true)).toBe("seccomp=unconfined");
  });
});

describe("container driver without an engine", () => {
  it("reports an unreachable socket in health() and start() fails as unavailable", async () => {
    const socketPath = "/nonexistent/cloudless/docker.sock";
    const driver = createContainerDriver({ dataDir: driverDataDir, socketPath });
    const health = await driver.health();
    expect(health.ok).toBe(false);
    if (!health.ok) expect(health.reason).toContain(socketPath);
    const error = await driver
      .start(spec({ replicaId: "unreachable", image: "busybox" }))
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(DriverError);
    expect((error as DriverError).kind).toBe("unavailable");
  });

  it("rejects a spec without an image or with an unusable replica id as invalid", async () => {
    const driver = createContainerDriver({
      dataDir: driverDataDir,
      socketPath: "/nonexistent/docker.sock",
    });
    const noImage = await driver
      .start({ ...spec({ replicaId: "x" }), image: undefined })
      .catch((caught: unknown) => caught);
    expect((noImage as DriverError).kind).toBe("invalid");
    const badId = await driver.status("../etc").catch((caught: unknown) => caught);
    expect((badId as DriverError).kind).toBe("invalid");
  });
});

describe.skipIf(skipReason !== "")("container driver on podman", () => {
  const created: string[] = [];
  const driver = () =>
    createContainerDriver({
      dataDir: driverDataDir,
      socketPath: podman.available ? podman.socketPath : "",
    });

  afterEach(async () => {
    // Every container a test made goes, whatever the test's outcome.
    const cleanup = driver();
    for (const id of created.splice(0)) await cleanup.remove(id).catch(() => undefined);
  });

  it("runs busybox httpd on a host port: HTTP, status, logs, exec, stop, restart, remove", async () => {
    const runtime = driver();
    expect(await runtime.health()).toEqual({ ok: true });
    const id = replicaId();
    created.push(id);
    const hostPort = await freePort();
    const replica = spec({
      replicaId: id,
      command: ["/bin/sh", "-c"],
      args: ["echo started; echo to-stderr >&2; exec httpd -f -p 8080 -h /www"],
      env: { GREETING: "hello" },
      ports: [{ name: "http", containerPort: 8080, hostPort, protocol: "tcp" }],
    });
    await runtime.start(replica);

    const body = await waitFor("the page over the published port", async () => {
      const response = await fetch(`http://127.0.0.1:${hostPort}/index.html`, {
        signal: AbortSignal.timeout(2_000),
      });
      return response.ok ? response.text() : undefined;
    });
    expect(body).toContain("cloudless test page");

    const running = await runtime.status(id);
    expect(running.state).toBe("running");
    expect(running.startedAtMs).toBeGreaterThan(Date.now() - 120_000);
    expect(await runtime.list()).toContain(id);

    const lines = await collect(runtime.logs(id, { follow: false }));
    expect(lines).toContainEqual({ stream: "stdout", line: "started" });
    expect(lines).toContainEqual({ stream: "stderr", line: "to-stderr" });
    expect(await collect(runtime.logs(id, { follow: false, tailLines: 0 }))).toEqual([]);

    expect(await runtime.exec(id, ["echo", "hi"], 10_000)).toEqual({
      exitCode: 0,
      stdout: "hi\n",
      stderr: "",
    });
    const shell = await runtime.exec(
      id,
      ["/bin/sh", "-c", 'echo "$GREETING"; echo oops >&2; exit 3'],
      10_000,
    );
    expect(shell).toEqual({ exitCode: 3, stdout: "hello\n", stderr: "oops\n" });

    // start() of a running replica is a no-op: same container.
    const docker = new Docker({ socketPath: podman.available ? podman.socketPath : "" });
    const before = await docker.getContainer(containerNameFor(id)).inspect();
    await runtime.start(replica);
    const after = await docker.getContainer(containerNameFor(id)).inspect();
    expect(after.Id).toBe(before.Id);

    // httpd runs as PID 1 and ignores SIGTERM, so the grace period ends in SIGKILL.
    await runtime.stop(id, 1_000);
    const stopped = await runtime.status(id);
    expect(stopped.state).toBe("exited");
    expect(stopped.exitCode).toBe(137);
    expect(stopped.finishedAtMs).toBeGreaterThanOrEqual(stopped.startedAtMs ?? 0);
    await runtime.stop(id, 1_000); // idempotent
    const execStopped = await runtime.exec(id, ["true"], 5_000).catch((error: unknown) => error);
    expect((execStopped as DriverError).kind).toBe("failed");

    // start() of an exited replica replaces its container.
    await runtime.start(replica);
    expect((await runtime.status(id)).state).toBe("running");
    const replaced = await docker.getContainer(containerNameFor(id)).inspect();
    expect(replaced.Id).not.toBe(before.Id);
    expect(replaced.Config.Labels).toMatchObject({
      "cloudless.replica": id,
      "cloudless.workload": "web",
      "cloudless.namespace": "default",
    });

    await runtime.remove(id);
    expect(await runtime.status(id)).toEqual({ state: "missing" });
    expect(await runtime.list()).not.toContain(id);
    await runtime.remove(id); // idempotent
    await runtime.stop(id, 0);
  });

  it("is detected first when its engine answers", async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), "cloudless-detect-ct-"));
    const cgroupParent = `cloudless-detect-ct-${process.pid}`;
    try {
      const detected = await detectDrivers({
        dataDir,
        socketPath: podman.available ? podman.socketPath : "",
        cgroupParent,
        enforceLimits: false,
      });
      expect(detected.drivers.map((driver) => driver.name)).toEqual(["container", "process"]);
      expect(detected.unavailable).toEqual([]);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
      for (const controller of ["", "cpu", "memory"]) {
        await rmdir(path.join("/sys/fs/cgroup", controller, cgroupParent)).catch(() => undefined);
      }
    }
  });

  it("gives the entrypoint no image CMD arguments when only command is set", async () => {
    const runtime = driver();
    const id = replicaId();
    created.push(id);
    await runtime.start(spec({ replicaId: id, command: ["/bin/echo", "only", "these"] }));
    await waitFor("the echo to finish", async () => (await runtime.status(id)).state === "exited");
    expect(await runtime.status(id)).toMatchObject({ state: "exited", exitCode: 0 });
    const lines = await collect(runtime.logs(id, { follow: false }));
    expect(lines).toEqual([{ stream: "stdout", line: "only these" }]);
  });

  it("follows logs until the caller aborts, and ends when the container stops", async () => {
    const runtime = driver();
    const id = replicaId();
    created.push(id);
    await runtime.start(
      spec({
        replicaId: id,
        command: ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.2; done"],
      }),
    );
    const controller = new AbortController();
    const seen: string[] = [];
    for await (const entry of runtime.logs(id, { follow: true, signal: controller.signal })) {
      seen.push(entry.line);
      if (seen.length === 3) controller.abort();
    }
    expect(seen.slice(0, 3)).toEqual(["line 1", "line 2", "line 3"]);

    const follower = collect(runtime.logs(id, { follow: true, tailLines: 1 }));
    await runtime.stop(id, 0);
    const tail = await follower;
    expect(tail.length).toBeGreaterThanOrEqual(1);
    expect(tail[0]?.line).toMatch(/^line \d+$/);
  });

  it("fails fast with imageNotFound for an image that is not present and cannot be pulled", async () => {
    const runtime = driver();
    const id = replicaId();
    created.push(id);
    const error = await runtime
      .start(spec({ replicaId: id, image: "localhost/nope:1" }))
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(DriverError);
    expect((error as DriverError).kind).toBe("imageNotFound");
    expect((error as DriverError).message).toContain(
      'image "localhost/nope:1" is not present on this node and could not be pulled',
    );
    expect((await runtime.status(id)).state).toBe("missing");
  });

  it("REQ-011 REQ-062 applies memory and cpu limits (inspect and host cgroup files) and least privilege", async () => {
    const runtime = driver();
    const id = replicaId();
    created.push(id);
    await runtime.start(
      spec({
        replicaId: id,
        command: ["/bin/sleep", "60"],
        resources: { cpuMillicores: 250, memoryMiB: 64, storageGiB: 0 },
      }),
    );
    const docker = new Docker({ socketPath: podman.available ? podman.socketPath : "" });
    const info = await docker.getContainer(containerNameFor(id)).inspect();
    expect(info.HostConfig.Memory).toBe(64 * 1024 * 1024);
    expect(info.HostConfig.NanoCpus).toBe(250_000_000);
    expect(info.HostConfig.RestartPolicy?.Name ?? "no").toMatch(/^(no|)$/);

    const pid = info.State.Pid;
    expect(pid).toBeGreaterThan(0);
    const files = hostCgroupFiles(pid);
    expect(files.memoryLimit).toBe(String(64 * 1024 * 1024));
    // "quota period": from cpu.cfs_quota_us + cpu.cfs_period_us (v1) or cpu.max (v2).
    expect(files.cpuLimit).toBe("25000 100000");

    // Least privilege (ADR 0054): not root, no capabilities at all, no new privileges,
    // the seccomp filter, limits on pids and rlimits, a private /tmp.
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    expect(status).toMatch(/^Uid:\s+65534\s/m);
    expect(status).toMatch(/^NoNewPrivs:\s+1$/m);
    expect(status).toMatch(/^Seccomp:\s+2$/m);
    expect(status).toMatch(/^CapEff:\s+0000000000000000$/m);
    expect(status).toMatch(/^CapBnd:\s+0000000000000000$/m);
    expect(info.HostConfig.PidsLimit).toBe(4096);
    // The agent's profile, by path (Podman), generated from the process filter's list.
    const profile = path.join(driverDataDir, "seccomp-default.json");
    expect(JSON.parse(readFileSync(profile, "utf8"))).toMatchObject({
      defaultAction: "SCMP_ACT_ALLOW",
    });
    expect(info.HostConfig.SecurityOpt).toContain(`seccomp=${profile}`);
    expect(statSync(profile).mode & 0o777).toBe(0o644);
    // The engine loads that very file: a profile that also denies getcwd makes pwd fail
    // in the next container of the same driver, and only there.
    expect((await runtime.exec(id, ["/bin/busybox", "pwd"], 10_000)).exitCode).toBe(0);
    const denyGetcwd = JSON.parse(readFileSync(profile, "utf8"));
    denyGetcwd.syscalls.push({ names: ["getcwd"], action: "SCMP_ACT_ERRNO", errnoRet: 1 });
    writeFileSync(profile, JSON.stringify(denyGetcwd));
    const second = replicaId();
    created.push(second);
    await runtime.start(spec({ replicaId: second, command: ["/bin/sleep", "60"] }));
    const pwd = await runtime.exec(second, ["/bin/busybox", "pwd"], 10_000);
    expect(pwd.exitCode).not.toBe(0);
    expect(pwd.stderr).toMatch(/not permitted/i);
    expect(info.HostConfig.Tmpfs).toHaveProperty("/tmp");
    expect(info.HostConfig.ReadonlyRootfs).toBe(false);
    const limits = readFileSync(`/proc/${pid}/limits`, "utf8");
    expect(limits).toMatch(/^Max open files\s+(\d+)\s+\1\s/m);
    expect(limits).toMatch(/^Max processes\s+4096\s+4096/m);
  });

  it("REQ-062 securityContext: runAsUser, exactly the added capability, a read-only root file system, seccomp unconfined", async () => {
    const runtime = driver();
    const id = replicaId();
    created.push(id);
    await runtime.start(
      spec({
        replicaId: id,
        command: ["/bin/sleep", "60"],
        security: {
          runAsUser: 1234,
          capabilitiesAdd: ["NET_BIND_SERVICE"],
          readOnlyRootFilesystem: true,
          seccomp: false,
        },
      }),
    );
    const docker = new Docker({ socketPath: podman.available ? podman.socketPath : "" });
    const info = await docker.getContainer(containerNameFor(id)).inspect();
    expect(info.HostConfig.ReadonlyRootfs).toBe(true);
    const status = readFileSync(`/proc/${info.State.Pid}/status`, "utf8");
    expect(status).toMatch(/^Uid:\s+1234\s/m);
    expect(status).toMatch(/^Gid:\s+1234\s/m);
    // NET_BIND_SERVICE is bit 10: 0x400, and nothing else.
    expect(status).toMatch(/^CapBnd:\s+0000000000000400$/m);
    expect(status).toMatch(/^Seccomp:\s+0$/m);
    const write = await runtime.exec(id, ["/bin/busybox", "touch", "/written"], 10_000);
    expect(write.exitCode).not.toBe(0);
    const tmp = await runtime.exec(id, ["/bin/busybox", "touch", "/tmp/written"], 10_000);
    expect(tmp.exitCode, tmp.stderr).toBe(0);
  });

  it("REQ-041 a replica given service DNS settings gets them in the engine's HostConfig and its resolv.conf", async () => {
    const runtime = driver();
    const id = replicaId();
    created.push(id);
    await runtime.start(
      spec({
        replicaId: id,
        command: ["/bin/sleep", "60"],
        dns: {
          servers: ["10.96.0.10"],
          search: ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
          options: ["ndots:5"],
        },
      }),
    );
    const docker = new Docker({ socketPath: podman.available ? podman.socketPath : "" });
    const info = await docker.getContainer(containerNameFor(id)).inspect();
    expect(info.HostConfig.Dns).toEqual(["10.96.0.10"]);
    expect(info.HostConfig.DnsSearch).toEqual([
      "default.svc.cluster.local",
      "svc.cluster.local",
      "cluster.local",
    ]);
    const resolvConf = await runtime.exec(id, ["cat", "/etc/resolv.conf"], 10_000);
    expect(resolvConf.stdout).toMatch(/^nameserver 10\.96\.0\.10$/m);
    expect(resolvConf.stdout).toMatch(
      /^search default\.svc\.cluster\.local svc\.cluster\.local cluster\.local$/m,
    );
    expect(resolvConf.stdout).toMatch(/ndots:5/);
  });

  it("REQ-032 portOwner: a port the running container publishes is its own (the engine holds it, nothing else can bind it); any other port is not; a stopped container owns none", async () => {
    const runtime = driver();
    const id = replicaId();
    created.push(id);
    const hostPort = await freePort();
    const otherPort = await freePort();
    await runtime.start(
      spec({
        replicaId: id,
        command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
        ports: [{ name: "http", containerPort: 8080, hostPort, protocol: "tcp" }],
      }),
    );
    expect(await runtime.portOwner?.(id, hostPort)).toEqual({ kind: "replica" });
    expect(await runtime.portOwner?.(id, otherPort)).toEqual({
      kind: "other",
      holder: `whatever listens there: container ${containerNameFor(id)} does not publish it (it publishes ${hostPort})`,
    });
    // What the answer rests on: while the container runs, the engine's forwarder holds
    // the port, so no other program can listen on it and answer its probes.
    const intruder = net.createServer();
    const bound = await new Promise<boolean>((resolve) => {
      intruder.once("error", () => resolve(false));
      intruder.listen(hostPort, "0.0.0.0", () => resolve(true));
    });
    if (bound) await new Promise<void>((resolve) => intruder.close(() => resolve()));
    expect(bound).toBe(false);
    await runtime.stop(id, 0);
    expect(await runtime.portOwner?.(id, hostPort)).toEqual({ kind: "nobody" });
  });

  it("NFR-U1 hardening: a hurry (second Ctrl-C) during a long grace period kills the container at once (ADR 0028)", async () => {
    const runtime = driver();
    const id = replicaId();
    created.push(id);
    // httpd as PID 1 ignores SIGTERM: only the kill ends it before the grace period.
    await runtime.start(
      spec({ replicaId: id, command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"] }),
    );
    await waitFor(
      "the container to run",
      async () => (await runtime.status(id)).state === "running",
    );
    const hurry = new AbortController();
    const stopped = runtime.stop(id, 600_000, hurry.signal);
    setTimeout(() => hurry.abort(), 500);
    await stopped; // a grace of ten minutes: only the hurry ends this within the test's time
    expect(await runtime.status(id)).toMatchObject({ state: "exited", exitCode: 137 });
  });

  it("bounds exec with a deadline", async () => {
    const runtime = driver();
    const id = replicaId();
    created.push(id);
    await runtime.start(spec({ replicaId: id, command: ["/bin/sleep", "60"] }));
    const error = await runtime.exec(id, ["/bin/sleep", "30"], 500).catch((caught) => caught);
    expect(error).toBeInstanceOf(DriverError);
    expect((error as DriverError).message).toContain("did not finish within 500 ms");
  });

  it("REQ-030 hardening: agents of two clusters with the same node name on one engine never list, adopt, stop or remove each other's containers", async () => {
    const socketPath = podman.available ? podman.socketPath : "";
    // The default node name is the host name: both clusters' agents are "shared-host".
    const ownerA = new ReplicaOwner("a1a1a1a1a1a1a1a1", "shared-host", "uid-a");
    const ownerB = new ReplicaOwner("b2b2b2b2b2b2b2b2", "shared-host", "uid-b");
    // Same cluster and name, another enrollment (the node was deleted and joined again).
    const ownerA2 = new ReplicaOwner("a1a1a1a1a1a1a1a1", "shared-host", "uid-a2");
    const agentA = createContainerDriver({ dataDir: driverDataDir, socketPath, owner: ownerA });
    const agentB = createContainerDriver({ dataDir: driverDataDir, socketPath, owner: ownerB });
    const agentA2 = createContainerDriver({ dataDir: driverDataDir, socketPath, owner: ownerA2 });
    const idA = replicaId();
    const idB = replicaId();
    created.push(idA, idB);
    await agentA.start(spec({ replicaId: idA, command: ["/bin/sleep", "600"] }));
    await agentB.start(spec({ replicaId: idB, command: ["/bin/sleep", "600"] }));
    const docker = new Docker({ socketPath });
    const infoA = await docker.getContainer(containerNameFor(idA)).inspect();
    expect(infoA.Config.Labels).toMatchObject({
      "cloudless.replica": idA,
      "cloudless.node": "shared-host",
      "cloudless.cluster": "a1a1a1a1a1a1a1a1",
      "cloudless.node-uid": "uid-a",
    });

    // Each lists only its own (the bug: B listed A's and removed it as "nobody wants").
    expect(await agentA.list()).toContain(idA);
    expect(await agentA.list()).not.toContain(idB);
    expect(await agentB.list()).toContain(idB);
    expect(await agentB.list()).not.toContain(idA);
    expect(await agentA2.list()).not.toContain(idA);

    // Asked about the other's replica by id, B sees nothing and touches nothing.
    expect(await agentB.status(idA)).toEqual({ state: "missing" });
    await agentB.stop(idA, 0);
    await agentB.remove(idA);
    await agentA2.remove(idA);
    const refused = await agentB
      .start(spec({ replicaId: idA, command: ["/bin/sleep", "600"] }))
      .catch((caught: unknown) => caught);
    expect(refused).toBeInstanceOf(DriverError);
    expect((refused as DriverError).message).toContain("belongs to another cluster or node");
    const execRefused = await agentB.exec(idA, ["true"], 5_000).catch((caught: unknown) => caught);
    expect((execRefused as DriverError).message).toContain("belongs to another cluster or node");
    const after = await docker.getContainer(containerNameFor(idA)).inspect();
    expect(after.Id).toBe(infoA.Id);
    expect(after.State.Running).toBe(true);
    expect((await agentA.status(idA)).state).toBe("running");
  });

  it("NFR-A1 hardening: a container an older agent made (node label, no owner marks) is adopted only when the agent's own state lists it", async () => {
    const socketPath = podman.available ? podman.socketPath : "";
    const legacyAgent = createContainerDriver({
      dataDir: driverDataDir,
      socketPath,
      nodeName: "legacy-host",
    });
    const id = replicaId();
    created.push(id);
    await legacyAgent.start(spec({ replicaId: id, command: ["/bin/sleep", "600"] }));
    const owner = new ReplicaOwner("c3c3c3c3c3c3c3c3", "legacy-host", "uid-c");
    const upgraded = createContainerDriver({ dataDir: driverDataDir, socketPath, owner });
    // Not in its state: it may be another cluster's (same node name), so it is left alone.
    expect(await upgraded.list()).not.toContain(id);
    expect(await upgraded.status(id)).toEqual({ state: "missing" });
    await upgraded.remove(id);
    expect((await legacyAgent.status(id)).state).toBe("running");
    // Listed in its state: its own, adopted as it runs.
    owner.setStateLookup((replica) => replica === id);
    expect(await upgraded.list()).toContain(id);
    expect((await upgraded.status(id)).state).toBe("running");
    // Another node name never counts, state or not.
    const otherNode = new ReplicaOwner("c3c3c3c3c3c3c3c3", "other-host", "uid-d");
    otherNode.setStateLookup(() => true);
    expect(
      await createContainerDriver({ dataDir: driverDataDir, socketPath, owner: otherNode }).list(),
    ).not.toContain(id);
    await upgraded.remove(id);
    expect(await legacyAgent.status(id)).toEqual({ state: "missing" });
  });
});

import { mkdtemp, rm, rmdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { detectCgroupLayout, prepareParent } from "./cgroups.js";
import { defaultSocketCandidates, detectDrivers } from "./index.js";

const cgroupParent = `cloudless-detect-${process.pid}`;
const layout = detectCgroupLayout("/sys/fs/cgroup");
const cgroupsUsable =
  process.getuid?.() === 0 && (await prepareParent(layout, cgroupParent)) === undefined;
const dataDirs: string[] = [];

afterAll(async () => {
  for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
  if (layout.version === 2)
    await rmdir(path.join(layout.root, cgroupParent)).catch(() => undefined);
  if (layout.version === 1) {
    await rmdir(path.join(layout.cpuRoot, cgroupParent)).catch(() => undefined);
    await rmdir(path.join(layout.memoryRoot, cgroupParent)).catch(() => undefined);
  }
});

describe("driver discovery", () => {
  it("looks at DOCKER_HOST (unix only), then Docker's and Podman's default sockets", () => {
    expect(defaultSocketCandidates({ DOCKER_HOST: "unix:///run/user/0/docker.sock" })).toEqual([
      "/run/user/0/docker.sock",
      "/var/run/docker.sock",
      "/run/podman/podman.sock",
    ]);
    expect(defaultSocketCandidates({ DOCKER_HOST: "tcp://10.0.0.1:2375" })).toEqual([
      "/var/run/docker.sock",
      "/run/podman/podman.sock",
    ]);
  });

  it("keeps the healthy drivers and gives reasons for the others", async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), "cloudless-detect-"));
    dataDirs.push(dataDir);
    const socketPath = path.join(dataDir, "no-engine.sock");
    const detected = await detectDrivers({ dataDir, socketPath, cgroupParent });
    expect(detected.unavailable).toContainEqual({
      name: "container",
      reason: expect.stringContaining(socketPath),
    });
    if (cgroupsUsable) {
      expect(detected.drivers.map((driver) => driver.name)).toEqual(["process"]);
    } else {
      expect(detected.unavailable.map((entry) => entry.name)).toContain("process");
    }
  });
});

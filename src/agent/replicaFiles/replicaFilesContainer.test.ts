/**
 * Secrets and configs in a real container (REQ-063, ADR 0055): the driver binds the
 * directory read-only at the mount path, so the replica reads the files and sees an
 * atomic swap without a restart.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import Docker from "dockerode";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { ensurePodman, type PodmanAvailability } from "../../../test/helpers/podman.js";
import { containerNameFor, createContainerDriver } from "../drivers/containerDriver.js";
import { writeAtomicDir } from "./atomicDir.js";

const podman: PodmanAvailability = await ensurePodman();
const skipReason = podman.available ? "" : podman.reason;
if (skipReason) console.warn(`replica files container tests skipped: ${skipReason}`);

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});
afterAll(async () => {
  if (podman.available) await podman.stop();
});

describe.skipIf(skipReason !== "")("REQ-063 secrets in containers", () => {
  it("REQ-063 a container reads its secret at the mount path, read-only, and sees an update in place (same container)", async () => {
    const socketPath = podman.available ? podman.socketPath : "";
    const driver = createContainerDriver({ socketPath });
    const dir = await mkdtemp(path.join(tmpdir(), "cloudless-files-ct-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const source = path.join(dir, "db");
    const values = (password: string) => new Map([["password", Buffer.from(password)]]);
    const id = `files-ct-${process.pid}-${Date.now().toString(36)}`;
    cleanups.push(() => driver.remove(id));
    const spec = {
      replicaId: id,
      namespace: "default",
      workload: "web",
      driver: "container" as const,
      image: podman.available ? podman.image : "none",
      command: ["/bin/sleep", "600"],
      env: {},
      ports: [],
      resources: { cpuMillicores: 0, memoryMiB: 0, storageGiB: 0 },
      mounts: [{ source, target: "/run/secrets/db" }],
    };
    // The container runs as an unprivileged user (ADR 0054): its files are that user's.
    const owner = await driver.replicaUser?.(spec);
    if (!owner) throw new Error("the container driver must tell the replica's user");
    expect(owner.uid).toBeGreaterThan(0);
    const options = { fileMode: 0o400, dirMode: 0o500, owner };
    await writeAtomicDir(source, values("ct-one-5d2e"), options);
    await driver.start(spec);
    const read = async () =>
      (await driver.exec(id, ["cat", "/run/secrets/db/password"], 10_000)).stdout;
    expect(await read()).toBe("ct-one-5d2e");
    const write = await driver.exec(
      id,
      ["/bin/sh", "-c", "echo x > /run/secrets/db/other && echo wrote || echo refused"],
      10_000,
    );
    expect(write.stdout.trim()).toBe("refused");
    const docker = new Docker({ socketPath });
    const before = await docker.getContainer(containerNameFor(id)).inspect();
    await writeAtomicDir(source, values("ct-two-8b1f"), options);
    expect(await read()).toBe("ct-two-8b1f");
    const after = await docker.getContainer(containerNameFor(id)).inspect();
    expect(after.State.Pid).toBe(before.State.Pid);
    expect(after.State.StartedAt).toBe(before.State.StartedAt);
  });
});

import { mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ensureSecretsTmpfs, isMountPoint, releaseSecretsTmpfs } from "./secretsTmpfs.js";

const isRoot = process.getuid?.() === 0;
const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) {
    const mounted = path.join(dir, "secrets-tmpfs");
    if (await isMountPoint(mounted)) {
      await rm(path.join(mounted, "r1"), { recursive: true, force: true });
      await releaseSecretsTmpfs(mounted);
    }
    await rm(dir, { recursive: true, force: true });
  }
});

describe.skipIf(!isRoot)("secrets tmpfs (REQ-063, needs root)", () => {
  it("REQ-063: mounts once, 0711, and unmounts only when no replica has files in it", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "secrets-tmpfs-"));
    dirs.push(dir);
    const mountPoint = path.join(dir, "secrets-tmpfs");
    await ensureSecretsTmpfs(mountPoint);
    await ensureSecretsTmpfs(mountPoint); // idempotent: an agent restarted finds it mounted
    expect(await isMountPoint(mountPoint)).toBe(true);
    expect((await stat(mountPoint)).mode & 0o777).toBe(0o711);
    await writeFile(path.join(mountPoint, "r1"), "x");
    expect(await releaseSecretsTmpfs(mountPoint)).toBe(false);
    expect(await isMountPoint(mountPoint)).toBe(true);
    await rm(path.join(mountPoint, "r1"));
    expect(await releaseSecretsTmpfs(mountPoint)).toBe(true);
    expect(await isMountPoint(mountPoint)).toBe(false);
    expect(await readdir(dir)).toEqual([]);
  });
});

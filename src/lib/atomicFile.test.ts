import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { pathsSyncedBy, straceWorks } from "../../test/helpers/strace.js";
import { writeFileAtomically, writePublicFile, writeSecretFile } from "./atomicFile.js";

describe("atomic file writes", () => {
  let root: string;

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), "cloudless-atomic-"));
  });

  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  const modeOf = async (p: string) => (await fs.stat(p)).mode & 0o777;

  it("NFR-S1: writeSecretFile writes 0600 atomically, replaces by default and refuses when exclusive", async () => {
    const file = path.join(root, "node.key");
    await writeSecretFile(file, "one");
    expect(await modeOf(file)).toBe(0o600);
    await writeSecretFile(file, "two");
    expect(await fs.readFile(file, "utf8")).toBe("two");
    expect(await modeOf(file)).toBe(0o600);
    await expect(writeSecretFile(file, "three", { exclusive: true })).rejects.toMatchObject({
      code: "EEXIST",
    });
    expect(await fs.readFile(file, "utf8")).toBe("two");
    await writePublicFile(path.join(root, "node.crt"), "cert");
    expect(await modeOf(path.join(root, "node.crt"))).toBe(0o644);
    // No temporary files are left behind, whatever happened.
    expect((await fs.readdir(root)).sort()).toEqual(["node.crt", "node.key"]);
  });

  it("NFR-S1: writeSecretFile keeps 0600 even when the existing file was wider", async () => {
    const file = path.join(root, "token");
    await fs.writeFile(file, "old", { mode: 0o644 });
    await writeSecretFile(file, "new");
    expect(await modeOf(file)).toBe(0o600);
  });

  it("NFR-A1 contract: a failed replace leaves the target as it was and no temporary file", async () => {
    // A directory in the way makes rename(2) fail after the temporary file was written.
    const target = path.join(root, "state.json");
    await fs.mkdir(target);
    await fs.writeFile(path.join(target, "inside"), "kept");
    await expect(writeFileAtomically(target, "new", { mode: 0o600 })).rejects.toMatchObject({
      code: expect.stringMatching(/^(EISDIR|ENOTEMPTY|EEXIST)$/),
    });
    expect(await fs.readdir(root)).toEqual(["state.json"]);
    expect(await fs.readFile(path.join(target, "inside"), "utf8")).toBe("kept");
  });

  it.skipIf(!straceWorks)(
    "NFR-A1 contract: the temporary file is fsynced before the rename and the directory after it",
    async () => {
      const module = new URL("./atomicFile.ts", import.meta.url).href;
      const file = path.join(root, "ca.key");
      const synced = await pathsSyncedBy(`
        import { writeSecretFile } from ${JSON.stringify(module)};
        await writeSecretFile(${JSON.stringify(file)}, "secret", { exclusive: true });
      `);
      const mine = synced.filter((p) => p.startsWith(root));
      expect(mine).toHaveLength(2);
      expect(path.basename(mine[0]!)).toMatch(/^\.ca\.key\.[0-9a-f]{12}\.tmp$/);
      expect(mine[1]).toBe(root);
      expect(await fs.readFile(file, "utf8")).toBe("secret");
    },
    30_000,
  );
});

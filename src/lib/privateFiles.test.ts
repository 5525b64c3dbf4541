import { chmod, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { describeTightened, ensurePrivateFile, tightenFileMode } from "./privateFiles.js";

describe("NFR-S1 private files are 0600 whatever the umask", () => {
  let dir = "";
  let umask = 0;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-private-"));
    umask = process.umask(0);
  });
  afterEach(async () => {
    process.umask(umask);
    await rm(dir, { recursive: true, force: true });
  });
  const modeOf = async (file: string) => (await stat(file)).mode & 0o777;

  it("creates a missing file 0600 under umask 000, and leaves an existing one's content", async () => {
    const file = path.join(dir, "store.db");
    expect(await ensurePrivateFile(file)).toBeUndefined();
    expect(await modeOf(file)).toBe(0o600);
    await writeFile(file, "kept");
    await chmod(file, 0o644);
    const tightened = await ensurePrivateFile(file);
    expect(tightened).toEqual({ file, previousMode: 0o644 });
    expect(describeTightened(tightened as never)).toBe(
      `${file} was readable by other users (mode 644); set to 0600`,
    );
    expect(await modeOf(file)).toBe(0o600);
    expect(await readFile(file, "utf8")).toBe("kept");
  });

  it("tightens an existing file, ignores a missing one, and does not report one that was already private", async () => {
    const file = path.join(dir, "store.db-wal");
    expect(await tightenFileMode(file)).toBeUndefined();
    await writeFile(file, "");
    await chmod(file, 0o666);
    expect(await tightenFileMode(file)).toEqual({ file, previousMode: 0o666 });
    expect(await modeOf(file)).toBe(0o600);
    await chmod(file, 0o400);
    expect(await tightenFileMode(file)).toBeUndefined();
    expect(await modeOf(file)).toBe(0o600);
  });
});

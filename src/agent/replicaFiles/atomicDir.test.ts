import { spawn } from "node:child_process";
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { keyProblem, writeAtomicDir } from "./atomicDir.js";

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "atomic-dir-"));
  dirs.push(dir);
  return dir;
}

const secretModes = { fileMode: 0o400, dirMode: 0o500 };

function files(entries: Record<string, string>): Map<string, Uint8Array> {
  return new Map(Object.entries(entries).map(([key, value]) => [key, Buffer.from(value)]));
}

/**
 * A reader in another process: it resolves `..data` once and reads every key from that
 * version, over and over, and counts sets whose files disagree (a mix) or are partial.
 */
const readerScript = `
const fs = require("node:fs");
const path = require("node:path");
const [root, runMs] = process.argv.slice(1);
const keys = ["a", "b", "c"];
let sets = 0, mixed = 0, partial = 0;
const end = Date.now() + Number(runMs);
while (Date.now() < end) {
  let version;
  try { version = fs.readlinkSync(path.join(root, "..data")); } catch { continue; }
  const values = [];
  try {
    for (const key of keys) values.push(fs.readFileSync(path.join(root, version, key), "utf8"));
  } catch { continue; } // the version went away after the swap: read again
  sets += 1;
  for (const value of values) if (value.length !== 65536 || value !== value[0].repeat(65536)) partial += 1;
  if (new Set(values.map((value) => value[0])).size !== 1) mixed += 1;
  // A key read through its own link is one version, complete.
  try {
    const single = fs.readFileSync(path.join(root, "a"), "utf8");
    if (single.length !== 65536 || single !== single[0].repeat(65536)) partial += 1;
  } catch {}
}
process.stdout.write(JSON.stringify({ sets, mixed, partial }));
`;

describe("writeAtomicDir (REQ-063)", () => {
  it("REQ-063: lays out key -> ..data/key links, a version dir, and the requested modes", async () => {
    const root = path.join(await tempDir(), "db");
    await writeAtomicDir(root, files({ user: "admin", password: "s3cret" }), secretModes);
    expect(await readFile(path.join(root, "password"), "utf8")).toBe("s3cret");
    expect(await readlink(path.join(root, "password"))).toBe("..data/password");
    const version = await readlink(path.join(root, "..data"));
    expect(version).toMatch(/^\.\.v-\d+$/);
    expect((await lstat(path.join(root, version, "password"))).mode & 0o777).toBe(0o400);
    expect((await lstat(path.join(root, version))).mode & 0o777).toBe(0o500);
    expect((await lstat(root)).mode & 0o777).toBe(0o500);
  });

  it("REQ-063: an update swaps the version, drops removed keys and the old version dir", async () => {
    const root = path.join(await tempDir(), "db");
    await writeAtomicDir(root, files({ user: "admin", password: "one" }), secretModes);
    const first = await readlink(path.join(root, "..data"));
    await writeAtomicDir(root, files({ password: "two", token: "t" }), secretModes);
    const second = await readlink(path.join(root, "..data"));
    expect(second).not.toBe(first);
    expect(await readFile(path.join(root, "password"), "utf8")).toBe("two");
    expect(await readFile(path.join(root, "token"), "utf8")).toBe("t");
    expect((await readdir(root)).sort()).toEqual(["..data", second, "password", "token"].sort());
  });

  it("REQ-063: refuses keys that would escape or collide with its own names", async () => {
    const root = path.join(await tempDir(), "db");
    for (const key of ["..data", "../x", "a/b", ".", ""]) {
      expect(keyProblem(key)).toBeDefined();
      await expect(writeAtomicDir(root, files({ [key]: "v" }), secretModes)).rejects.toThrow(
        /cannot be a file name/,
      );
    }
    expect(keyProblem("tls.crt")).toBeUndefined();
  });

  it("REQ-063: a concurrent reader in another process never sees a mix of versions or a partial file", async () => {
    const root = path.join(await tempDir(), "cfg");
    const value = (letter: string) => letter.repeat(65536);
    await writeAtomicDir(root, files({ a: value("A"), b: value("A"), c: value("A") }), {
      fileMode: 0o444,
      dirMode: 0o555,
    });
    const reader = spawn(process.execPath, ["-e", readerScript, root, "1500"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let output = "";
    reader.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    const done = new Promise<number | null>((resolve) => reader.on("exit", resolve));
    try {
      const letters = "BCDEFGHIJKLMNOPQRSTUVWXYZ";
      let writes = 0;
      const endMs = Date.now() + 1200;
      while (Date.now() < endMs) {
        const letter = letters[writes % letters.length] as string;
        await writeAtomicDir(
          root,
          files({ a: value(letter), b: value(letter), c: value(letter) }),
          { fileMode: 0o444, dirMode: 0o555 },
        );
        writes += 1;
      }
      expect(await done).toBe(0);
      const result = JSON.parse(output) as { sets: number; mixed: number; partial: number };
      expect(writes).toBeGreaterThan(10);
      expect(result.sets).toBeGreaterThan(10);
      expect(result.mixed).toBe(0);
      expect(result.partial).toBe(0);
    } finally {
      reader.kill("SIGKILL");
    }
  });
});

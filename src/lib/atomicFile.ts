/**
 * Writing a file so that a crash or power loss leaves the old content or the new, never a
 * half-written file and never a new name pointing at nothing: write a temporary file in the
 * same directory with its final mode, fsync it, rename it over the target, fsync the
 * directory so the rename itself is on disk. The one implementation of this (ADR 0038);
 * keys, certificates, configs and the agent's state file all go through it.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { privateFileMode } from "./privateFiles.js";

/** Certificates and other files anyone on the host may read. */
export const publicFileMode = 0o644;

export interface AtomicWriteOptions {
  /** The file's mode, set exactly whatever the umask. */
  mode: number;
  /**
   * Refuse to replace an existing file (rejects with an EEXIST error) instead of replacing
   * it: the file is created with link(2), which fails rather than replaces, atomically.
   */
  exclusive?: boolean;
}

/** Writes `contents` to `filePath` atomically and durably (see the module comment). */
export async function writeFileAtomically(
  filePath: string,
  contents: string | Uint8Array,
  options: AtomicWriteOptions,
): Promise<void> {
  const { mode, exclusive = false } = options;
  const dir = path.dirname(filePath);
  const tempPath = path.join(
    dir,
    `.${path.basename(filePath)}.${randomBytes(6).toString("hex")}.tmp`,
  );
  // The temp file is created with its final mode, so a secret is never readable by others,
  // not even for the moment between creation and a chmod.
  const handle = await fs.open(tempPath, "wx", mode);
  try {
    try {
      await handle.chmod(mode); // the umask may have narrowed the mode given to open
      await handle.writeFile(contents);
      // On disk before the rename, so a power loss cannot leave an empty file behind it.
      await handle.sync();
    } finally {
      await handle.close();
    }
    if (exclusive) {
      await linkWithoutReplacing(tempPath, filePath);
    } else {
      await fs.rename(tempPath, filePath);
    }
  } finally {
    await fs.rm(tempPath, { force: true });
  }
  await syncDirectory(dir);
}

/** Writes a private file (keys, tokens, configs with credentials): mode 0600, atomically. */
export async function writeSecretFile(
  filePath: string,
  contents: string | Uint8Array,
  options: { exclusive?: boolean } = {},
): Promise<void> {
  await writeFileAtomically(filePath, contents, { ...options, mode: privateFileMode });
}

/** Writes a public file (certificates): mode 0644, atomically. */
export async function writePublicFile(
  filePath: string,
  contents: string | Uint8Array,
  options: { exclusive?: boolean } = {},
): Promise<void> {
  await writeFileAtomically(filePath, contents, { ...options, mode: publicFileMode });
}

/**
 * Makes the directory entries of `dir` durable (a rename, a new or removed file). Some
 * platforms cannot fsync a directory; the data is still safe there, only the name may be
 * lost in a crash, so this is best effort and never throws.
 */
export async function syncDirectory(dir: string): Promise<void> {
  try {
    const handle = await fs.open(dir, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // best effort, see above
  }
}

async function linkWithoutReplacing(fromPath: string, toPath: string): Promise<void> {
  try {
    // link(2) fails with EEXIST instead of replacing, atomically, unlike rename(2).
    await fs.link(fromPath, toPath);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "EPERM" && code !== "ENOTSUP" && code !== "ENOSYS") throw error;
    // Filesystems without hard links: check then rename, which leaves only a narrow race.
    const exists = await fs.stat(toPath).then(
      () => true,
      () => false,
    );
    if (exists) {
      throw Object.assign(new Error(`EEXIST: file already exists, link '${toPath}'`), {
        code: "EEXIST",
      });
    }
    await fs.rename(fromPath, toPath);
  }
}

/**
 * A directory of files that changes as a whole (REQ-063, ADR 0055), the way Kubernetes'
 * AtomicWriter does it:
 *
 *   root/..v-<n>/<key>      the files of one version
 *   root/..data -> ..v-<n>  the version readers see
 *   root/<key>  -> ..data/<key>
 *
 * An update writes a new version dir, points a new `..data` symlink at it and renames
 * that over the old one (rename(2) is atomic), then adds or removes the key symlinks and
 * deletes the old version. A reader that opens `root/<key>` sees one version or the
 * other, never a mix, and a replica that sees `root` through a bind mount sees the swap
 * (the mount is of the directory, not of the files).
 */
import {
  chmod,
  lchown,
  lstat,
  mkdir,
  readdir,
  readlink,
  rename,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import * as path from "node:path";

export interface FileOwner {
  uid: number;
  gid: number;
}

export interface AtomicDirOptions {
  /** Mode of each file (0400 secrets, 0444 configs). */
  fileMode: number;
  /** Mode of the root and version dirs (0500 secrets, 0555 configs). */
  dirMode: number;
  /** Who owns the files and dirs; absent: whoever owns root already (or the agent's user). */
  owner?: FileOwner;
}

const dataLink = "..data";
const versionPrefix = "..v-";
/** Key names are file names: the secret/config limits allow [-._a-zA-Z0-9]; ".." names are ours. */
const keyPattern = /^[-._a-zA-Z0-9]{1,253}$/;

/** Why a key cannot be a file name here, or undefined. */
export function keyProblem(key: string): string | undefined {
  if (!keyPattern.test(key) || key === "." || key.startsWith("..")) {
    return `key "${key.slice(0, 64)}" cannot be a file name (letters, digits, '-', '_', '.', not starting with '..')`;
  }
  return undefined;
}

/**
 * Makes `root` hold exactly `files`, atomically for readers. Idempotent; a crash part-way
 * leaves the previous version visible and a stray version dir the next write removes.
 */
export async function writeAtomicDir(
  root: string,
  files: ReadonlyMap<string, Uint8Array>,
  options: AtomicDirOptions,
): Promise<void> {
  for (const key of files.keys()) {
    const problem = keyProblem(key);
    if (problem) throw new Error(problem);
  }
  await mkdir(root, { recursive: true, mode: 0o700 });
  const rootInfo = await lstat(root);
  if (!rootInfo.isDirectory()) throw new Error(`${root} is not a directory`);
  const owner = options.owner ?? { uid: rootInfo.uid, gid: rootInfo.gid };
  const entries = await readdir(root);
  const current = await readlink(path.join(root, dataLink)).catch(() => undefined);
  const next = nextVersionName(entries);

  // 1. The new version, complete, before anything points at it.
  const versionDir = path.join(root, next);
  await mkdir(versionDir, { mode: 0o700 });
  for (const [key, value] of files) {
    const file = path.join(versionDir, key);
    await writeFile(file, value, { mode: 0o600, flag: "wx" });
    await lchown(file, owner.uid, owner.gid);
    await chmod(file, options.fileMode);
  }
  await lchown(versionDir, owner.uid, owner.gid);
  await chmod(versionDir, options.dirMode);

  // 2. The swap: one rename replaces what `..data` names.
  const temporaryLink = path.join(root, `${dataLink}_tmp`);
  await rm(temporaryLink, { force: true });
  await symlink(next, temporaryLink);
  await lchown(temporaryLink, owner.uid, owner.gid);
  await rename(temporaryLink, path.join(root, dataLink));

  // 3. Key links: new keys appear, removed keys go (they dangle until then, never mix).
  for (const key of files.keys()) {
    const link = path.join(root, key);
    const target = await readlink(link).catch(() => undefined);
    if (target === `${dataLink}/${key}`) continue;
    await rm(link, { force: true, recursive: true });
    await symlink(`${dataLink}/${key}`, link);
    await lchown(link, owner.uid, owner.gid);
  }
  for (const entry of entries) {
    if (entry.startsWith("..") || files.has(entry)) continue;
    await rm(path.join(root, entry), { force: true, recursive: true });
  }
  // 4. Old versions (the one just replaced, and any a crash left behind).
  for (const entry of entries) {
    if (entry.startsWith(versionPrefix) && entry !== next) {
      await rm(path.join(root, entry), { recursive: true, force: true });
    }
  }
  if (current !== undefined && current !== next && !entries.includes(current)) {
    await rm(path.join(root, current), { recursive: true, force: true });
  }
  await lchown(root, owner.uid, owner.gid);
  await chmod(root, options.dirMode);
}

/** The version dir after the highest one present: names never repeat within a root. */
function nextVersionName(entries: readonly string[]): string {
  let highest = 0;
  for (const entry of entries) {
    if (!entry.startsWith(versionPrefix)) continue;
    const number = Number(entry.slice(versionPrefix.length));
    if (Number.isSafeInteger(number) && number > highest) highest = number;
  }
  return `${versionPrefix}${highest + 1}`;
}

import { constants } from "node:fs";
import { open } from "node:fs/promises";

/** Read and write for the owner only: keys, the store, anything with cluster state. */
export const privateFileMode = 0o600;

/** A file that was readable or writable by others and was set to 0600. */
export interface TightenedFile {
  file: string;
  /** Its mode before, e.g. 0o644. */
  previousMode: number;
}

/**
 * Makes `file` exist with mode 0600, whatever the umask and whoever made the directory
 * (a data dir made by `mkdir -p` is 0755). A file that exists keeps its content; when
 * it was open to others it is set to 0600 and reported, so the caller can warn.
 */
export async function ensurePrivateFile(file: string): Promise<TightenedFile | undefined> {
  // O_CREAT without O_TRUNC: creates an empty file or opens the existing one as it is.
  const handle = await open(file, constants.O_RDWR | constants.O_CREAT, privateFileMode);
  try {
    return await tightenHandle(file, handle);
  } finally {
    await handle.close();
  }
}

/** Sets an existing file to 0600 if it is open to others; a missing file is fine. */
export async function tightenFileMode(file: string): Promise<TightenedFile | undefined> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(file, constants.O_RDONLY);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  try {
    return await tightenHandle(file, handle);
  } finally {
    await handle.close();
  }
}

async function tightenHandle(
  file: string,
  handle: Awaited<ReturnType<typeof open>>,
): Promise<TightenedFile | undefined> {
  const mode = (await handle.stat()).mode & 0o777;
  // A new file's mode is 0600 narrowed by the umask: set it exactly, and never wider.
  if (mode === privateFileMode) return undefined;
  await handle.chmod(privateFileMode);
  return (mode & 0o077) === 0 ? undefined : { file, previousMode: mode };
}

/** The warning for a file that was open to others, for a log line. */
export function describeTightened(tightened: TightenedFile): string {
  return `${tightened.file} was readable by other users (mode ${tightened.previousMode.toString(8)}); set to 0600`;
}

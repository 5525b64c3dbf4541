import { open, readFile, unlink } from "node:fs/promises";
import { CloudlessError } from "./errors.js";

/**
 * An exclusive lock on a directory, held by a file naming our pid. A lock left by a
 * process that no longer exists is taken over; a live holder is reported clearly.
 */
export async function acquirePidLock(
  lockPath: string,
  what: string,
): Promise<{ release(): Promise<void> }> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(lockPath, "wx", 0o600);
      await handle.writeFile(String(process.pid));
      await handle.close();
      return {
        async release() {
          await unlink(lockPath).catch(() => undefined);
        },
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const holder = Number((await readFile(lockPath, "utf8").catch(() => "")).trim());
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && isAlive(holder)) {
        throw CloudlessError.unavailable(
          `${what} is in use by process ${holder}; stop it first or use another --data-dir`,
        );
      }
      await unlink(lockPath).catch(() => undefined);
    }
  }
  throw CloudlessError.unavailable(`could not lock ${what}; try again`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

import { X509Certificate } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";

/** A process as /proc shows it: its pid, parent pid and argv. */
export interface ProcInfo {
  pid: number;
  ppid: number;
  argv: string[];
}

/** Reads one process from /proc; undefined once it is gone (or is a zombie with no argv). */
export async function readProc(pid: number): Promise<ProcInfo | undefined> {
  try {
    const [cmdline, stat] = await Promise.all([
      readFile(`/proc/${pid}/cmdline`, "utf8"),
      readFile(`/proc/${pid}/stat`, "utf8"),
    ]);
    const argv = cmdline.split("\0").filter((part) => part.length > 0);
    if (argv.length === 0) return undefined;
    // stat is "pid (comm) state ppid …"; comm may contain spaces, so split after ")".
    const afterComm = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { pid, ppid: Number(afterComm[1]), argv };
  } catch {
    return undefined;
  }
}

/** All live processes whose argv satisfies the predicate. */
export async function findProcesses(match: (argv: string[]) => boolean): Promise<ProcInfo[]> {
  const entries = await readdir("/proc");
  const found: ProcInfo[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const info = await readProc(Number(entry));
    if (info && match(info.argv)) found.push(info);
  }
  return found;
}

/** `cloudless agent` processes using this data dir (the ones `cloudless up` starts). */
export function findAgentProcesses(agentDataDir: string): Promise<ProcInfo[]> {
  return findProcesses((argv) => {
    const dirIndex = argv.indexOf("--data-dir");
    return argv.includes("agent") && dirIndex >= 0 && argv[dirIndex + 1] === agentDataDir;
  });
}

/** Processes (other than this one) with the directory, or a path under it, in their argv. */
export function processesUsing(dir: string): Promise<ProcInfo[]> {
  const inside = (arg: string) => arg === dir || arg.includes(`${dir}/`);
  return findProcesses((argv) => argv.some(inside)).then((found) =>
    found.filter((info) => info.pid !== process.pid),
  );
}

/** Kills (SIGKILL) stray processes a test may have left behind, e.g. after a failure. */
export async function killProcesses(processes: ProcInfo[]): Promise<void> {
  for (const { pid } of processes) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** Rejects if the promise does not settle before the deadline. */
export async function withDeadline<T>(
  promise: Promise<T>,
  timeoutMs: number,
  description: string,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${description}`)),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** The lines of a process's output, without the empty one after the last newline. */
export function lines(text: string): string[] {
  return text.split("\n").filter((line) => line.length > 0);
}

/** Asserts-friendly summary of a certificate file's validity window. */
export async function certificateValidity(
  certPath: string,
): Promise<{ pem: string; serial: string; notBeforeMs: number; notAfterMs: number }> {
  const pem = await readFile(certPath, "utf8");
  const certificate = new X509Certificate(pem);
  return {
    pem,
    serial: certificate.serialNumber,
    notBeforeMs: Date.parse(certificate.validFrom),
    notAfterMs: Date.parse(certificate.validTo),
  };
}

/**
 * Replica processes of the process driver that belong to this data dir: the ones with
 * CLOUDLESS_REPLICA in their environment (as the agent sets it) and HOME under the dir
 * (their private working directory). Other tests' replicas on the same machine do not count.
 * A sandboxed replica (REQ-062) is its workload plus a wrapper shell and two bwrap
 * processes (the sandbox and its init) with the same environment: they count only with
 * `sandboxes` (leftover checks).
 */
export async function replicaProcessesUnder(
  dir: string,
  options: { sandboxes?: boolean } = {},
): Promise<ProcInfo[]> {
  const found: ProcInfo[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const environ = await readFile(`/proc/${entry}/environ`, "utf8").catch(() => "");
    const vars = environ.split("\0");
    if (!vars.some((v) => v.startsWith("CLOUDLESS_REPLICA="))) continue;
    if (!vars.some((v) => v.startsWith("HOME=") && v.includes(`${dir}/`))) continue;
    if (!options.sandboxes) {
      const comm = await readFile(`/proc/${entry}/comm`, "utf8").catch(() => "");
      if (comm.trim() === "bwrap") continue;
    }
    const info = await readProc(Number(entry));
    // The wrapper shell that runs a sandbox (argv: /bin/sh -c <script> cloudless … bwrap …).
    const wrapper = info?.argv[3] === "cloudless" && info.argv.some((a) => a.endsWith("/bwrap"));
    if (info && (options.sandboxes || !wrapper)) found.push(info);
  }
  return found;
}

/** `podman system service` processes serving a socket under this directory. */
export function engineServicesUnder(dir: string): Promise<ProcInfo[]> {
  return findProcesses(
    (argv) =>
      argv.some((arg) => arg.endsWith("podman")) &&
      argv.includes("system") &&
      argv.includes("service") &&
      argv.some((arg) => arg.includes(`${dir}/`)),
  );
}

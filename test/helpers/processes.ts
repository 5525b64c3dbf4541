import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import {
  appendCapture,
  archiveLogFiles,
  captureFile,
  recordSecretValuesIn,
  recordTokensIn,
} from "./logCapture.js";

export const repoRoot = fileURLToPath(new URL("../..", import.meta.url));
export const binPath = path.join(repoRoot, "bin", "cloudless");

/** Waits for a condition, polling, until a deadline; never a fixed sleep. */
export async function waitFor<T>(
  description: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 20_000,
  intervalMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${description}${lastError ? ` (last error: ${String(lastError)})` : ""}`,
  );
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cloudless ARGS…` to completion. */
export function runCli(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<RunResult> {
  recordSecretValuesIn(args);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [binPath, ...args], {
      env: { ...process.env, CLOUDLESS_CONFIG: undefined, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    const capture = captureFile(`cli-${args.slice(0, 2).join("-")}`);
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
      appendCapture(capture, chunk.toString());
    });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`cloudless ${args.join(" ")} did not finish in time; stderr: ${stderr}`));
    }, options.timeoutMs ?? 30_000);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      recordTokensIn(stdout);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
  });
}

export interface ManagedProcessOptions {
  /**
   * The program (and its leading arguments) that runs ARGS, instead of `node bin/cloudless`:
   * e.g. `["nsenter", "--net=/run/netns/NS", "--", "etcd"]` runs etcd in a test host's
   * network namespace (test/helpers/netlab.ts).
   */
  launcher?: string[];
  /** Names the captured log file; the first argument by default. */
  label?: string;
  /**
   * Starts the process as the leader of its own process group, as a shell starts a
   * foreground command: signalGroup() then reaches everything left in that group, like
   * a terminal's Ctrl-C.
   */
  detached?: boolean;
}

/** A long-running `cloudless` process (or another program) whose output is captured for assertions. */
export class ManagedProcess {
  readonly child: ChildProcess;
  stdout = "";
  stderr = "";
  private exitPromise: Promise<number | null>;

  constructor(args: string[], env: NodeJS.ProcessEnv = {}, options: ManagedProcessOptions = {}) {
    const [command, ...leading] = options.launcher ?? [process.execPath, binPath];
    this.child = spawn(command ?? process.execPath, [...leading, ...args], {
      env: { ...process.env, CLOUDLESS_CONFIG: undefined, ...env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: options.detached ?? false,
    });
    const capture = captureFile(options.label ?? args.slice(0, 1).join("-"));
    this.child.stdout?.on("data", (chunk: Buffer) => {
      this.stdout += chunk.toString();
    });
    this.child.stderr?.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString();
      appendCapture(capture, chunk.toString());
    });
    if (env.CLOUDLESS_TOKEN) recordTokensIn(env.CLOUDLESS_TOKEN);
    this.exitPromise = new Promise((resolve) => {
      this.child.once("exit", (code) => resolve(code));
      // A program that cannot be started (e.g. not installed) reports here, not by exiting.
      this.child.once("error", (err) => {
        this.stderr += `spawn failed: ${err.message}\n`;
        resolve(null);
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves with the exit code once the process has exited. */
  exited(): Promise<number | null> {
    return this.exitPromise;
  }

  kill(signal: NodeJS.Signals = "SIGTERM"): void {
    if (this.running) this.child.kill(signal);
  }

  /** Signals the process group the process leads (started with `detached`), as Ctrl-C does. */
  signalGroup(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch {
      // ESRCH: nothing left in the group.
    }
  }

  /** Stops the process, escalating to SIGKILL after a grace period. */
  async stop(graceMs = 5_000): Promise<number | null> {
    if (!this.running) return this.child.exitCode;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
    const code = await this.exitPromise;
    clearTimeout(timer);
    return code;
  }
}

/** Temp directories and processes created by a test, removed afterwards even on failure. */
export class TestResources {
  private readonly dirs: string[] = [];
  private readonly processes: ManagedProcess[] = [];
  /**
   * Set once cleanup has begun. A test that timed out keeps running after its hooks (vitest
   * cannot cancel it), so what it starts afterwards is stopped at once instead of living on.
   */
  private cleanedUp = false;

  /**
   * A fresh directory, removed at cleanup; under the system's temp dir unless `base` says
   * otherwise (a sandboxed replica has a private /tmp, so what it must see lives elsewhere).
   */
  async tempDir(prefix = "cloudless-test-", base = tmpdir()): Promise<string> {
    const dir = await mkdtemp(path.join(base, prefix));
    if (this.cleanedUp) {
      await rm(dir, { recursive: true, force: true });
      throw new Error("test resources were already cleaned up (the test timed out?)");
    }
    this.dirs.push(dir);
    return dir;
  }

  track(process: ManagedProcess): ManagedProcess {
    if (this.cleanedUp) {
      void process.stop(3_000);
      return process;
    }
    this.processes.push(process);
    return process;
  }

  async cleanup(): Promise<void> {
    this.cleanedUp = true;
    await Promise.all(this.processes.map((p) => p.stop(3_000)));
    // Log files written under temp dirs join the run's log audit before they go.
    await Promise.all(this.dirs.map((dir) => archiveLogFiles(dir)));
    // An agent's secrets tmpfs outlives it while its replicas run (ADR 0055): detached
    // first, or removing the dir would fail on the busy mount point.
    await unmountUnder(this.dirs);
    await Promise.all(this.dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  }
}

/** Lazily unmounts every mount below these dirs (deepest first). */
export async function unmountUnder(dirs: readonly string[]): Promise<void> {
  const text = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  const mountPoints = text
    .split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .filter((mountPoint) => dirs.some((dir) => mountPoint.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const mountPoint of mountPoints) {
    await new Promise<void>((resolve) => {
      const child = spawn("umount", ["-l", mountPoint], { stdio: "ignore" });
      child.on("exit", () => resolve());
      child.on("error", () => resolve());
    });
  }
}

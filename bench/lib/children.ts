/**
 * Child processes and temp dirs of a benchmark, cleaned up even on failure: every
 * process started through a Resources is stopped (SIGTERM, then SIGKILL) by cleanup(),
 * and on exit of the benchmark process itself whatever is left is SIGKILLed.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { createInterface } from "node:readline";
import { descendants } from "./procStats.js";

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const child of live) {
      if (child.pid === undefined) continue;
      for (const pid of safeDescendants(child.pid)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {}
      }
      child.kill("SIGKILL");
    }
  });
}

function safeDescendants(pid: number): number[] {
  try {
    return descendants(pid);
  } catch {
    return [];
  }
}

export class Child {
  readonly child: ChildProcess;
  /** The last 64 KiB of standard error, for error messages. */
  stderrTail = "";
  /** Wall-clock time of exit, once it has exited. */
  exitedAtMs: number | undefined;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly lineHandlers: ((line: string) => void)[] = [];
  private readonly errLineHandlers: ((line: string) => void)[] = [];

  constructor(
    readonly label: string,
    command: string,
    args: string[],
    options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
  ) {
    installExitHook();
    this.child = spawn(command, args, {
      env: { ...process.env, ...options.env },
      cwd: options.cwd,
      stdio: ["pipe", "pipe", "pipe"],
    });
    live.add(this.child);
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => {
        this.exitedAtMs = Date.now();
        live.delete(this.child);
        resolve({ code, signal });
      });
      this.child.once("error", () => {
        live.delete(this.child);
        resolve({ code: -1, signal: null });
      });
    });
    createInterface({ input: this.child.stdout! }).on("line", (line) => {
      for (const handler of this.lineHandlers) handler(line);
    });
    createInterface({ input: this.child.stderr! }).on("line", (line) => {
      this.stderrTail = (this.stderrTail + line + "\n").slice(-65_536);
      for (const handler of this.errLineHandlers) handler(line);
    });
    // A child that exits early must not crash us with EPIPE on its stdin.
    this.child.stdin?.on("error", () => undefined);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  onLine(handler: (line: string) => void): void {
    this.lineHandlers.push(handler);
  }

  onErrLine(handler: (line: string) => void): void {
    this.errLineHandlers.push(handler);
  }

  send(line: string): void {
    if (this.running) this.child.stdin?.write(`${line}\n`);
  }

  /** Waits until a line of stdout or stderr matches, the process exits, or the time is up. */
  waitForLine(pattern: RegExp, timeoutMs: number, stream: "stdout" | "stderr" = "stderr") {
    return new Promise<RegExpExecArray>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new Error(
              `${this.label}: no line matching ${pattern} within ${timeoutMs} ms; stderr: ${this.stderrTail.slice(-2000)}`,
            ),
          ),
        timeoutMs,
      );
      const handler = (line: string) => {
        const match = pattern.exec(line);
        if (match) {
          clearTimeout(timer);
          resolve(match);
        }
      };
      if (stream === "stdout") this.onLine(handler);
      else this.onErrLine(handler);
      void this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(
          new Error(
            `${this.label} exited (code ${code}, signal ${signal}); stderr: ${this.stderrTail.slice(-2000)}`,
          ),
        );
      });
    });
  }

  /** SIGTERM (or the given signal), then SIGKILL for it and its descendants after graceMs. */
  async stop(graceMs = 10_000, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (!this.running) return;
    const family = safeDescendants(this.pid);
    this.child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.exited.then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), graceMs);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) this.child.kill("SIGKILL");
    await this.exited;
    // Whatever it started and left behind (e.g. a container engine service).
    for (const pid of family) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
    }
  }
}

/** What one benchmark started; cleanup() stops and removes all of it. */
export class Resources {
  private readonly children: Child[] = [];
  private readonly dirs: string[] = [];

  spawn(
    label: string,
    command: string,
    args: string[],
    options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
  ): Child {
    const child = new Child(label, command, args, options);
    this.children.push(child);
    return child;
  }

  async tempDir(prefix: string): Promise<string> {
    const dir = await mkdtemp(path.join(tmpdir(), prefix));
    this.dirs.push(dir);
    return dir;
  }

  async cleanup(graceMs = 10_000): Promise<void> {
    await Promise.all(this.children.map((child) => child.stop(graceMs).catch(() => undefined)));
    await Promise.all(
      this.dirs.map((dir) => rm(dir, { recursive: true, force: true }).catch(() => undefined)),
    );
  }
}

/** Runs work with a time limit; the limit rejects with a clear message. */
export async function withTimeLimit<T>(
  what: string,
  limitMs: number,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work(controller.signal),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          controller.abort();
          reject(new Error(`${what}: time limit of ${Math.round(limitMs / 1000)} s reached`));
        }, limitMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}

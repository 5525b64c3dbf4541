/**
 * Two private network namespaces for the VIP and DNS tests (never the root namespace's
 * nftables or routes): `host` plays the node (ServiceVips, DnsServer and the local
 * listeners run there), `guest` plays a container whose packets arrive on the node
 * through a veth and a route to the service range via the node.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { DriverAnswer, DriverCommand } from "./nsDriver.js";

const repoRoot = fileURLToPath(new URL("../../../../..", import.meta.url));
const driverPath = fileURLToPath(new URL("./nsDriver.ts", import.meta.url));
const commandTimeoutMs = 20_000;

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion with a deadline; never throws for a non-zero exit. */
export function run(
  command: string,
  args: string[],
  timeoutMs = commandTimeoutMs,
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${command} ${args.join(" ")} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      resolve({ code: 127, stdout, stderr: err.message });
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, stdout, stderr });
    });
  });
}

async function must(command: string, args: string[]): Promise<string> {
  const result = await run(command, args);
  if (result.code !== 0) {
    throw new Error(
      `${command} ${args.join(" ")} failed (${result.code}): ${result.stderr.trim()}`,
    );
  }
  return result.stdout;
}

/** Why the namespace tests cannot run here, or undefined. */
export async function netnsUnavailableReason(): Promise<string | undefined> {
  if (process.platform !== "linux") return "needs Linux network namespaces";
  if (process.getuid?.() !== 0) return "needs root (network namespaces, nftables)";
  for (const tool of ["ip", "nft", "nsenter", "dig", "conntrack"]) {
    const result = await run("sh", ["-c", `command -v ${tool}`]);
    if (result.code !== 0) return `${tool} is not installed`;
  }
  return undefined;
}

/** A test process inside a namespace, answering one command at a time. */
export class NsDriver {
  private buffer = "";
  private readonly waiting: ((line: string) => void)[] = [];
  private readonly ready: Promise<string>;

  private constructor(private readonly child: ChildProcess) {
    child.stdout?.on("data", (chunk: Buffer) => {
      this.buffer += chunk.toString();
      for (;;) {
        const newline = this.buffer.indexOf("\n");
        if (newline < 0) break;
        const line = this.buffer.slice(0, newline);
        this.buffer = this.buffer.slice(newline + 1);
        this.waiting.shift()?.(line);
      }
    });
    child.stderr?.on("data", (chunk: Buffer) => process.stderr.write(chunk));
    this.ready = new Promise((resolve) => this.waiting.push(resolve));
  }

  static async start(namespace: string): Promise<NsDriver> {
    const child = spawn(
      "nsenter",
      [`--net=/run/netns/${namespace}`, process.execPath, "--import", "tsx", driverPath],
      { cwd: repoRoot, stdio: ["pipe", "pipe", "pipe"] },
    );
    const driver = new NsDriver(child);
    await driver.withDeadline(driver.ready, "the namespace driver to start");
    return driver;
  }

  private async withDeadline<T>(promise: Promise<T>, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        promise,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`timed out waiting for ${what}`)),
            commandTimeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  async send(command: DriverCommand): Promise<DriverAnswer> {
    const line = new Promise<string>((resolve) => this.waiting.push(resolve));
    this.child.stdin?.write(`${JSON.stringify(command)}\n`);
    return JSON.parse(
      await this.withDeadline(line, `"${command.op}" in the namespace`),
    ) as DriverAnswer;
  }

  /** Sends a command that must succeed. */
  async must(command: DriverCommand): Promise<DriverAnswer & { ok: true }> {
    const answer = await this.send(command);
    if (!answer.ok) throw new Error(`${command.op} failed in the namespace: ${answer.error}`);
    return answer;
  }

  /** kill -9, as an agent crash: nothing of the process runs its cleanup. */
  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.kill("SIGKILL");
    await exited;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.stdin?.end();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5_000);
    await exited;
    clearTimeout(timer);
  }
}

export interface VipLab {
  readonly host: string;
  readonly guest: string;
  /** The host's address on the veth, the guest's route to the service range goes via it. */
  readonly hostAddress: string;
  exec(namespace: string, command: string, args: string[]): Promise<RunResult>;
  mustExec(namespace: string, command: string, args: string[]): Promise<string>;
  /** Deletes both namespaces (and with them the veth, tables, routes and sysctls). */
  destroy(): Promise<void>;
}

/** host <-veth-> guest; the guest routes `serviceCidr` via the host. */
export async function createVipLab(tag: string, serviceCidr: string): Promise<VipLab> {
  const host = `cltest-vd-${process.pid}-${tag}h`;
  const guest = `cltest-vd-${process.pid}-${tag}g`;
  const vethHost = `vd${process.pid}${tag}h`.slice(0, 15);
  const vethGuest = `vd${process.pid}${tag}g`.slice(0, 15);
  const lab: VipLab = {
    host,
    guest,
    hostAddress: "192.168.251.1",
    exec: (namespace, command, args) =>
      run("nsenter", [`--net=/run/netns/${namespace}`, command, ...args]),
    mustExec: (namespace, command, args) =>
      must("nsenter", [`--net=/run/netns/${namespace}`, command, ...args]),
    async destroy() {
      for (const namespace of [host, guest]) await run("ip", ["netns", "delete", namespace]);
    },
  };
  try {
    await must("ip", ["netns", "add", host]);
    await must("ip", ["netns", "add", guest]);
    await must("ip", [
      ...["link", "add", vethHost, "netns", host, "type", "veth"],
      ...["peer", "name", vethGuest, "netns", guest],
    ]);
    await lab.mustExec(host, "ip", ["link", "set", "lo", "up"]);
    await lab.mustExec(guest, "ip", ["link", "set", "lo", "up"]);
    await lab.mustExec(host, "ip", ["addr", "add", "192.168.251.1/30", "dev", vethHost]);
    await lab.mustExec(guest, "ip", ["addr", "add", "192.168.251.2/30", "dev", vethGuest]);
    await lab.mustExec(host, "ip", ["link", "set", vethHost, "up"]);
    await lab.mustExec(guest, "ip", ["link", "set", vethGuest, "up"]);
    await lab.mustExec(guest, "ip", ["route", "add", serviceCidr, "via", "192.168.251.1"]);
  } catch (err) {
    await lab.destroy();
    throw err;
  }
  return lab;
}

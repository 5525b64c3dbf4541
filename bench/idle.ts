/**
 * Idle footprint of `cloudless up --no-sample`: resident memory of the coordinator
 * (the `up` process itself) plus its local agent, once the node is Ready and nothing
 * runs. A container engine service that `up` may start is reported apart: it is not
 * Cloudless's memory.
 */
import * as path from "node:path";
import { type Resources, sleep } from "./lib/children.js";
import { commandLine, descendants, readProc, round1 } from "./lib/procStats.js";

export interface IdleResult {
  idleUpRssMiB: number;
  coordinatorRssMiB: number;
  agentRssMiB: number;
  engineRssMiB?: number;
  readyAfterMs: number;
  settleMs: number;
}

export async function runIdleUp(options: {
  repoRoot: string;
  resources: Resources;
  settleMs: number;
  limitMs: number;
  log: (line: string) => void;
}): Promise<IdleResult> {
  const dataDir = await options.resources.tempDir("cloudless-bench-up-");
  const started = Date.now();
  const up = options.resources.spawn("cloudless up", process.execPath, [
    path.join(options.repoRoot, "bin", "cloudless"),
    "up",
    "--data-dir",
    dataDir,
    "--port",
    "0",
    "--host",
    "127.0.0.1",
    "--no-sample",
    "--log-level",
    "warn",
  ]);
  try {
    await up.waitForLine(/Cluster "[^"]+" is up at/, options.limitMs, "stdout");
    const readyAfterMs = Date.now() - started;
    await sleep(options.settleMs);
    const readings: { coordinator: number; agent: number; engine: number }[] = [];
    for (let i = 0; i < 5; i++) {
      const coordinator = readProc(up.pid)?.rssMiB ?? 0;
      let agent = 0;
      let engine = 0;
      for (const pid of descendants(up.pid)) {
        const rss = readProc(pid)?.rssMiB ?? 0;
        const command = commandLine(pid);
        if (/\bagent\b/.test(command) && command.includes("cloudless")) agent += rss;
        else engine += rss;
      }
      readings.push({ coordinator, agent, engine });
      await sleep(1000);
    }
    const median = (values: number[]) =>
      [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
    const coordinatorRssMiB = round1(median(readings.map((r) => r.coordinator)));
    const agentRssMiB = round1(median(readings.map((r) => r.agent)));
    const engineRssMiB = round1(median(readings.map((r) => r.engine)));
    if (agentRssMiB === 0) throw new Error("found no agent process under `cloudless up`");
    options.log(
      `idle up: coordinator ${coordinatorRssMiB} MiB + agent ${agentRssMiB} MiB (engine ${engineRssMiB} MiB apart)`,
    );
    return {
      idleUpRssMiB: round1(coordinatorRssMiB + agentRssMiB),
      coordinatorRssMiB,
      agentRssMiB,
      ...(engineRssMiB > 0 ? { engineRssMiB } : {}),
      readyAfterMs,
      settleMs: options.settleMs,
    };
  } finally {
    // SIGINT is how a person stops `up`; it stops its agent and engine service itself.
    await up.stop(20_000, "SIGINT");
  }
}

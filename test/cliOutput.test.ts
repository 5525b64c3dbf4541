import { spawn } from "node:child_process";
import { readFile, stat } from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "./helpers/cluster.js";
import { binPath, TestResources } from "./helpers/processes.js";
import { hasStackTrace } from "./helpers/tlsProbe.js";
import { adminClients } from "./helpers/workloads.js";

/** Big workloads: 10 env values of 6,000 bytes each, under the 64 KiB env limit (envBytes). */
const bigWorkloads = 60;
/** Small ones, each recorded as a WorkloadCreated event, so `events -o json` is big too. */
const smallWorkloads = 600;
/** Applies in flight at once while the test fills the cluster. */
const applyConcurrency = 20;

interface ShellResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a bash pipeline with `set -o pipefail` (so the exit code is cloudless's when it
 * fails, not only the last command's); `cloudless` in it runs the built CLI.
 */
function shell(script: string, configPath: string, timeoutMs = 60_000): Promise<ShellResult> {
  return new Promise((resolve, reject) => {
    const cli = 'cloudless() { "$CLOUDLESS_NODE" "$CLOUDLESS_BIN" "$@"; }';
    const child = spawn("bash", ["-o", "pipefail", "-c", `${cli}\n${script}`], {
      env: {
        ...process.env,
        CLOUDLESS_CONFIG: configPath,
        CLOUDLESS_NODE: process.execPath,
        CLOUDLESS_BIN: binPath,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
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
      reject(new Error(`\`${script}\` did not finish within ${timeoutMs} ms; stderr: ${stderr}`));
    }, timeoutMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function workloadDoc(name: string, env: Record<string, string>) {
  return {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name },
    spec: {
      image: "localhost/cloudless/none:1",
      resources: { cpuMillicores: 10, memoryMiB: 8 },
      replicas: 0,
      env,
    },
  };
}

describe("REQ-072 CLI output into pipes", () => {
  const resources = new TestResources();
  let cluster: TestCluster;
  let dir: string;

  beforeAll(async () => {
    cluster = await TestCluster.start(resources);
    dir = await resources.tempDir("cloudless-output-");
    const clients = await adminClients(cluster.configPath);
    const docs: unknown[] = [];
    for (let i = 0; i < bigWorkloads; i++) {
      const env: Record<string, string> = {};
      for (let k = 0; k < 10; k++) env[`VALUE_${k}`] = `${i}-${k}-`.padEnd(6_000, "x");
      docs.push(workloadDoc(`big-${i}`, env));
    }
    for (let i = 0; i < smallWorkloads; i++) docs.push(workloadDoc(`small-${i}`, { N: `${i}` }));
    let next = 0;
    const worker = async () => {
      for (let doc = docs[next++]; doc !== undefined; doc = docs[next++]) {
        await clients.workloads.applyWorkload({ specText: JSON.stringify(doc) });
      }
    };
    await Promise.all(Array.from({ length: applyConcurrency }, worker));
  }, 180_000);
  afterAll(async () => {
    await resources.cleanup();
  });

  it.each([
    ["workload list -o json", "several MB", 3_000_000],
    ["events --limit 5000 -o json", "more than twice the pipe buffer", 150_000],
  ])(
    "REQ-072 hardening: `%s` (%s) writes every byte into a pipe, as into a file, and exits 0",
    async (command, _size, atLeastBytes) => {
      const file = path.join(dir, `${command.replace(/\W+/g, "-")}.out`);
      const toFile = await shell(
        `cloudless ${command} > ${JSON.stringify(file)}`,
        cluster.configPath,
      );
      expect(toFile.code, toFile.stderr).toBe(0);
      const fileBytes = (await stat(file)).size;
      expect(fileBytes).toBeGreaterThan(atLeastBytes);

      // wc reads as fast as it can; the subshell reads only after a second, when the
      // CLI has long written what fits in the pipe buffer and would have exited.
      const counted = await shell(`cloudless ${command} | wc -c`, cluster.configPath);
      const late = await shell(`cloudless ${command} | (sleep 1; wc -c)`, cluster.configPath);
      for (const result of [counted, late]) {
        expect(result.code, result.stderr).toBe(0);
        expect(result.stderr).toBe("");
        expect(Number(result.stdout.trim())).toBe(fileBytes);
      }
      const text = await readFile(file, "utf8");
      if (command.endsWith("json")) {
        const parsed = JSON.parse(text) as { name?: string; type?: string }[];
        if (command.startsWith("workload")) {
          expect(parsed).toHaveLength(bigWorkloads + smallWorkloads);
        } else {
          expect(parsed.filter((event) => event.type === "WorkloadCreated")).toHaveLength(
            bigWorkloads + smallWorkloads,
          );
        }
      }
    },
  );

  it("REQ-072 hardening: a reader that closes the pipe early ends the command quietly, without a stack trace or a hang", async () => {
    for (const command of ["workload list -o json", "events --limit 5000 -o json"]) {
      const file = path.join(dir, `${command.replace(/\W+/g, "-")}.full`);
      expect(
        (await shell(`cloudless ${command} > ${JSON.stringify(file)}`, cluster.configPath)).code,
      ).toBe(0);
      const head = await shell(`cloudless ${command} | head -c 100`, cluster.configPath, 30_000);
      // 141 = 128 + SIGPIPE: what `cat` gives for a closed pipe under pipefail.
      expect(head.code, head.stderr).toBe(141);
      expect(head.stderr).toBe("");
      expect(hasStackTrace(head.stderr)).toBe(false);
      expect(head.stdout).toBe((await readFile(file, "utf8")).slice(0, 100));
    }
    // Output that cannot be written at all (a full disk) is one line and exit code 1.
    const full = await shell("cloudless workload list -o json > /dev/full", cluster.configPath);
    expect(full.code).toBe(1);
    expect(full.stderr).toMatch(/^error: writing the output failed: ENOSPC[^\n]*\n$/);
  });
});

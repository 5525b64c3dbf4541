import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { pathsSyncedBy, straceWorks } from "../../test/helpers/strace.js";
import { ManualClock } from "../lib/clock.js";
import { silentLogger } from "../observe/logger.js";
import { AgentStateWriter, loadAgentState, stateFileName, writeAgentState } from "./stateFile.js";
import type { DesiredReplica, SupervisorSnapshot } from "./supervisor/supervisorTypes.js";

function desired(id: string): DesiredReplica {
  return {
    spec: {
      replicaId: id,
      namespace: "default",
      workload: "web",
      driver: "process",
      command: ["/bin/web"],
      env: { A: "1" },
      ports: [{ name: "http", containerPort: 8080, hostPort: 0, protocol: "tcp" }],
      resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 0 },
    },
    restartPolicy: "Always",
    readiness: {
      action: { http: { path: "/", port: 8080 } },
      periodSeconds: 1,
      timeoutSeconds: 1,
      failureThreshold: 3,
      successThreshold: 1,
      initialDelaySeconds: 0,
    },
    terminationGracePeriodSeconds: 1,
    generation: 3,
  };
}

const snapshot: SupervisorSnapshot = {
  version: 1,
  desired: [desired("web-0")],
  replicas: { "web-0": { hostPorts: { http: 40_000 }, runningGeneration: 3, restarts: 2 } },
};

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "cloudless-state-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("NFR-A1 agent state file", () => {
  it("round-trips the supervisor snapshot, mode 0600, with no temporary file left", async () => {
    await writeAgentState(dir, "n1", snapshot, 1_700_000_000_000);
    expect(await loadAgentState(dir, "n1")).toEqual({ kind: "loaded", snapshot });
    expect((await stat(path.join(dir, stateFileName))).mode & 0o777).toBe(0o600);
    expect(await readdir(dir)).toEqual([stateFileName]);
  });

  it.skipIf(!straceWorks)(
    "NFR-A1 contract: a write is durable: the file and then its directory are fsynced (the rename survives a power loss)",
    async () => {
      const module = new URL("./stateFile.ts", import.meta.url).href;
      const synced = await pathsSyncedBy(`
        import { writeAgentState } from ${JSON.stringify(module)};
        await writeAgentState(${JSON.stringify(dir)}, "n1", ${JSON.stringify(snapshot)}, 0);
      `);
      const mine = synced.filter((file) => file.startsWith(dir));
      expect(mine.at(-1)).toBe(dir);
      expect(mine.slice(0, -1).every((file) => file.endsWith(".tmp"))).toBe(true);
      expect(mine.length).toBeGreaterThanOrEqual(2);
    },
    30_000,
  );

  it("a missing file is absent, not an error", async () => {
    expect(await loadAgentState(dir, "n1")).toEqual({ kind: "absent" });
  });

  it.each([
    ["not JSON", "{ truncated", /is not JSON/],
    ["empty", "", /is not JSON/],
    ["another node", JSON.stringify({ version: 1, nodeName: "n2", supervisor: {} }), /node "n2"/],
    ["a newer version", JSON.stringify({ version: 9 }), /unsupported version 9/],
    [
      "a desired replica without a driver",
      JSON.stringify({
        version: 1,
        nodeName: "n1",
        supervisor: {
          version: 1,
          desired: [{ ...desired("x"), spec: { ...desired("x").spec, driver: "vm" } }],
          replicas: {},
        },
      }),
      /desired\[0\]: unknown driver/,
    ],
    [
      "host ports that are not ports",
      JSON.stringify({
        version: 1,
        nodeName: "n1",
        supervisor: { version: 1, desired: null, replicas: { x: { hostPorts: { http: -1 } } } },
      }),
      /hostPorts: not port numbers/,
    ],
  ])("refuses a file that is %s, with the reason", async (_what, content, reason) => {
    await writeFile(path.join(dir, stateFileName), content);
    const loaded = await loadAgentState(dir, "n1");
    expect(loaded.kind).toBe("unusable");
    if (loaded.kind === "unusable") {
      expect(loaded.reason).toMatch(reason);
      expect(loaded.reason).not.toContain("\n");
    }
  });

  it("writes a desired-set change at once and runtime changes at most once per interval", async () => {
    const clock = new ManualClock();
    let current: SupervisorSnapshot = { version: 1, desired: [], replicas: {} };
    const writer = new AgentStateWriter({
      dataDir: dir,
      nodeName: "n1",
      clock,
      logger: silentLogger,
      snapshot: () => current,
      minIntervalMs: 2_000,
    });
    const saved = async () => {
      const loaded = await loadAgentState(dir, "n1");
      return loaded.kind === "loaded" ? loaded.snapshot : undefined;
    };
    const settle = () => writer.idle();

    writer.runtimeChanged();
    await settle();
    expect(await saved()).toEqual(current);

    current = { ...current, replicas: { a: { hostPorts: {}, restarts: 1 } } };
    writer.runtimeChanged();
    await settle();
    expect((await saved())?.replicas).toEqual({}); // rate-limited
    clock.advance(2_000);
    await settle();
    expect((await saved())?.replicas).toEqual(current.replicas);

    current = { ...current, desired: [desired("web-0")] };
    writer.durableChanged();
    await settle();
    expect((await saved())?.desired).toHaveLength(1); // not rate-limited

    current = { ...current, desired: [] };
    await writer.close();
    expect((await saved())?.desired).toEqual([]);
    writer.durableChanged(); // after close: no more writes
    current = { ...current, desired: [desired("late")] };
    await settle();
    expect((await saved())?.desired).toEqual([]);
  });

  it("a write that fails leaves the previous file and warns once", async () => {
    await writeAgentState(dir, "n1", snapshot, 0);
    const warnings: string[] = [];
    const logger = {
      ...silentLogger,
      warn: (_fields: unknown, message: string) => warnings.push(message),
    } as unknown as typeof silentLogger;
    const writer = new AgentStateWriter({
      dataDir: path.join(dir, "missing-subdir"),
      nodeName: "n1",
      clock: new ManualClock(),
      logger,
      snapshot: () => snapshot,
    });
    writer.durableChanged();
    await writer.close();
    expect(warnings).toHaveLength(1);
    expect(JSON.parse(await readFile(path.join(dir, stateFileName), "utf8")).supervisor).toEqual(
      snapshot,
    );
  });
});

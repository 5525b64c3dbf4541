import { spawn } from "node:child_process";
import { readdir, readFile, writeFile } from "node:fs/promises";
import net from "node:net";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { TestResources } from "../../../test/helpers/processes.js";
import {
  createFileReservationAllocator,
  type HostPortAllocator,
  type ProcessIdentity,
  withKernelChosenPort,
} from "./hostPortReservations.js";

let resources: TestResources;
let dir: string;
const servers: net.Server[] = [];

beforeEach(async () => {
  resources = new TestResources();
  dir = await resources.tempDir("cloudless-ports-");
});

afterEach(async () => {
  await Promise.all(
    servers
      .splice(0)
      .map((server) => new Promise<void>((resolve) => server.close(() => resolve()))),
  );
  await resources.cleanup();
});

/** Agents played in this process: each has its own identity; `dead` ones are gone. */
function agents() {
  const dead = new Set<number>();
  const make = (node: string, pid: number): HostPortAllocator =>
    createFileReservationAllocator({
      dir,
      nodeName: node,
      self: { pid, startTicks: "100" },
      isAlive: (holder: ProcessIdentity) => holder.startTicks === "100" && !dead.has(holder.pid),
    });
  return { make, kill: (pid: number) => dead.add(pid) };
}

/** A port the kernel says is free now (released again). */
function freePort(): Promise<number> {
  return withKernelChosenPort(async (port) => port);
}

async function reservationOf(port: number): Promise<{ pid: number; owner: string } | undefined> {
  try {
    return JSON.parse(await readFile(path.join(dir, String(port)), "utf8"));
  } catch {
    return undefined;
  }
}

describe("host-wide port reservations (ADR 0032)", () => {
  it("REQ-030 two agents on one host asking for the same declared port get different ports, and the reservation names the owner", async () => {
    const { make } = agents();
    const a = make("node-a", 1001);
    const b = make("node-b", 1002);
    const declared = await freePort();
    const first = await a.allocate(declared, "web-0");
    const second = await b.allocate(declared, "web-1");
    expect(first).toBe(declared);
    expect(second).not.toBe(declared);
    expect(await reservationOf(declared)).toMatchObject({ pid: 1001, owner: "node-a/web-0" });
    expect(await reservationOf(second)).toMatchObject({ pid: 1002, owner: "node-b/web-1" });
    // Another replica of the same agent does not get it either.
    expect(await a.allocate(declared, "web-2")).not.toBe(declared);
    // The owner may use it again for a restart; nobody else may.
    expect(await a.reuse(declared, "web-0")).toBe(true);
    expect(await b.reuse(declared, "web-9")).toBe(false);
    expect(await a.reuse(declared, "web-2")).toBe(false);
  });

  it("REQ-030 a released port is free for the next agent; a release by someone else changes nothing", async () => {
    const { make } = agents();
    const a = make("node-a", 1001);
    const b = make("node-b", 1002);
    const declared = await freePort();
    expect(await a.allocate(declared, "web-0")).toBe(declared);
    await b.release(declared, "web-0");
    await a.release(declared, "web-1");
    expect(await reservationOf(declared)).toMatchObject({ owner: "node-a/web-0" });
    await a.release(declared, "web-0");
    expect(await reservationOf(declared)).toBeUndefined();
    expect(await b.allocate(declared, "web-1")).toBe(declared);
  });

  it("REQ-030 the reservation of an agent that died is taken over; the same node's next agent gets its replicas' ports back", async () => {
    const { make, kill } = agents();
    const a = make("node-a", 1001);
    const declared = await freePort();
    const other = await freePort();
    expect(await a.allocate(declared, "web-0")).toBe(declared);
    expect(await a.allocate(other, "web-1")).toBe(other);
    kill(1001);
    // Another node's agent takes over the stale reservation of one port…
    const b = make("node-b", 1002);
    expect(await b.allocate(declared, "api-0")).toBe(declared);
    expect(await reservationOf(declared)).toMatchObject({ pid: 1002, owner: "node-b/api-0" });
    // …and node-a's restarted agent claims the other back for its replica.
    const a2 = make("node-a", 1003);
    expect(await a2.claim(other, "web-1")).toBe(true);
    expect(await reservationOf(other)).toMatchObject({ pid: 1003, owner: "node-a/web-1" });
    expect(await a2.claim(declared, "web-0")).toBe(false);
  });

  it("REQ-030 a port some other program listens on is not handed out, and leaves no reservation behind", async () => {
    const { make } = agents();
    const a = make("node-a", 1001);
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, "0.0.0.0", resolve));
    servers.push(server);
    const busy = (server.address() as net.AddressInfo).port;
    const got = await a.allocate(busy, "web-0");
    expect(got).not.toBe(busy);
    expect(await reservationOf(busy)).toBeUndefined();
    expect(await a.reuse(busy, "web-0")).toBe(false);
  });

  it("REQ-030 a breaker left by an agent that died while breaking is cleared, and the stale port can be taken", async () => {
    const { make, kill } = agents();
    const declared = await freePort();
    const a = make("node-a", 1001);
    // Prepared (and swept) before the leftovers appear, as an agent that runs already.
    await a.release(1, "nothing");
    await writeFile(
      path.join(dir, String(declared)),
      JSON.stringify({ pid: 2001, startTicks: "100", owner: "node-x/old" }),
    );
    await writeFile(
      path.join(dir, `${declared}.breaker`),
      JSON.stringify({ pid: 2002, startTicks: "100", owner: "breaker" }),
    );
    kill(2001);
    kill(2002);
    // The first attempt finds the dead breaker and clears it; the kernel's port serves meanwhile.
    const first = await a.allocate(declared, "web-0");
    expect(first).not.toBe(declared);
    expect(await a.allocate(declared, "web-1")).toBe(declared);
    expect(await reservationOf(declared)).toMatchObject({ owner: "node-a/web-1" });
    const leftovers = (await readdir(dir)).filter((name) => name.includes("breaker"));
    expect(leftovers).toEqual([]);
  });

  it("REQ-030 an agent's first use clears what agents that are gone left: reservations of free ports go, one whose port a surviving replica still binds stays", async () => {
    const { make, kill } = agents();
    const dead = make("node-x", 2001);
    const freeOne = await freePort();
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, "0.0.0.0", resolve));
    servers.push(server);
    const stillBound = (server.address() as net.AddressInfo).port;
    // The dead agent reserved both; a replica it left running still binds the second.
    expect(await dead.claim(freeOne, "gone")).toBe(true);
    expect(await dead.claim(stillBound, "survivor")).toBe(true);
    await writeFile(path.join(dir, `.tmp-2001-100-abcdef`), "{}");
    kill(2001);
    const next = make("node-y", 1002);
    // Any call prepares the directory; releasing someone else's port changes nothing else.
    await next.release(1, "nothing");
    expect(await reservationOf(freeOne)).toBeUndefined();
    expect(await reservationOf(stillBound)).toMatchObject({ owner: "node-x/survivor" });
    expect((await readdir(dir)).filter((name) => name.startsWith(".tmp"))).toEqual([]);
  });

  it("REQ-030 agents in separate processes racing for one declared port: exactly one gets it, no port is given twice", async () => {
    const declared = await freePort();
    const moduleUrl = new URL("./hostPortReservations.ts", import.meta.url).href;
    const script = path.join(await resources.tempDir("cloudless-race-"), "race.mts");
    // Each agent stays alive until told to go: a reservation of an exited agent is stale
    // and may rightly be taken over.
    await writeFile(
      script,
      [
        `import { createFileReservationAllocator } from ${JSON.stringify(moduleUrl)};`,
        `const allocator = createFileReservationAllocator({ dir: process.argv[2], nodeName: process.argv[3] });`,
        `const ports = await Promise.all([0, 1, 2].map((i) => allocator.allocate(${declared}, "r" + i)));`,
        'process.stdout.write(JSON.stringify(ports) + "\\n");',
        "process.stdin.resume();",
        'process.stdin.on("end", () => process.exit(0));',
      ].join("\n"),
    );
    const children = ["n1", "n2", "n3", "n4"].map((node) =>
      spawn(process.execPath, ["--import", "tsx", script, dir, node], {
        stdio: ["pipe", "pipe", "pipe"],
      }),
    );
    try {
      const results = await Promise.all(
        children.map(
          (child) =>
            new Promise<number[]>((resolve, reject) => {
              let out = "";
              let err = "";
              child.stdout.on("data", (chunk: Buffer) => {
                out += chunk.toString();
                if (out.includes("\n")) resolve(JSON.parse(out));
              });
              child.stderr.on("data", (chunk: Buffer) => {
                err += chunk.toString();
              });
              child.once("exit", (code) => reject(new Error(`agent exited (${code}): ${err}`)));
            }),
        ),
      );
      const all = results.flat();
      expect(all).toHaveLength(12);
      expect(new Set(all).size).toBe(12);
      expect(all.filter((port) => port === declared)).toHaveLength(1);
      // Every reservation file names its agent and replica.
      for (const [index, ports] of results.entries()) {
        for (const [replica, port] of ports.entries()) {
          expect(await reservationOf(port)).toMatchObject({
            pid: children[index]?.pid,
            owner: `n${index + 1}/r${replica}`,
          });
        }
      }
    } finally {
      await Promise.all(
        children.map(
          (child) =>
            new Promise<void>((resolve) => {
              if (child.exitCode !== null || child.signalCode !== null) return resolve();
              child.once("exit", () => resolve());
              child.stdin.end();
              setTimeout(() => child.kill("SIGKILL"), 5_000).unref();
            }),
        ),
      );
    }
  }, 60_000);
});

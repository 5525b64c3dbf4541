import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { ManualClock } from "../../lib/clock.js";
import type { PortMapping } from "../drivers/driver.js";
import { deadlineCall } from "./driverCalls.js";
import {
  allocatorFor,
  HostPortAssigner,
  knownHostPorts,
  maxForeignPorts,
  type PortHolder,
  portNameOf,
  portsOfOthers,
  rememberForeignPort,
} from "./hostPortAssigner.js";
import type { HostPortAllocator } from "./hostPortReservations.js";
import type { DesiredReplica } from "./supervisorTypes.js";

async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
}

const http: PortMapping[] = [{ name: "http", containerPort: 8080, hostPort: 0, protocol: "tcp" }];

/** Log lines as objects, to check what the assigner says. */
function capturingLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: "debug", base: null, timestamp: false },
    { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { logger, lines };
}

/**
 * A host whose allocator answers after a turn of the event loop and remembers nothing:
 * it gives the preferred port whenever it is asked for one, as a bind check does before
 * the replica that got it listens.
 */
function forgetfulHost() {
  const log: string[] = [];
  let next = 40_000;
  const allocator: HostPortAllocator = {
    allocate: async (preferred, owner) => {
      await new Promise((resolve) => setImmediate(resolve));
      const port = preferred > 0 ? preferred : next++;
      log.push(`allocate ${port} ${owner}`);
      return port;
    },
    reuse: async (port, owner) => {
      log.push(`reuse ${port} ${owner}`);
      return port !== 8080;
    },
    claim: async (port, owner) => {
      log.push(`claim ${port} ${owner}`);
      return port !== 41_000;
    },
    release: async (port, owner) => {
      log.push(`release ${port} ${owner}`);
      if (port === 40_999) throw new Error("EACCES");
    },
  };
  return { allocator, log };
}

describe("host port assigner", () => {
  it("REQ-030 assigns one replica at a time: two process replicas starting together do not both get the declared port", async () => {
    const clock = new ManualClock();
    const host = forgetfulHost();
    const { logger } = capturingLogger();
    const assigner = new HostPortAssigner({
      allocator: host.allocator,
      call: deadlineCall(clock, 30_000),
      logger,
    });
    const holders = new Map<string, PortHolder>([
      ["job-0", { id: "job-0", hostPorts: {}, foreignPorts: [] }],
      ["job-1", { id: "job-1", hostPorts: {}, foreignPorts: [] }],
    ]);
    const saved: string[] = [];
    await Promise.all(
      [...holders.values()].map((holder) =>
        assigner.assign(
          holder,
          "process",
          http,
          () => portsOfOthers(holder.id, holders, {}),
          () => saved.push(`${holder.id} ${JSON.stringify(holder.hostPorts)}`),
        ),
      ),
    );
    expect(holders.get("job-0")?.hostPorts).toEqual({ http: 8080 });
    expect(holders.get("job-1")?.hostPorts).toEqual({ http: 40_000 });
    // Each replica's ports were in place (to be saved) before its assignment resolved.
    expect(saved).toEqual(['job-0 {"http":8080}', 'job-1 {"http":40000}']);
  });

  it("REQ-030 a kept port that is no longer the replica's is replaced and its reservation released; ports probes found foreign are never given", async () => {
    const clock = new ManualClock();
    const host = forgetfulHost();
    const { logger, lines } = capturingLogger();
    const assigner = new HostPortAssigner({
      allocator: host.allocator,
      call: deadlineCall(clock, 30_000),
      logger,
    });
    const holder: PortHolder = { id: "web-0", hostPorts: { http: 8080 }, foreignPorts: [40_000] };
    await assigner.assign(
      holder,
      "container",
      http,
      () => [],
      () => undefined,
    );
    expect(holder.hostPorts).toEqual({ http: 40_001 });
    expect(host.log).toEqual([
      "reuse 8080 web-0",
      "allocate 40000 web-0",
      "allocate 40001 web-0",
      "release 8080 web-0",
    ]);
    expect(lines.map((line) => line.msg)).toEqual([
      "host ports changed: the old ones are taken or no longer declared",
    ]);
  });

  it("an allocator that does not answer fails the assignment at its deadline, and the next one still runs", async () => {
    const clock = new ManualClock();
    const { logger } = capturingLogger();
    let hang = true;
    const allocator: HostPortAllocator = {
      allocate: (preferred) => (hang ? new Promise(() => undefined) : Promise.resolve(preferred)),
      reuse: async () => true,
      claim: async () => true,
      release: async () => undefined,
    };
    const assigner = new HostPortAssigner({ allocator, call: deadlineCall(clock, 5000), logger });
    const first: PortHolder = { id: "a", hostPorts: {}, foreignPorts: [] };
    const failed = assigner
      .assign(
        first,
        "container",
        [{ ...http[0]!, hostPort: 7070 }],
        () => [],
        () => undefined,
      )
      .catch((error: unknown) => error);
    await settle();
    hang = false;
    const second: PortHolder = { id: "b", hostPorts: {}, foreignPorts: [] };
    const next = assigner.assign(
      second,
      "container",
      [{ ...http[0]!, hostPort: 7071 }],
      () => [],
      () => undefined,
    );
    clock.advance(5000);
    expect(String(await failed)).toContain("allocating host ports did not answer within 5000 ms");
    await next;
    expect(second.hostPorts).toEqual({ http: 7071 });
    expect(first.hostPorts).toEqual({});
  });

  it("releases each distinct port once and only logs a failed release; claims restored ports, keeping refused ones", async () => {
    const clock = new ManualClock();
    const host = forgetfulHost();
    const { logger, lines } = capturingLogger();
    const assigner = new HostPortAssigner({
      allocator: host.allocator,
      call: deadlineCall(clock, 30_000),
      logger,
    });
    await assigner.release("web-0", { http: 40_999, alt: 40_999, admin: 40_998 });
    expect(host.log).toEqual(["release 40999 web-0", "release 40998 web-0"]);
    await assigner.claimRestored({
      "web-1": { hostPorts: { http: 41_000 } },
      "web-2": { hostPorts: { http: 41_001, again: 41_001 } },
    });
    expect(host.log.slice(2)).toEqual(["claim 41000 web-1", "claim 41001 web-2"]);
    expect(lines.map((line) => line.msg)).toEqual([
      "cannot release port",
      "host port reserved by another agent",
    ]);
  });
});

describe("host port bookkeeping", () => {
  it("pinned host ports are known before any allocation; others are not", () => {
    const desired = {
      spec: {
        ports: [
          { name: "http", containerPort: 8080, hostPort: 0, protocol: "tcp" },
          { name: "metrics", containerPort: 9090, hostPort: 19090, protocol: "tcp" },
        ],
      },
    } as unknown as DesiredReplica;
    expect(knownHostPorts(desired)).toEqual({ metrics: 19090 });
  });

  it("the ports of others come from supervised and restored replicas, never the asker's own", () => {
    const supervised = new Map<string, { hostPorts: Record<string, number> }>([
      ["a", { hostPorts: { http: 1 } }],
      ["b", { hostPorts: { http: 2, admin: 3 } }],
    ]);
    const restored = { c: { hostPorts: { http: 4 } }, a: { hostPorts: { http: 5 } } };
    expect([...portsOfOthers("a", supervised, restored)].sort()).toEqual([2, 3, 4]);
  });

  it("remembers at most maxForeignPorts foreign ports, forgetting the oldest", () => {
    let foreign: number[] = [];
    for (let port = 1; port <= maxForeignPorts + 2; port++) {
      foreign = rememberForeignPort(foreign, port);
    }
    expect(foreign).toHaveLength(maxForeignPorts);
    expect(foreign[0]).toBe(3);
    expect(portNameOf({ http: 1, admin: 2 }, 2)).toBe("admin");
    expect(portNameOf({ http: 1 }, 9)).toBeUndefined();
  });

  it("the allocator is the host-wide one when given, else a plain function's, else bind-checked", async () => {
    const given: HostPortAllocator = {
      allocate: async () => 1,
      reuse: async () => true,
      claim: async () => true,
      release: async () => undefined,
    };
    expect(allocatorFor({ hostPorts: given })).toBe(given);
    const plain = allocatorFor({ allocatePort: async (preferred) => preferred + 1 });
    expect(await plain.allocate(10, "x")).toBe(11);
    expect(await plain.reuse(1, "x")).toBe(true);
  });
});

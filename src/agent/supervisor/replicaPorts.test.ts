import net from "node:net";
import { describe, expect, it } from "vitest";
import type { PortMapping, ReplicaRunSpec } from "../drivers/driver.js";
import type { HostPortAllocator } from "./hostPortReservations.js";
import {
  allocateFreePort,
  allocatorFrom,
  assignHostPorts,
  buildRunSpec,
  droppedPorts,
  portEnvName,
  resolveProbeAction,
} from "./replicaPorts.js";

const ports: PortMapping[] = [
  { name: "http", containerPort: 8080, hostPort: 0, protocol: "tcp" },
  { name: "admin-ui", containerPort: 9090, hostPort: 0, protocol: "tcp" },
];

function spec(overrides: Partial<ReplicaRunSpec> = {}): ReplicaRunSpec {
  return {
    replicaId: "web-0",
    namespace: "default",
    workload: "web",
    driver: "container",
    image: "web:1",
    env: { GREETING: "hi" },
    ports,
    resources: { cpuMillicores: 100, memoryMiB: 64, storageGiB: 1 },
    ...overrides,
  };
}

describe("host ports", () => {
  it("allocateFreePort returns a port that can be bound again", async () => {
    const port = await allocateFreePort(0);
    expect(port).toBeGreaterThan(0);
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(port, "0.0.0.0", resolve));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("keeps host ports by name, allocates new ones, and never reuses a taken port", async () => {
    const offered = [41000, 41001, 41002];
    const allocate = async () => offered.shift() ?? 0;
    const allocator = allocatorFrom(allocate);
    const first = await assignHostPorts("container", ports, {}, new Set([41000]), allocator, "r");
    expect(first).toEqual({ http: 41001, "admin-ui": 41002 });
    const again = await assignHostPorts("container", ports, first, new Set(), allocator, "r");
    expect(again).toEqual(first);
  });

  it("gives a process replica its declared port when free, another one when taken", async () => {
    const asked: number[] = [];
    const allocate = async (preferred: number) => {
      asked.push(preferred);
      return preferred === 8080 ? 8080 : 40000 + asked.length;
    };
    expect(
      await assignHostPorts("process", ports, {}, new Set(), allocatorFrom(allocate), "r"),
    ).toEqual({
      http: 8080,
      "admin-ui": 40002,
    });
    expect(asked).toEqual([8080, 9090]);
    // A second replica on the same node cannot have 8080 again.
    let next = 41000;
    const second = await assignHostPorts(
      "process",
      ports,
      {},
      new Set([8080]),
      allocatorFrom(async () => next++),
      "r",
    );
    expect(second.http).toBe(41000);
  });

  it("a process replica listens on its host port: PORT names it", () => {
    const spec = buildRunSpec(
      {
        replicaId: "r1",
        namespace: "default",
        workload: "web",
        driver: "process",
        command: ["/bin/true"],
        env: {},
        ports: [{ name: "http", containerPort: 8080, hostPort: 0, protocol: "tcp" }],
        resources: { cpuMillicores: 100, memoryMiB: 32, storageGiB: 0 },
      },
      { http: 41234 },
    );
    expect(spec.env.PORT).toBe("41234");
    expect(spec.env.PORT_HTTP).toBe("41234");
    expect(spec.ports[0]).toMatchObject({ containerPort: 41234, hostPort: 41234 });
  });

  it("gives up after a bounded number of attempts", async () => {
    await expect(
      assignHostPorts(
        "container",
        ports,
        {},
        new Set([5000]),
        allocatorFrom(async () => 5000),
        "r",
      ),
    ).rejects.toThrow(/no free host port/);
  });
});

describe("buildRunSpec", () => {
  it("fills in host ports and PORT variables; the workload's own env wins", () => {
    const built = buildRunSpec(spec({ env: { PORT_ADMIN_UI: "1234" } }), {
      http: 41001,
      "admin-ui": 41002,
    });
    expect(built.ports.map((port) => port.hostPort)).toEqual([41001, 41002]);
    expect(built.env).toMatchObject({ PORT: "8080", PORT_HTTP: "8080", PORT_ADMIN_UI: "1234" });
    expect(built.env.CLOUDLESS_REPLICA).toBe(built.replicaId);
    expect(portEnvName("admin-ui")).toBe("PORT_ADMIN_UI");
  });
});

describe("buildRunSpec with service networking", () => {
  it("REQ-041 adds the service variables below the workload's own env, and the DNS settings", () => {
    const built = buildRunSpec(
      spec({ env: { CLOUDLESS_SERVICE_DB_HOST: "db.example" } }),
      { http: 41001, "admin-ui": 41002 },
      {
        env: {
          CLOUDLESS_SERVICE_DB_HOST: "10.96.0.30",
          CLOUDLESS_SERVICE_DB_PORT: "5432",
        },
        dns: { servers: ["10.96.0.10"], search: ["svc.cluster.local"], options: ["ndots:5"] },
      },
    );
    expect(built.env.CLOUDLESS_SERVICE_DB_HOST).toBe("db.example");
    expect(built.env.CLOUDLESS_SERVICE_DB_PORT).toBe("5432");
    expect(built.dns).toEqual({
      servers: ["10.96.0.10"],
      search: ["svc.cluster.local"],
      options: ["ndots:5"],
    });
    expect(buildRunSpec(spec({}), {}).dns).toBeUndefined();
  });
});

describe("resolveProbeAction", () => {
  it("REQ-032 maps a container port to its host port and leaves other ports alone", () => {
    const hostPorts = { http: 41001, "admin-ui": 41002 };
    expect(resolveProbeAction({ http: { path: "/", port: 8080 } }, ports, hostPorts)).toEqual({
      http: { path: "/", port: 41001 },
    });
    expect(resolveProbeAction({ tcp: { port: 7000 } }, ports, hostPorts)).toEqual({
      tcp: { port: 7000 },
    });
  });
});

/** An allocator over a scripted host: `held` ports are someone else's, the rest free. */
function scriptedHost(held: Set<number>, firstFree = 42000) {
  let next = firstFree;
  const asked: Array<[string, number]> = [];
  const released: number[] = [];
  const allocator: HostPortAllocator = {
    allocate: async (preferred) => {
      asked.push(["allocate", preferred]);
      if (preferred > 0 && !held.has(preferred)) return preferred;
      return next++;
    },
    reuse: async (port) => {
      asked.push(["reuse", port]);
      return !held.has(port);
    },
    claim: async () => true,
    release: async (port) => {
      released.push(port);
    },
  };
  return { allocator, asked, released };
}

describe("hardening: a port that is no longer the replica's", () => {
  it("REQ-030 a kept port that something else took since (the replica exited with EADDRINUSE) is replaced, and the declared port is not asked for again", async () => {
    const host = scriptedHost(new Set([8080]));
    const assigned = await assignHostPorts(
      "process",
      ports,
      { http: 8080, "admin-ui": 9090 },
      new Set(),
      host.allocator,
      "web-1",
    );
    expect(assigned).toEqual({ http: 42000, "admin-ui": 9090 });
    expect(host.asked).toEqual([
      ["reuse", 8080],
      ["allocate", 0],
      ["reuse", 9090],
    ]);
    expect(droppedPorts({ http: 8080, "admin-ui": 9090 }, assigned)).toEqual([8080]);
  });

  it("REQ-030 a kept port another replica of this agent now uses is not reused", async () => {
    const host = scriptedHost(new Set());
    const assigned = await assignHostPorts(
      "container",
      ports.slice(0, 1),
      { http: 43000 },
      new Set([43000]),
      host.allocator,
      "web-1",
    );
    expect(assigned.http).toBe(42000);
    expect(host.asked).toEqual([["allocate", 0]]);
  });
});

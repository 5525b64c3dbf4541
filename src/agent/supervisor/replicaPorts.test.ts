import net from "node:net";
import { describe, expect, it } from "vitest";
import type { PortMapping, ReplicaRunSpec } from "../drivers/driver.js";
import {
  allocateFreePort,
  assignHostPorts,
  buildRunSpec,
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
    const first = await assignHostPorts("container", ports, {}, new Set([41000]), allocate);
    expect(first).toEqual({ http: 41001, "admin-ui": 41002 });
    const again = await assignHostPorts("container", ports, first, new Set(), allocate);
    expect(again).toEqual(first);
  });

  it("gives a process replica its declared port when free, another one when taken", async () => {
    const asked: number[] = [];
    const allocate = async (preferred: number) => {
      asked.push(preferred);
      return preferred === 8080 ? 8080 : 40000 + asked.length;
    };
    expect(await assignHostPorts("process", ports, {}, new Set(), allocate)).toEqual({
      http: 8080,
      "admin-ui": 40002,
    });
    expect(asked).toEqual([8080, 9090]);
    // A second replica on the same node cannot have 8080 again.
    let next = 41000;
    const second = await assignHostPorts("process", ports, {}, new Set([8080]), async () => next++);
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
      assignHostPorts("container", ports, {}, new Set([5000]), async () => 5000),
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

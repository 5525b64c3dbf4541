import { describe, expect, it } from "vitest";
import type { CoordinatorCore, ModuleDefinition } from "./module.js";
import { moduleKey } from "./module.js";
import { startModules } from "./moduleHost.js";

// The host only passes the core through; its parts are not used here.
const core = {} as CoordinatorCore;

function recorder() {
  const calls: string[] = [];
  const define = (name: string, extra: Partial<ModuleDefinition> = {}): ModuleDefinition => ({
    name,
    start: () => ({
      onLeader: async () => {
        calls.push(`${name}.leader`);
      },
      onFollower: async () => {
        calls.push(`${name}.follower`);
      },
      maintain: async () => {
        calls.push(`${name}.maintain`);
      },
      stop: async () => {
        calls.push(`${name}.stop`);
      },
    }),
    ...extra,
  });
  return { calls, define };
}

describe("coordinator modules (ADR 0045)", () => {
  it("NFR-R1 contract: leader work starts and stops in list order, stop runs in reverse, once", async () => {
    const { calls, define } = recorder();
    const host = await startModules([define("a"), define("b"), define("c")], core);
    await host.onLeader();
    await host.onFollower();
    await host.maintain();
    await host.stop();
    await host.stop();
    expect(calls).toEqual([
      "a.leader",
      "b.leader",
      "c.leader",
      "a.follower",
      "b.follower",
      "c.follower",
      "a.maintain",
      "b.maintain",
      "c.maintain",
      "c.stop",
      "b.stop",
      "a.stop",
    ]);
  });

  it("contract: a module uses what an earlier one provides, typed; a later one is a wiring error naming both", async () => {
    const greeting = moduleKey<{ text: string }>("greeting");
    const seen: string[] = [];
    const provider: ModuleDefinition = {
      name: "provider",
      start(context) {
        context.provide(greeting, { text: "hello" });
        return {};
      },
    };
    const consumer: ModuleDefinition = {
      name: "consumer",
      start(context) {
        seen.push(context.use(greeting).text);
        return {};
      },
    };
    const host = await startModules([provider, consumer], core);
    expect(seen).toEqual(["hello"]);
    expect(host.use(greeting).text).toBe("hello");
    await expect(startModules([consumer, provider], core)).rejects.toThrow(
      'module consumer needs "greeting", which no module before it in the module list provides',
    );
  });

  it("contract: a module failing to start stops the ones started before it, in reverse", async () => {
    const { calls, define } = recorder();
    const failing: ModuleDefinition = {
      name: "broken",
      start: () => {
        throw new Error("cannot open");
      },
    };
    await expect(
      startModules([define("a"), define("b"), failing, define("c")], core),
    ).rejects.toThrow("cannot open");
    expect(calls).toEqual(["b.stop", "a.stop"]);
  });

  it("contract: a module listed twice, a key provided twice or a method audited twice is refused", async () => {
    const { define } = recorder();
    await expect(startModules([define("a"), define("a")], core)).rejects.toThrow(
      "module a is listed twice",
    );
    const key = moduleKey<number>("number");
    const twice = (name: string): ModuleDefinition => ({
      name,
      start(context) {
        context.provide(key, 1);
        return {};
      },
    });
    await expect(startModules([twice("x"), twice("y")], core)).rejects.toThrow(
      'module y provides "number", already provided',
    );
    const auditing = (name: string): ModuleDefinition => ({
      name,
      start: () => ({ audited: new Map([["cloudless.v1.X/Y", () => ""]]) }),
    });
    await expect(startModules([auditing("p"), auditing("q")], core)).rejects.toThrow(
      "module q audits cloudless.v1.X/Y, which another module already audits",
    );
  });

  it("contract: each state gauge reads from the module that feeds it; unfed ones read empty", async () => {
    const host = await startModules(
      [
        {
          name: "streams",
          start: () => ({ stateGauges: { heartbeatStreams: () => 7 } }),
        },
      ],
      core,
    );
    const source = host.stateSource();
    expect(source.heartbeatStreams()).toBe(7);
    expect(await source.nodesByStatus()).toEqual({});
    expect(await source.replicasByPhase()).toEqual({});
  });
});

import { describe, expect, it } from "vitest";
import { type Action, authorize, type Identity } from "./identity.js";

const admin: Identity = { kind: "admin", name: "alice" };
const coordinator: Identity = { kind: "coordinator", name: "c1" };
const nodeA: Identity = { kind: "node", name: "a" };

describe("authorize", () => {
  it("REQ-060: an admin may perform every kind of action", () => {
    const actions: Action[] = [
      { kind: "admin" },
      { kind: "node", nodeName: "a" },
      { kind: "nodeOrAdmin", nodeName: "b" },
    ];
    for (const action of actions) expect(authorize(admin, action)).toEqual({ ok: true });
  });

  it("treats a coordinator as an admin for now", () => {
    expect(authorize(coordinator, { kind: "admin" })).toEqual({ ok: true });
    expect(authorize(coordinator, { kind: "node", nodeName: "a" })).toEqual({ ok: true });
  });

  it("REQ-060: a node may act as itself", () => {
    expect(authorize(nodeA, { kind: "node", nodeName: "a" })).toEqual({ ok: true });
    expect(authorize(nodeA, { kind: "nodeOrAdmin", nodeName: "a" })).toEqual({ ok: true });
  });

  it("REQ-060: a node may not act as another node, and the reason says so in one line", () => {
    const result = authorize(nodeA, { kind: "node", nodeName: "b" });
    expect(result).toEqual({ ok: false, reason: 'node "a" may not act as node "b"' });
    const either = authorize(nodeA, { kind: "nodeOrAdmin", nodeName: "b" });
    expect(either.ok).toBe(false);
    if (!either.ok) {
      expect(either.reason).toContain('node "a" may not act as node "b"');
      expect(either.reason).not.toContain("\n");
    }
  });

  it("REQ-060: a node may not perform administrative actions", () => {
    const result = authorize(nodeA, { kind: "admin" });
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.reason).toMatch(/^node "a" may not perform administrative/);
  });
});

import { describe, expect, it } from "vitest";
import { proceduresOf } from "../api/metricsInterceptor.js";
import { startInProcessApi } from "../api/testing/inProcessApi.js";
import { decideMethod, methodPermissions, rolePermissions } from "./permissions.js";

const viewer = { kind: "user", name: "vera", role: "viewer" } as const;
const operator = { kind: "user", name: "otto", role: "operator" } as const;
const admin = { kind: "admin", name: "admin", role: "admin" } as const;

describe("the permission table (ADR 0051)", () => {
  it("NFR-S1 every method of every service the coordinator serves has a permission, so a new RPC cannot be forgotten", async () => {
    const api = await startInProcessApi();
    try {
      const served = [...proceduresOf((router) => api.modules.routes(router))].sort();
      expect(served.length).toBeGreaterThan(30);
      const missing = served.filter((method) => !methodPermissions.has(method));
      expect(missing).toEqual([]);
      // And nothing in the table names a method nobody serves (a renamed RPC).
      const stale = [...methodPermissions.keys()].filter((method) => !served.includes(method));
      expect(stale).toEqual([]);
    } finally {
      await api.close();
    }
  });

  it("NFR-S1 a method missing from the table is refused to everyone, admin and nodes included (default deny)", () => {
    for (const caller of [admin, viewer, { kind: "node", name: "n1" } as const]) {
      const decision = decideMethod(caller, "cloudless.v1.ConfigService/ForgottenMethod");
      expect(decision.ok).toBe(false);
      if (!decision.ok) expect(decision.reason).toContain("default deny");
    }
  });

  it("REQ-061 viewer reads only; operator changes workloads but not tokens, nodes, users or policies; admin everything but agent calls", () => {
    const allowed = (caller: Parameters<typeof decideMethod>[0], method: string) =>
      decideMethod(caller, `cloudless.v1.${method}`).ok;
    for (const read of [
      "WorkloadService/ListWorkloads",
      "WorkloadService/GetWorkload",
      "NodeService/ListNodes",
      "NodeService/GetNode",
      "ServiceService/ListServices",
      "EventService/WatchEvents",
    ]) {
      expect(allowed(viewer, read), read).toBe(true);
      expect(allowed(operator, read), read).toBe(true);
    }
    for (const write of [
      "WorkloadService/ApplyWorkload",
      "WorkloadService/DeleteWorkload",
      "WorkloadService/ScaleWorkload",
      "WorkloadService/RolloutUndo",
      "WorkloadService/ExecWorkload",
    ]) {
      expect(allowed(viewer, write), write).toBe(false);
      expect(allowed(operator, write), write).toBe(true);
    }
    for (const adminOnly of [
      "TokenService/CreateToken",
      "TokenService/ListTokens",
      "NodeService/DeleteNode",
      "NodeService/DrainNode",
      "NodeService/CordonNode",
      "UserService/CreateUser",
      "UserService/RevokeUser",
      "UserService/ListUsers",
    ]) {
      expect(allowed(viewer, adminOnly), adminOnly).toBe(false);
      expect(allowed(operator, adminOnly), adminOnly).toBe(false);
      expect(allowed(admin, adminOnly), adminOnly).toBe(true);
    }
    // Agent calls are for nodes; the public Enroll carries a token.
    expect(allowed(admin, "NodeService/Heartbeat")).toBe(false);
    expect(allowed({ kind: "node", name: "n1" }, "NodeService/Heartbeat")).toBe(true);
    expect(allowed(viewer, "NodeService/Enroll")).toBe(true);
  });

  it("REQ-061 the hooks for secrets and policies: a viewer holds neither secrets.read nor policies.write, an operator no policies.write", () => {
    expect(rolePermissions.viewer.has("secrets.read")).toBe(false);
    expect(rolePermissions.viewer.has("policies.read")).toBe(false);
    expect(rolePermissions.operator.has("secrets.read")).toBe(true);
    expect(rolePermissions.operator.has("policies.write")).toBe(false);
    expect(rolePermissions.admin.has("policies.write")).toBe(true);
    expect(rolePermissions.admin.has("agent")).toBe(false);
  });

  it("NFR-S1 configs: viewer gets and lists; operator and admin also create, update, delete; only nodes read a replica's config", () => {
    const allowed = (caller: Parameters<typeof decideMethod>[0], method: string) =>
      decideMethod(caller, `cloudless.v1.ConfigService/${method}`).ok;
    for (const read of ["GetConfig", "ListConfigs"]) {
      for (const caller of [viewer, operator, admin])
        expect(allowed(caller, read), read).toBe(true);
    }
    for (const write of ["CreateConfig", "UpdateConfig", "DeleteConfig"]) {
      expect(allowed(viewer, write), write).toBe(false);
      expect(allowed(operator, write), write).toBe(true);
      expect(allowed(admin, write), write).toBe(true);
    }
    for (const caller of [viewer, operator, admin]) {
      expect(allowed(caller, "ReadReplicaConfig")).toBe(false);
    }
    expect(allowed({ kind: "node", name: "n1" }, "ReadReplicaConfig")).toBe(true);
  });

  it("NFR-S1 a refusal says in one line who, which role, which permission is needed and which role has it", () => {
    const decision = decideMethod(viewer, "cloudless.v1.WorkloadService/ApplyWorkload");
    expect(decision).toEqual({
      ok: false,
      permission: "workloads.write",
      reason:
        'user "vera" with role viewer may not call WorkloadService/ApplyWorkload: it needs permission workloads.write (role operator or admin)',
    });
    expect(decision.ok || decision.reason.includes("\n")).toBe(false);
  });
});

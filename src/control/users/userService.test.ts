import { X509Certificate } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { UserService } from "../../api/gen/cloudless/v1/user_pb.js";
import { WorkloadService } from "../../api/gen/cloudless/v1/workload_pb.js";
import { generateKeyAndCsr, identityFromCertificate } from "../../api/identity.js";
import { limits } from "../../api/limits.js";
import {
  type InProcessApi,
  nodePeer,
  startInProcessApi,
  userPeer,
} from "../api/testing/inProcessApi.js";
import { usersKey } from "./usersModule.js";

async function refusal(call: Promise<unknown>): Promise<ConnectError> {
  const error = await call.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  if (!(error instanceof ConnectError)) throw new Error(`expected a refusal, got ${String(error)}`);
  return error;
}

let api: InProcessApi;
beforeEach(async () => {
  api = await startInProcessApi();
});
afterEach(async () => {
  await api.close();
});

describe("user API in process (ADR 0051)", () => {
  it("NFR-S1 create signs the CSR's key for the name and role the request gives; revoke makes the serial stale; a revoked name can be created again", async () => {
    const users = api.client(UserService);
    const registry = api.modules.use(usersKey);
    const { csrPem } = await generateKeyAndCsr({ commonName: "admin" });
    const created = await users.createUser({ name: "vera", role: "viewer", csrPem });
    const identity = identityFromCertificate(new X509Certificate(created.certPem), "test");
    expect(identity).toMatchObject({ kind: "user", name: "vera", role: "viewer" });
    expect(created.info).toMatchObject({ name: "vera", role: "viewer", createdBy: "admin/admin" });
    expect(created.info?.serial).toBe(identity?.serial);
    expect(created.clusterName).toBe("test");
    expect(await registry.isCurrent("vera", identity?.serial ?? "")).toBe(true);
    expect(await registry.isCurrent("vera", "ff")).toBe(false);

    const taken = await refusal(users.createUser({ name: "vera", role: "admin", csrPem }));
    expect(taken.code).toBe(Code.AlreadyExists);

    const revoked = await users.revokeUser({ name: "vera" });
    expect(revoked.info?.revokedAt).toBeDefined();
    expect(await registry.isCurrent("vera", identity?.serial ?? "")).toBe(false);

    const again = await users.createUser({ name: "vera", role: "operator", csrPem });
    expect(again.info?.serial).not.toBe(identity?.serial);
    expect(await registry.isCurrent("vera", identity?.serial ?? "")).toBe(false);
    expect(await registry.isCurrent("vera", again.info?.serial ?? "")).toBe(true);
    expect((await users.listUsers({})).users.map((u) => [u.name, u.role])).toEqual([
      ["vera", "operator"],
    ]);
  });

  it("NFR-S1 bad input is refused before the CA signs: name, role, CSR size and content", async () => {
    const users = api.client(UserService);
    const { csrPem } = await generateKeyAndCsr({ commonName: "x" });
    const cases: [Parameters<typeof users.createUser>[0], string][] = [
      [{ name: "Bad", role: "viewer", csrPem }, 'user name "Bad" is not valid'],
      [{ name: "a".repeat(64), role: "viewer", csrPem }, "is not valid"],
      [
        { name: "ann", role: "root", csrPem },
        'role "root" is not valid: use admin, operator or viewer',
      ],
      [{ name: "ann", role: "viewer", csrPem: "" }, "csr_pem must be"],
      [
        { name: "ann", role: "viewer", csrPem: "x".repeat(limits.csrPemBytes + 1) },
        "csr_pem must be",
      ],
      [{ name: "ann", role: "viewer", csrPem: "not a csr" }, "certificate signing request refused"],
    ];
    for (const [request, message] of cases) {
      const error = await refusal(users.createUser(request));
      expect(error.code).toBe(Code.InvalidArgument);
      expect(error.rawMessage).toContain(message);
    }
    expect((await users.listUsers({})).users).toEqual([]);
    expect((await refusal(users.revokeUser({ name: "ghost" }))).code).toBe(Code.NotFound);
  });

  it("REQ-061 only the admin role manages users; a viewer reads workloads, an operator cannot create users, a node is refused as before", async () => {
    const { csrPem } = await generateKeyAndCsr({ commonName: "x" });
    for (const role of ["viewer", "operator"] as const) {
      const users = api.client(UserService, userPeer("someone", role));
      const error = await refusal(users.createUser({ name: "m", role: "admin", csrPem }));
      expect(error.code).toBe(Code.PermissionDenied);
      expect(error.rawMessage).toBe(
        `user "someone" with role ${role} may not call UserService/CreateUser: it needs permission users.write (role admin)`,
      );
      expect((await refusal(users.listUsers({}))).code).toBe(Code.PermissionDenied);
    }
    const adminUser = api.client(UserService, userPeer("root", "admin"));
    expect((await adminUser.createUser({ name: "m", role: "viewer", csrPem })).info?.name).toBe(
      "m",
    );
    const viewerWorkloads = api.client(WorkloadService, userPeer("v", "viewer"));
    expect((await viewerWorkloads.listWorkloads({})).workloads).toEqual([]);
    const nodeUsers = api.client(UserService, nodePeer("n1"));
    expect((await refusal(nodeUsers.listUsers({}))).code).toBe(Code.PermissionDenied);
    // A user identity without a role (our CA never issues one) gets nothing, not a default.
    const roleless = api.client(WorkloadService, {
      address: "127.0.0.4:1",
      identity: { kind: "user", name: "x", serial: "04" },
    });
    expect((await refusal(roleless.listWorkloads({}))).code).toBe(Code.PermissionDenied);
  });
});

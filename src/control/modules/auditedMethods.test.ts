import { afterEach, describe, expect, it } from "vitest";
import { type InProcessApi, startInProcessApi } from "../api/testing/inProcessApi.js";

let api: InProcessApi | undefined;
afterEach(async () => {
  await api?.close();
});

describe("audited methods, declared by the modules (ADR 0045)", () => {
  it("NFR-C1 the modules together audit exactly the state-changing methods, and name each target", async () => {
    api = await startInProcessApi();
    const audited = api.modules.audited();
    expect([...audited.keys()].sort()).toEqual([
      "cloudless.v1.ConfigService/CreateConfig",
      "cloudless.v1.ConfigService/DeleteConfig",
      "cloudless.v1.ConfigService/ReadReplicaConfig",
      "cloudless.v1.ConfigService/UpdateConfig",
      "cloudless.v1.NodeService/CordonNode",
      "cloudless.v1.NodeService/DeleteNode",
      "cloudless.v1.NodeService/DrainNode",
      "cloudless.v1.NodeService/Enroll",
      "cloudless.v1.NodeService/RenewCertificate",
      "cloudless.v1.NodeService/UncordonNode",
      "cloudless.v1.PolicyService/ApplyPolicy",
      "cloudless.v1.PolicyService/DeletePolicy",
      "cloudless.v1.SecretService/CreateSecret",
      "cloudless.v1.SecretService/DeleteSecret",
      "cloudless.v1.SecretService/IssueReplicaToken",
      "cloudless.v1.SecretService/ReadReplicaSecret",
      "cloudless.v1.SecretService/RotateSecretsKey",
      "cloudless.v1.SecretService/UpdateSecret",
      "cloudless.v1.TokenService/CreateToken",
      "cloudless.v1.TokenService/DeleteToken",
      "cloudless.v1.UserService/CreateUser",
      "cloudless.v1.UserService/RevokeUser",
      "cloudless.v1.WorkloadService/ApplyWorkload",
      "cloudless.v1.WorkloadService/DeleteWorkload",
      "cloudless.v1.WorkloadService/ExecWorkload",
      "cloudless.v1.WorkloadService/RolloutUndo",
      "cloudless.v1.WorkloadService/ScaleWorkload",
    ]);
    const peer = {
      address: "127.0.0.1:1",
      identity: { kind: "node" as const, name: "n1", serial: "1" },
    };
    const target = (method: string, request: unknown, response?: unknown) =>
      audited.get(method)?.({ request, response, peer });
    expect(target("cloudless.v1.NodeService/Enroll", { name: "n1", token: "secret" })).toBe(
      "node/n1",
    );
    expect(target("cloudless.v1.NodeService/RenewCertificate", {})).toBe("node/n1");
    expect(
      target("cloudless.v1.TokenService/CreateToken", {}, { info: { id: "abc" }, token: "x" }),
    ).toBe("token/abc");
    // Secrets are named, never their values (REQ-063).
    expect(
      target("cloudless.v1.SecretService/CreateSecret", {
        namespace: "",
        name: "db",
        data: { password: new TextEncoder().encode("hunter2") },
      }),
    ).toBe("secret/default/db");
    expect(
      target("cloudless.v1.SecretService/ReadReplicaSecret", {
        namespace: "shop",
        workload: "web",
        replicaId: "r1",
        name: "db",
      }),
    ).toBe("secret/shop/db replica/web/r1");
    // A replica token is named by its replica, never by its value (ADR 0058).
    expect(
      target("cloudless.v1.SecretService/IssueReplicaToken", {
        namespace: "shop",
        workload: "web",
        replicaId: "r1",
      }),
    ).toBe("replica/shop/web/r1");
    expect(
      target("cloudless.v1.WorkloadService/ScaleWorkload", { name: "web", namespace: "" }),
    ).toBe("workload/default/web");
    expect(
      target("cloudless.v1.WorkloadService/ApplyWorkload", {
        specText: "metadata:\n  name: api\n  namespace: shop\n",
      }),
    ).toBe("workload/shop/api");
  });
});

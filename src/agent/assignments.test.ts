import { describe, expect, it } from "vitest";
import { limits } from "../api/limits.js";
import { desiredFromAssignment } from "./assignments.js";

function assignment(spec: Record<string, unknown>) {
  return {
    replicaId: "web-1",
    namespace: "default",
    workload: "web",
    revision: 1,
    specJson: JSON.stringify({
      apiVersion: "cloudless/v1",
      kind: "Workload",
      metadata: { name: "web", namespace: "default" },
      spec: { command: ["sleep", "60"], resources: { cpuMillicores: 10, memoryMiB: 8 }, ...spec },
    }),
  };
}

describe("assignments", () => {
  it("REQ-020 hardening: a node runs an assigned spec whose replica count is beyond today's limit (a workload stored before it)", () => {
    const desired = desiredFromAssignment(
      assignment({ replicas: limits.replicasPerWorkload * 2, minAvailable: 15_000 }),
    );
    expect(desired.ok, desired.ok ? "" : desired.message).toBe(true);
    if (desired.ok) expect(desired.desired.spec.command).toEqual(["sleep", "60"]);
  });

  it("REQ-081 hardening: a node still refuses an assigned spec beyond the limits it depends on (a probe period a Node timer cannot hold)", () => {
    const desired = desiredFromAssignment(
      assignment({ livenessProbe: { exec: { command: ["true"] }, periodSeconds: 1e10 } }),
    );
    expect(desired).toEqual({
      ok: false,
      message:
        "assignment spec is invalid: spec.livenessProbe.periodSeconds: must be at most 86400 (limit probeSeconds)",
    });
  });

  it("REQ-071 NFR-A1 contract: fields a newer coordinator added are set aside and named, and the replica still runs what this agent knows", () => {
    const reading = desiredFromAssignment(
      assignment({
        futureSidecar: { image: "example/sidecar:2" },
        ports: [{ name: "http", containerPort: 8080, appProtocol: "h2c" }],
      }),
    );
    expect(reading.ok, reading.ok ? "" : reading.message).toBe(true);
    if (!reading.ok) return;
    expect(reading.unknownFields).toEqual(["spec.futureSidecar", "spec.ports[0].appProtocol"]);
    expect(reading.desired.spec.command).toEqual(["sleep", "60"]);
    expect(reading.desired.spec.ports).toEqual([
      { name: "http", containerPort: 8080, hostPort: 0, protocol: "tcp" },
    ]);
  });

  it("REQ-062 hands the securityContext to the driver: capability names bare and once each, unconfined as no filter; none without one", () => {
    const reading = desiredFromAssignment(
      assignment({
        securityContext: {
          runAsUser: 4242,
          capabilitiesAdd: ["CAP_NET_BIND_SERVICE", "NET_BIND_SERVICE", "NET_RAW"],
          readOnlyRootFilesystem: true,
          seccompProfile: "unconfined",
        },
      }),
    );
    expect(reading.ok && reading.desired.spec.security).toEqual({
      runAsUser: 4242,
      capabilitiesAdd: ["NET_BIND_SERVICE", "NET_RAW"],
      readOnlyRootFilesystem: true,
      seccomp: false,
    });
    const plain = desiredFromAssignment(assignment({}));
    expect(plain.ok && plain.desired.spec.security).toBeUndefined();
  });

  it("REQ-071 contract: a spec without unknown fields names none", () => {
    const reading = desiredFromAssignment(assignment({}));
    expect(reading.ok && reading.unknownFields).toEqual([]);
  });

  it("REQ-081 contract: an unknown field does not excuse a wrong known one", () => {
    const reading = desiredFromAssignment(
      assignment({ futureSidecar: {}, resources: { cpuMillicores: "lots", memoryMiB: 8 } }),
    );
    expect(reading.ok).toBe(false);
    if (!reading.ok) expect(reading.message).toContain("spec.resources.cpuMillicores");
  });
});

import { describe, expect, it } from "vitest";
import { ReplicaOwner } from "./ownership.js";

const cluster = "0123456789abcdef";
const other = "fedcba9876543210";

describe("ReplicaOwner.judge (ADR 0030)", () => {
  it("REQ-030 a replica is this agent's only with its cluster and node uid; another cluster, node name or uid is foreign, state or not", () => {
    const owner = new ReplicaOwner(cluster, "host", "uid-1");
    owner.setStateLookup(() => true);
    expect(owner.judge({ cluster, node: "host", nodeUid: "uid-1" }, "r")).toBe("own");
    expect(owner.judge({ cluster: other, node: "host", nodeUid: "uid-1" }, "r")).toBe("foreign");
    expect(owner.judge({ cluster, node: "host", nodeUid: "uid-2" }, "r")).toBe("foreign");
    expect(owner.judge({ cluster, node: "other", nodeUid: "uid-1" }, "r")).toBe("foreign");
    expect(owner.judge({ cluster: other, node: "host" }, "r")).toBe("foreign");
    expect(owner.marks()).toEqual({ cluster, node: "host", nodeUid: "uid-1" });
  });

  it("NFR-A1 an unmarked replica (an older agent's) is this agent's only when its own state lists it", () => {
    const owner = new ReplicaOwner(cluster, "host", "uid-1");
    const listed = new Set(["mine"]);
    owner.setStateLookup((id) => listed.has(id));
    expect(owner.judge({ node: "host" }, "mine")).toBe("listed");
    expect(owner.judge({ node: "host" }, "theirs")).toBe("foreign");
    expect(owner.judge({ cluster, node: "host" }, "mine")).toBe("listed");
    expect(owner.judge({ node: "" }, "mine")).toBe("foreign");
  });

  it("NFR-A1 before it learns its uid, an agent adopts only what its state lists, and marks new replicas once it knows", () => {
    const owner = new ReplicaOwner(cluster, "host", undefined);
    owner.setStateLookup((id) => id === "mine");
    expect(owner.marks()).toEqual({ cluster, node: "host" });
    expect(owner.judge({ cluster, node: "host", nodeUid: "uid-1" }, "mine")).toBe("listed");
    expect(owner.judge({ cluster, node: "host", nodeUid: "uid-1" }, "theirs")).toBe("foreign");
    owner.learnNodeUid("uid-1");
    expect(owner.marks()).toEqual({ cluster, node: "host", nodeUid: "uid-1" });
    expect(owner.judge({ cluster, node: "host", nodeUid: "uid-1" }, "theirs")).toBe("own");
  });

  it("refuses a malformed cluster id", () => {
    expect(() => new ReplicaOwner("not-hex", "host", "uid")).toThrow(/invalid cluster id/);
  });
});

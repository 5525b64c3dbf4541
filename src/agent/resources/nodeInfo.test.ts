import os from "node:os";
import { describe, expect, it } from "vitest";
import { collectNodeInfo } from "./nodeInfo.js";

describe("collectNodeInfo", () => {
  it("REQ-010 reports OS, arch and kernel from the machine", () => {
    const drivers = ["docker", "process"];
    const info = collectNodeInfo("0.1.0", drivers);
    expect(info).toMatchObject({
      os: os.platform(),
      arch: os.arch(),
      kernel: os.release(),
      hostname: os.hostname(),
      agentVersion: "0.1.0",
      drivers: ["docker", "process"],
    });
    expect(info.cpuModel.length).toBeGreaterThan(0);
    // The caller's array is copied, so later changes to it do not leak into the report.
    drivers.push("vm");
    expect(info.drivers).toEqual(["docker", "process"]);
  });
});

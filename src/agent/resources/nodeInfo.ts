import os from "node:os";
import { create } from "@bufbuild/protobuf";
import { type NodeInfo, NodeInfoSchema } from "../../api/gen/cloudless/v1/node_pb.js";

/**
 * Static facts about the node, reported once at registration (REQ-010: OS/arch), in the
 * contract's one NodeInfo (the hello carries it as is).
 */
export function collectNodeInfo(agentVersion: string, drivers: string[]): NodeInfo {
  // Some platforms (and sandboxes) report no CPUs or an empty model string.
  const cpuModel = os.cpus()[0]?.model.trim() || "unknown";
  return create(NodeInfoSchema, {
    os: os.platform(),
    arch: os.arch(),
    kernel: os.release(),
    hostname: os.hostname(),
    agentVersion,
    cpuModel,
    drivers: [...drivers],
  });
}

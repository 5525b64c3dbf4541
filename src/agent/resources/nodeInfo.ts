import os from "node:os";

export interface NodeInfo {
  /** node:os platform, e.g. "linux", "darwin", "win32". */
  os: string;
  /** node:os arch, e.g. "x64", "arm64". */
  arch: string;
  /** Kernel release, e.g. "6.8.0-45-generic". */
  kernel: string;
  hostname: string;
  agentVersion: string;
  cpuModel: string;
  /** Workload drivers this agent can run (e.g. "docker", "process"). */
  drivers: string[];
}

/** Static facts about the node, reported once at registration (REQ-010: OS/arch). */
export function collectNodeInfo(agentVersion: string, drivers: string[]): NodeInfo {
  // Some platforms (and sandboxes) report no CPUs or an empty model string.
  const cpuModel = os.cpus()[0]?.model.trim() || "unknown";
  return {
    os: os.platform(),
    arch: os.arch(),
    kernel: os.release(),
    hostname: os.hostname(),
    agentVersion,
    cpuModel,
    drivers: [...drivers],
  };
}

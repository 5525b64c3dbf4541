/**
 * The Linux capabilities a workload's `securityContext.capabilitiesAdd` may name
 * (REQ-062), in the kernel's order: a name's index is its bit in /proc/PID/status
 * (include/uapi/linux/capability.h, up to CAP_CHECKPOINT_RESTORE of Linux 5.9).
 * Specs name them like Kubernetes does, without the CAP_ prefix; with it is accepted too.
 */
export const linuxCapabilities = [
  "CHOWN",
  "DAC_OVERRIDE",
  "DAC_READ_SEARCH",
  "FOWNER",
  "FSETID",
  "KILL",
  "SETGID",
  "SETUID",
  "SETPCAP",
  "LINUX_IMMUTABLE",
  "NET_BIND_SERVICE",
  "NET_BROADCAST",
  "NET_ADMIN",
  "NET_RAW",
  "IPC_LOCK",
  "IPC_OWNER",
  "SYS_MODULE",
  "SYS_RAWIO",
  "SYS_CHROOT",
  "SYS_PTRACE",
  "SYS_PACCT",
  "SYS_ADMIN",
  "SYS_BOOT",
  "SYS_NICE",
  "SYS_RESOURCE",
  "SYS_TIME",
  "SYS_TTY_CONFIG",
  "MKNOD",
  "LEASE",
  "AUDIT_WRITE",
  "AUDIT_CONTROL",
  "SETFCAP",
  "MAC_OVERRIDE",
  "MAC_ADMIN",
  "SYSLOG",
  "WAKE_ALARM",
  "BLOCK_SUSPEND",
  "AUDIT_READ",
  "PERFMON",
  "BPF",
  "CHECKPOINT_RESTORE",
] as const;

export type LinuxCapability = (typeof linuxCapabilities)[number];

const known = new Set<string>(linuxCapabilities);

/** "NET_RAW" for "NET_RAW" and "CAP_NET_RAW"; undefined for a name that is not a capability. */
export function capabilityName(name: string): LinuxCapability | undefined {
  const bare = name.startsWith("CAP_") ? name.slice(4) : name;
  return known.has(bare) ? (bare as LinuxCapability) : undefined;
}

/** The capability's bit in a /proc/PID/status mask (CapEff, CapBnd…). */
export function capabilityBit(name: LinuxCapability): number {
  return linuxCapabilities.indexOf(name);
}

/**
 * The default seccomp filter of a replica (REQ-062, ADR 0050): everything is allowed
 * except the system calls a workload has no business making — mounting, loading kernel
 * code, tracing other processes, the kernel keyring, new namespaces, changing the clock.
 * They fail with EPERM (a program that probes for them carries on); a system call of a
 * foreign architecture (the i386 entry on x86_64, x32) kills the process, as it would
 * otherwise bypass a filter keyed by the native numbers.
 *
 * The classic-BPF program is assembled here (bwrap loads it from a file descriptor) and
 * the same list yields the OCI profile the container engine takes.
 */

export type SeccompArch = "x86_64" | "aarch64";

/** A denied system call and its number on each architecture (absent: it does not exist there). */
interface DeniedSyscall {
  name: string;
  x86_64: number;
  aarch64?: number;
}

/**
 * Denied by default. Numbers from the kernel's unistd_64.h (x86_64) and
 * asm-generic/unistd.h (aarch64). The new mount API (open_tree … mount_setattr) is
 * denied with mount, or it would be a way around it.
 */
export const deniedSyscalls: readonly DeniedSyscall[] = [
  { name: "mount", x86_64: 165, aarch64: 40 },
  { name: "umount2", x86_64: 166, aarch64: 39 },
  { name: "pivot_root", x86_64: 155, aarch64: 41 },
  { name: "open_tree", x86_64: 428, aarch64: 428 },
  { name: "move_mount", x86_64: 429, aarch64: 429 },
  { name: "fsopen", x86_64: 430, aarch64: 430 },
  { name: "fsconfig", x86_64: 431, aarch64: 431 },
  { name: "fsmount", x86_64: 432, aarch64: 432 },
  { name: "fspick", x86_64: 433, aarch64: 433 },
  { name: "mount_setattr", x86_64: 442, aarch64: 442 },
  { name: "kexec_load", x86_64: 246, aarch64: 104 },
  { name: "kexec_file_load", x86_64: 320, aarch64: 294 },
  { name: "init_module", x86_64: 175, aarch64: 105 },
  { name: "finit_module", x86_64: 313, aarch64: 273 },
  { name: "delete_module", x86_64: 176, aarch64: 106 },
  { name: "bpf", x86_64: 321, aarch64: 280 },
  { name: "ptrace", x86_64: 101, aarch64: 117 },
  { name: "keyctl", x86_64: 250, aarch64: 219 },
  { name: "add_key", x86_64: 248, aarch64: 217 },
  { name: "request_key", x86_64: 249, aarch64: 218 },
  { name: "reboot", x86_64: 169, aarch64: 142 },
  { name: "swapon", x86_64: 167, aarch64: 224 },
  { name: "swapoff", x86_64: 168, aarch64: 225 },
  { name: "setns", x86_64: 308, aarch64: 268 },
  // Plain deny: its flags could be inspected, but a workload has no use for any of them.
  { name: "unshare", x86_64: 272, aarch64: 97 },
  { name: "perf_event_open", x86_64: 298, aarch64: 241 },
  { name: "userfaultfd", x86_64: 323, aarch64: 282 },
  { name: "open_by_handle_at", x86_64: 304, aarch64: 265 },
  { name: "iopl", x86_64: 172 },
  { name: "ioperm", x86_64: 173 },
  { name: "acct", x86_64: 163, aarch64: 89 },
  { name: "settimeofday", x86_64: 164, aarch64: 170 },
  { name: "clock_settime", x86_64: 227, aarch64: 112 },
];

/** clone(2): allowed, but not with CLONE_NEWUSER (or any other new namespace) in its flags. */
const cloneNumber: Record<SeccompArch, number> = { x86_64: 56, aarch64: 220 };
/**
 * clone3(2) passes its flags in memory a filter cannot read: it fails with ENOSYS, so
 * the C library falls back to clone(2) (as Docker's default profile does).
 */
const clone3Number = 435;
/** CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME. */
const cloneNamespaceFlagList = [
  0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80,
];
const cloneNamespaceFlags = cloneNamespaceFlagList.reduce((all, flag) => all | flag, 0);

/** AUDIT_ARCH_* values, as the kernel puts them in seccomp_data.arch. */
export const auditArch: Record<SeccompArch, number> = {
  x86_64: 0xc000003e,
  aarch64: 0xc00000b7,
};
/** x86_64 numbers with this bit set are the x32 ABI: same arch value, other table. */
const x32SyscallBit = 0x40000000;

const EPERM = 1;
const ENOSYS = 38;

// Classic BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
const BPF_LD_W_ABS = 0x20;
const BPF_JMP_JEQ_K = 0x15;
const BPF_JMP_JGE_K = 0x35;
const BPF_JMP_JSET_K = 0x45;
const BPF_RET_K = 0x06;
const SECCOMP_RET_KILL_PROCESS = 0x80000000;
const SECCOMP_RET_ERRNO = 0x00050000;
const SECCOMP_RET_ALLOW = 0x7fff0000;
/** Offsets in struct seccomp_data: nr, arch, then ip and args[0] (its low word, little-endian). */
const offsetNr = 0;
const offsetArch = 4;
const offsetArg0Low = 16;
/** The kernel refuses longer programs (BPF_MAXINSNS). */
const maxInstructions = 4096;
/** A conditional jump's offsets are one byte each. */
const maxJump = 255;

export interface BpfInstruction {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

/** The architecture the agent runs on, or undefined where no filter is defined for it. */
export function hostSeccompArch(nodeArch: string = process.arch): SeccompArch | undefined {
  if (nodeArch === "x64") return "x86_64";
  if (nodeArch === "arm64") return "aarch64";
  return undefined;
}

/**
 * The filter as instructions. Layout: check the arch (else kill), load the number,
 * [x86_64: deny x32], one equality test per denied call jumping to the shared EPERM
 * return, clone's flag test, then allow.
 */
export function seccompInstructions(arch: SeccompArch): BpfInstruction[] {
  const numbers = deniedSyscalls
    .map((call) => call[arch])
    .filter((value): value is number => value !== undefined);
  const program: BpfInstruction[] = [];
  const emit = (code: number, k: number, jt = 0, jf = 0): number => {
    program.push({ code, jt, jf, k: k >>> 0 });
    return program.length - 1;
  };
  // Jumps whose target is the shared EPERM return, patched once its place is known.
  const toDeny: number[] = [];
  emit(BPF_LD_W_ABS, offsetArch);
  emit(BPF_JMP_JEQ_K, auditArch[arch], 1, 0);
  emit(BPF_RET_K, SECCOMP_RET_KILL_PROCESS);
  emit(BPF_LD_W_ABS, offsetNr);
  if (arch === "x86_64") toDeny.push(emit(BPF_JMP_JGE_K, x32SyscallBit));
  for (const number of numbers) toDeny.push(emit(BPF_JMP_JEQ_K, number));
  emit(BPF_JMP_JEQ_K, clone3Number, 0, 1);
  emit(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS);
  emit(BPF_JMP_JEQ_K, cloneNumber[arch], 0, 2);
  emit(BPF_LD_W_ABS, offsetArg0Low);
  toDeny.push(emit(BPF_JMP_JSET_K, cloneNamespaceFlags));
  emit(BPF_RET_K, SECCOMP_RET_ALLOW);
  const deny = emit(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM);
  for (const at of toDeny) {
    const distance = deny - at - 1;
    if (distance > maxJump) throw new Error(`seccomp filter: jump of ${distance} is too far`);
    const instruction = program[at];
    if (instruction) instruction.jt = distance;
  }
  if (program.length > maxInstructions) {
    throw new Error(`seccomp filter: ${program.length} instructions exceed ${maxInstructions}`);
  }
  return program;
}

/** The filter as struct sock_filter[] bytes (8 each, little-endian: both arches are). */
export function seccompFilterBytes(arch: SeccompArch): Buffer {
  const program = seccompInstructions(arch);
  const bytes = Buffer.alloc(program.length * 8);
  program.forEach((instruction, index) => {
    const at = index * 8;
    bytes.writeUInt16LE(instruction.code, at);
    bytes.writeUInt8(instruction.jt, at + 2);
    bytes.writeUInt8(instruction.jf, at + 3);
    bytes.writeUInt32LE(instruction.k, at + 4);
  });
  return bytes;
}

/**
 * The same policy as an OCI seccomp profile (Podman's `seccomp=<file>`): allow by
 * default, the denied calls fail with EPERM, clone3 with ENOSYS, clone with a new
 * namespace flag with EPERM (one rule per flag: a rule's conditions are all ANDed), and
 * only the native architecture is listed (libseccomp kills any other by default).
 */
export function ociSeccompProfile(arch: SeccompArch): Record<string, unknown> {
  const names = deniedSyscalls.filter((call) => call[arch] !== undefined).map((call) => call.name);
  return {
    defaultAction: "SCMP_ACT_ALLOW",
    architectures: [arch === "x86_64" ? "SCMP_ARCH_X86_64" : "SCMP_ARCH_AARCH64"],
    syscalls: [
      { names, action: "SCMP_ACT_ERRNO", errnoRet: EPERM },
      { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS },
      ...cloneNamespaceFlagList.map((flag) => ({
        names: ["clone"],
        action: "SCMP_ACT_ERRNO",
        errnoRet: EPERM,
        args: [{ index: 0, value: flag, valueTwo: flag, op: "SCMP_CMP_MASKED_EQ" }],
      })),
    ],
  };
}

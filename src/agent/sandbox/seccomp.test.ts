import { describe, expect, it } from "vitest";
import { findSandboxBinaries, sandboxArgv } from "./launch.js";
import {
  auditArch,
  deniedSyscalls,
  hostSeccompArch,
  ociSeccompProfile,
  seccompFilterBytes,
  seccompInstructions,
} from "./seccomp.js";

const RET = 0x06;
const JEQ = 0x15;
const ALLOW = 0x7fff0000;
const EPERM = 0x00050001;
const KILL_PROCESS = 0x80000000;

describe("REQ-062 seccomp filter assembly", () => {
  for (const arch of ["x86_64", "aarch64"] as const) {
    it(`REQ-062 ${arch}: checks the arch first, kills a foreign one, and every denied call jumps to EPERM`, () => {
      const program = seccompInstructions(arch);
      // ld arch; jeq native → skip the kill; kill.
      expect(program[0]).toEqual({ code: 0x20, jt: 0, jf: 0, k: 4 });
      expect(program[1]).toEqual({ code: JEQ, jt: 1, jf: 0, k: auditArch[arch] });
      expect(program[2]).toEqual({ code: RET, jt: 0, jf: 0, k: KILL_PROCESS });
      const last = program.length - 1;
      expect(program[last]).toEqual({ code: RET, jt: 0, jf: 0, k: EPERM });
      expect(program[last - 1]).toEqual({ code: RET, jt: 0, jf: 0, k: ALLOW });
      const expected = deniedSyscalls.flatMap((call) => call[arch] ?? []);
      const denied: number[] = [];
      program.forEach((instruction, index) => {
        if (instruction.code === JEQ && index > 2 && instruction.jt > 0) {
          // Every forward jump lands inside the program, and a denial on the EPERM return.
          expect(index + 1 + instruction.jt).toBe(last);
          denied.push(instruction.k);
        }
        if ((instruction.code & 0x07) === 0x05) {
          // A jump (BPF_JMP) never leaves the program.
          expect(index + 1 + instruction.jt).toBeLessThanOrEqual(last);
          expect(index + 1 + instruction.jf).toBeLessThanOrEqual(last);
        }
      });
      expect(denied.sort()).toEqual([...expected].sort());
      expect(seccompFilterBytes(arch).length).toBe(program.length * 8);
    });
  }

  it("REQ-062 knows the numbers of both arches, and iopl/ioperm only where they exist", () => {
    const byName = new Map(deniedSyscalls.map((call) => [call.name, call]));
    expect(byName.get("mount")).toMatchObject({ x86_64: 165, aarch64: 40 });
    expect(byName.get("unshare")).toMatchObject({ x86_64: 272, aarch64: 97 });
    expect(byName.get("iopl")?.aarch64).toBeUndefined();
    expect(hostSeccompArch("x64")).toBe("x86_64");
    expect(hostSeccompArch("arm64")).toBe("aarch64");
    expect(hostSeccompArch("ia32")).toBeUndefined();
    const profile = ociSeccompProfile("x86_64") as { syscalls: Array<{ names: string[] }> };
    expect(profile.syscalls[0]?.names).toContain("kexec_load");
  });

  it("REQ-062 launch line: setpriv drops the user before bwrap, the data dir is hidden, seccomp on fd 3", () => {
    const argv = sandboxArgv({
      binaries: { setpriv: "/usr/bin/setpriv", bwrap: "/usr/bin/bwrap" },
      uid: 61184,
      gid: 61184,
      workDir: "/data/replicas/r/work",
      hiddenDirs: ["/data"],
      seccomp: true,
      argv: ["/bin/sleep", "1"],
    });
    expect(argv.slice(0, 8)).toEqual([
      "/usr/bin/setpriv",
      "--reuid=61184",
      "--regid=61184",
      "--clear-groups",
      "--no-new-privs",
      "--inh-caps=-all",
      "--bounding-set=-all",
      "--",
    ]);
    expect(argv[8]).toBe("/usr/bin/bwrap");
    const text = argv.join(" ");
    expect(text).toContain("--tmpfs /tmp --tmpfs /data --bind /data/replicas/r/work");
    expect(text).toContain("--cap-drop ALL --seccomp 3 -- /bin/sleep 1");
    expect(() => sandboxArgv({ ...baseLaunch(), uid: 0 })).toThrow(/invalid uid/);
    // Only on request: the driver asks for it where bwrap's parent is not the agent.
    expect(argv).not.toContain("--die-with-parent");
    expect(sandboxArgv({ ...baseLaunch(), dieWithParent: true })).toContain("--die-with-parent");
  });

  it("REQ-062 securityContext launch line: added capabilities or root turn the order round (bwrap as root without a user namespace, setpriv inside keeps exactly the added capabilities)", () => {
    const argv = sandboxArgv({ ...baseLaunch(), capabilities: ["NET_BIND_SERVICE"] });
    expect(argv[0]).toBe("/usr/bin/bwrap");
    expect(argv).not.toContain("--unshare-user");
    const text = argv.join(" ");
    expect(text).toContain(
      "--cap-drop ALL --cap-add CAP_SETUID --cap-add CAP_SETGID --cap-add CAP_SETPCAP --cap-add CAP_DAC_READ_SEARCH --cap-add CAP_NET_BIND_SERVICE --seccomp 3 -- /usr/bin/setpriv",
    );
    expect(text).toContain(
      "/usr/bin/setpriv --reuid=61184 --regid=61184 --clear-groups --no-new-privs --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service --bounding-set=-all,+net_bind_service -- true",
    );
    // Root only when the spec asked for it; then with no capability at all.
    const root = sandboxArgv({ ...baseLaunch(), uid: 0, gid: 0, rootRequested: true });
    expect(root.join(" ")).toContain("--reuid=0 --regid=0");
    expect(root.join(" ")).toContain("--inh-caps=-all --ambient-caps=-all --bounding-set=-all");
    // seccompProfile unconfined: no filter.
    expect(sandboxArgv({ ...baseLaunch(), seccomp: false })).not.toContain("--seccomp");
    expect(() => sandboxArgv({ ...baseLaunch(), capabilities: ["net_raw; rm"] })).toThrow(
      /invalid capability/,
    );
  });

  it("REQ-062 refuses to sandbox when the agent is not root, naming the way out", () => {
    const found = findSandboxBinaries(1000);
    expect(found).toEqual({ problem: expect.stringMatching(/not root.*--process-sandbox off/) });
  });
});

function baseLaunch() {
  return {
    binaries: { setpriv: "/usr/bin/setpriv", bwrap: "/usr/bin/bwrap" },
    uid: 61184,
    gid: 61184,
    workDir: "/w",
    hiddenDirs: [],
    seccomp: true,
    argv: ["true"],
  };
}

import { describe, expect, it } from "vitest";
import { type HostView, planMounts } from "./launch.js";

/** A host with /run (two entries, one a symlink), /etc/app, and /var/run -> /run. */
function host(): HostView {
  const dirs = new Map<string, string[]>([
    ["/", ["run", "etc", "var"]],
    ["/run", ["lock", "shm-link"]],
    ["/run/lock", []],
    ["/etc", ["app", "hosts"]],
    ["/etc/app", []],
    ["/var", ["run"]],
  ]);
  const links = new Map([
    ["/var/run", "/run"],
    ["/run/shm-link", "/dev/shm"],
  ]);
  return {
    kind: (file) =>
      links.has(file)
        ? "symlink"
        : dirs.has(file)
          ? "dir"
          : file === "/etc/hosts"
            ? "other"
            : "missing",
    children: (dir) => [...(dirs.get(dir) ?? [])],
    readlink: (file) => links.get(file) ?? "",
  };
}

const context = { workDir: "/data/replicas/r1/work", hiddenDirs: ["/data"], host: host() };

describe("planMounts (REQ-063, ADR 0055)", () => {
  it("REQ-063: binds onto an existing dir directly and splits the deepest existing parent of a missing one", () => {
    const plan = planMounts(
      [
        { source: "/data/secrets-tmpfs/r1/db", target: "/run/secrets/db" },
        { source: "/data/replica-configs/r1/app", target: "/etc/app" },
      ],
      context,
    );
    expect(plan.mountArgs).toEqual([
      "--ro-bind",
      "/data/secrets-tmpfs/r1/db",
      "/run/secrets/db",
      "--ro-bind",
      "/data/replica-configs/r1/app",
      "/etc/app",
    ]);
    // /run is re-created: a tmpfs, its entries bound or linked back, then sealed read-only.
    expect(plan.splitArgs).toEqual([
      "--tmpfs",
      "/run",
      "--ro-bind-try",
      "/run/lock",
      "/run/lock",
      "--symlink",
      "/dev/shm",
      "/run/shm-link",
    ]);
    expect(plan.sealArgs).toEqual(["--remount-ro", "/run"]);
  });

  it("REQ-063: needs no split under /tmp or the work dir (writable inside)", () => {
    const plan = planMounts(
      [
        { source: "/s1", target: "/tmp/secrets/db" },
        { source: "/s2", target: "/data/replicas/r1/work/conf" },
      ],
      context,
    );
    expect(plan.splitArgs).toEqual([]);
    expect(plan.sealArgs).toEqual([]);
  });

  it("REQ-063: refuses a target under a symlink, under a file, directly under /, or in the agent's data dir", () => {
    expect(() => planMounts([{ source: "/s", target: "/var/run/secrets/db" }], context)).toThrow(
      "mountPath /var/run/secrets/db: /var/run is a symlink on this node; use the path it points to",
    );
    expect(() => planMounts([{ source: "/s", target: "/etc/hosts/x" }], context)).toThrow(
      /\/etc\/hosts is a file on this node/,
    );
    expect(() => planMounts([{ source: "/s", target: "/secrets/db" }], context)).toThrow(
      /the node has no \/secrets and the replica's \/ is read-only/,
    );
    expect(() => planMounts([{ source: "/s", target: "/data/x" }], context)).toThrow(
      /lies in the agent's data dir/,
    );
  });
});

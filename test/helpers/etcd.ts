/**
 * Real etcd clusters for tests (DESIGN.md decision 1: the etcd backend is tested against
 * Debian's `etcd-server`, never a fake). Members listen on free 127.0.0.1 ports, each
 * with its own data directory; everything is removed on stop(), and on a failed start.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { access, constants, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { freePort } from "./prometheus.js";

const HEALTH_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 3_000;
/** Kept from each member's log for error messages. */
const LOG_TAIL_CHARS = 4_000;

export interface EtcdCluster {
  /** Client endpoints, `HOST:PORT` (127.0.0.1 unless placed elsewhere), one per member. */
  readonly endpoints: string[];
  /** Stops every member and removes all data directories. Safe to call twice. */
  stop(): Promise<void>;
  /** SIGKILLs member `i` (its data directory stays) and waits until it has exited. */
  killMember(i: number): Promise<void>;
  /** Starts member `i` again on its data directory and waits until it answers healthy. */
  restartMember(i: number): Promise<void>;
}

interface Member {
  name: string;
  host: string;
  launcher: string[];
  clientPort: number;
  peerPort: number;
  dataDir: string;
  child?: ChildProcess;
  exited?: Promise<void>;
  log: string;
}

/** Why etcd tests cannot run here, or undefined when `etcd` is installed and runs. */
export async function etcdUnavailableReason(): Promise<string | undefined> {
  if (process.platform !== "linux") return "etcd tests need Linux";
  const version = await new Promise<{ code: number | null; output: string }>((resolve) => {
    let output = "";
    const child = spawn("etcd", ["--version"], { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("error", (err) => {
      clearTimeout(timer);
      resolve({ code: -1, output: err.message });
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
  if (version.code !== 0) {
    return (
      `etcd is not installed or not runnable (${version.output.trim().slice(0, 200)}); ` +
      "install it with `apt-get install -y etcd-server etcd-client` (scripts/install-test-deps.sh)"
    );
  }
  return undefined;
}

/** tmpfs makes etcd's fsyncs free; tests need no durability across machine crashes. */
async function dataRoot(): Promise<string> {
  try {
    await access("/dev/shm", constants.W_OK);
    return "/dev/shm";
  } catch {
    return tmpdir();
  }
}

/** Where one member runs, when not on 127.0.0.1 of this namespace. */
export interface EtcdPlacement {
  /** The address the member listens on and advertises, with ports 2379 (client) and 2380 (peer). */
  host: string;
  /** Program and leading arguments that start `etcd` there (e.g. nsenter into a test host). */
  launcher: string[];
}

export interface EtcdOptions {
  members: 1 | 3;
  /**
   * One placement per member, for members on their own addresses (test/helpers/netlab.ts);
   * without it every member listens on free ports of 127.0.0.1.
   */
  placement?: EtcdPlacement[];
}

/** Starts an etcd cluster of 1 or 3 members and waits until every member is healthy. */
export async function startEtcd(options: EtcdOptions): Promise<EtcdCluster> {
  // A port picked free can be taken by someone else before etcd binds it: pick again.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startEtcdOnce(options);
    } catch (err) {
      if (attempt >= 3 || !String(err).includes("address already in use")) throw err;
    }
  }
}

/** `count` distinct ports, free on 127.0.0.1 when picked. */
async function distinctFreePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

async function startEtcdOnce(options: EtcdOptions): Promise<EtcdCluster> {
  const root = await mkdtemp(path.join(await dataRoot(), "cloudless-etcd-"));
  const token = `cloudless-test-${randomBytes(6).toString("hex")}`;
  const members: Member[] = [];
  let stopped = false;

  const stopMember = async (member: Member, signal: NodeJS.Signals): Promise<void> => {
    const child = member.child;
    if (!child || !member.exited) return;
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    const escalate = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
    await member.exited;
    clearTimeout(escalate);
    member.child = undefined;
    member.exited = undefined;
  };

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.all(members.map((m) => stopMember(m, "SIGTERM")));
    await rm(root, { recursive: true, force: true });
  };

  try {
    if (options.placement && options.placement.length !== options.members) {
      throw new Error(`${options.placement.length} placements for ${options.members} etcd members`);
    }
    const ports = options.placement ? [] : await distinctFreePorts(options.members * 2);
    for (let i = 0; i < options.members; i++) {
      const name = `m${i}`;
      const placement = options.placement?.[i];
      members.push({
        name,
        host: placement?.host ?? "127.0.0.1",
        launcher: placement?.launcher ?? ["etcd"],
        clientPort: placement ? 2379 : (ports[2 * i] ?? 0),
        peerPort: placement ? 2380 : (ports[2 * i + 1] ?? 0),
        dataDir: path.join(root, name),
        log: "",
      });
    }
    const initialCluster = members.map((m) => `${m.name}=http://${m.host}:${m.peerPort}`).join(",");

    const launch = (member: Member): void => {
      const client = `http://${member.host}:${member.clientPort}`;
      const peer = `http://${member.host}:${member.peerPort}`;
      const [program, ...leading] = member.launcher;
      const child = spawn(
        program ?? "etcd",
        [
          ...leading,
          "--name",
          member.name,
          "--data-dir",
          member.dataDir,
          "--listen-client-urls",
          client,
          "--advertise-client-urls",
          client,
          "--listen-peer-urls",
          peer,
          "--initial-advertise-peer-urls",
          peer,
          "--initial-cluster",
          initialCluster,
          "--initial-cluster-state",
          "new",
          "--initial-cluster-token",
          token,
          // Short timeouts keep elections after a kill quick; leases get a 1 s minimum.
          "--heartbeat-interval",
          "50",
          "--election-timeout",
          "500",
          "--logger",
          "zap",
          "--log-outputs",
          "stderr",
          "--log-level",
          "warn",
        ],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      member.child = child;
      member.exited = new Promise((resolve) => {
        child.once("exit", () => resolve());
        child.once("error", (err) => {
          member.log += `\nspawn failed: ${err.message}`;
          resolve();
        });
      });
      child.stderr?.on("data", (chunk: Buffer) => {
        member.log = (member.log + chunk.toString()).slice(-LOG_TAIL_CHARS);
      });
      // A test runner that dies must not leave etcd behind.
      const killOnExit = () => child.kill("SIGKILL");
      process.once("exit", killOnExit);
      child.once("exit", () => process.removeListener("exit", killOnExit));
    };

    const waitHealthy = async (member: Member): Promise<void> => {
      const deadline = Date.now() + HEALTH_TIMEOUT_MS;
      let lastError = "no answer yet";
      for (;;) {
        const child = member.child;
        if (!child || child.exitCode !== null || child.signalCode !== null) {
          throw new Error(
            `etcd member ${member.name} exited (${child?.exitCode ?? child?.signalCode}) ` +
              `before it was healthy; log tail: ${member.log.trim().slice(-1_000)}`,
          );
        }
        try {
          // /health does a quorum read: it is true once the cluster has a leader.
          const response = await fetch(`http://${member.host}:${member.clientPort}/health`, {
            signal: AbortSignal.timeout(2_000),
          });
          const body = (await response.json()) as { health?: string };
          if (body.health === "true") return;
          lastError = JSON.stringify(body);
        } catch (err) {
          lastError = String(err);
        }
        if (Date.now() > deadline) {
          throw new Error(
            `etcd member ${member.name} on ${member.host}:${member.clientPort} was not healthy ` +
              `within ${HEALTH_TIMEOUT_MS} ms (${lastError}); log tail: ` +
              member.log.trim().slice(-1_000),
          );
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };

    for (const member of members) launch(member);
    await Promise.all(members.map(waitHealthy));

    const memberAt = (i: number): Member => {
      const member = members[i];
      if (!member) throw new Error(`no etcd member ${i}; the cluster has ${members.length}`);
      return member;
    };

    return {
      endpoints: members.map((m) => `${m.host}:${m.clientPort}`),
      stop,
      async killMember(i) {
        await stopMember(memberAt(i), "SIGKILL");
      },
      async restartMember(i) {
        const member = memberAt(i);
        if (stopped) throw new Error("the etcd cluster was stopped");
        await stopMember(member, "SIGTERM");
        launch(member);
        await waitHealthy(member);
      },
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

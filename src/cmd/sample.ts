import { execFile, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import {
  access,
  copyFile,
  mkdir,
  mkdtemp,
  readFile,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { clientsForConfig } from "../cli/clientCommand.js";
import { loadClientConfig } from "../client/config.js";
import { processStartTicks } from "../lib/pidLock.js";

/**
 * The quickstart's sample web workload: two replicas of a tiny web server, in a
 * container when the node has a container engine, as plain processes otherwise.
 */
export const sampleImage = "localhost/cloudless/hello:1";
const sampleName = "hello";

const podmanConf = `[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
`;

function run(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
  signal?: AbortSignal,
) {
  return new Promise<{ code: number; stderr: string }>((resolve) => {
    execFile(file, args, { env, timeout: timeoutMs, signal }, (error, _stdout, stderr) => {
      resolve({
        code: error ? (typeof error.code === "number" ? error.code : 1) : 0,
        stderr: String(stderr),
      });
    });
  });
}

function socketAnswers(socketPath: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(false);
    }, timeoutMs);
    socket.once("connect", () => {
      socket.write("GET /_ping HTTP/1.0\r\n\r\n");
    });
    socket.once("data", (data) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(data.toString().includes("OK"));
    });
    socket.once("error", () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}

/** A Podman API service that `up` started (now or before a kill -9) and must stop. */
export interface EngineService {
  pid: number;
  /** Started by an earlier `up` on this data dir that could not stop it, and reused. */
  reused: boolean;
  /** SIGTERM, then SIGKILL after a grace; forgets the service record. */
  stop(): Promise<void>;
}

export interface ContainerEngine {
  socketPath: string;
  /** Set when the service is `up`'s own: up stops it, after the containers are gone. */
  service?: EngineService;
  env: NodeJS.ProcessEnv;
}

/** Which Podman service `up` started on this data dir, so a later `up` can find it. */
interface ServiceRecord {
  pid: number;
  startTicks?: string;
  socketPath: string;
}

const serviceRecordFile = "podman-service.json";
const serviceStartTimeoutMs = 15_000;
const serviceStopGraceMs = 10_000;

async function readServiceRecord(dataDir: string): Promise<ServiceRecord | undefined> {
  try {
    const parsed = JSON.parse(
      await readFile(path.join(dataDir, serviceRecordFile), "utf8"),
    ) as Partial<ServiceRecord>;
    if (!Number.isInteger(parsed.pid) || typeof parsed.socketPath !== "string") return undefined;
    return parsed as ServiceRecord;
  } catch {
    return undefined;
  }
}

/** Gone, a zombie, or its pid now names another process (another start time). */
function processGone(pid: number, startTicks: string | undefined): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return true;
  }
  // comm (field 2) may hold spaces and parentheses; the fields resume after the last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  if (fields[0] === "Z" || fields[0] === "X") return true;
  return startTicks !== undefined && fields[19] !== startTicks;
}

async function waitGone(pid: number, startTicks: string | undefined, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (processGone(pid, startTicks)) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return processGone(pid, startTicks);
}

function serviceHandle(dataDir: string, record: ServiceRecord, reused: boolean): EngineService {
  return {
    pid: record.pid,
    reused,
    async stop() {
      const signal = (name: NodeJS.Signals) => {
        try {
          process.kill(record.pid, name);
        } catch {
          // ESRCH: it ended meanwhile.
        }
      };
      if (!processGone(record.pid, record.startTicks)) {
        signal("SIGTERM");
        if (!(await waitGone(record.pid, record.startTicks, serviceStopGraceMs))) {
          signal("SIGKILL");
          await waitGone(record.pid, record.startTicks, 5_000);
        }
      }
      await rm(path.join(dataDir, serviceRecordFile), { force: true });
      await rm(record.socketPath, { force: true });
    },
  };
}

/**
 * Finds a Docker-API socket, or starts Podman's API service when Podman is installed
 * but its service is not running. Returns undefined when there is no engine: the
 * node then runs workloads as processes.
 *
 * Never a second service on a socket that answers: a service an earlier `up` on this
 * data dir started (and could not stop: kill -9, OOM) is found through its record and
 * reused; one that no longer answers is stopped before a new one starts.
 */
export async function findOrStartEngine(dataDir: string): Promise<ContainerEngine | undefined> {
  const fromEnv = process.env.DOCKER_HOST?.startsWith("unix://")
    ? process.env.DOCKER_HOST.slice("unix://".length)
    : undefined;
  for (const candidate of [fromEnv, "/var/run/docker.sock", "/run/podman/podman.sock"]) {
    if (candidate && (await socketAnswers(candidate)))
      return { socketPath: candidate, env: process.env };
  }
  const confPath = path.join(dataDir, "containers.conf");
  await writeFile(confPath, podmanConf, { mode: 0o600 });
  const env = { ...process.env, CONTAINERS_CONF: process.env.CONTAINERS_CONF ?? confPath };
  const socketPath = path.join(dataDir, "podman.sock");
  const recorded = await readServiceRecord(dataDir);
  const ours =
    recorded &&
    recorded.socketPath === socketPath &&
    !processGone(recorded.pid, recorded.startTicks)
      ? recorded
      : undefined;
  if (await socketAnswers(socketPath)) {
    // Ours from before: reuse it (and stop it at the end). Anyone else's: use, never stop.
    return { socketPath, env, ...(ours ? { service: serviceHandle(dataDir, ours, true) } : {}) };
  }
  // Ours but not answering (hung): stop it cleanly rather than start a second beside it.
  if (ours) await serviceHandle(dataDir, ours, true).stop();
  const version = await run("podman", ["version", "--format", "{{.Client.Version}}"], env, 15_000);
  if (version.code !== 0) return undefined;
  await rm(socketPath, { force: true });
  await mkdir(path.join(dataDir, "logs"), { recursive: true, mode: 0o700 });
  const logFd = openSync(path.join(dataDir, "logs", "podman-service.log"), "a", 0o600);
  let child: ReturnType<typeof spawn>;
  try {
    // Its own session and process group: a terminal's Ctrl-C to `up` must not stop the
    // engine while the agent still removes its containers through it (issue 12).
    child = spawn("podman", ["system", "service", "--time=0", `unix://${socketPath}`], {
      env,
      stdio: ["ignore", logFd, logFd],
      detached: true,
    });
  } finally {
    closeSync(logFd);
  }
  child.on("error", () => undefined); // not installed: seen as an early exit below
  child.unref();
  const pid = child.pid;
  if (pid === undefined) return undefined;
  const startTicks = processStartTicks(pid);
  const record: ServiceRecord = { pid, ...(startTicks ? { startTicks } : {}), socketPath };
  await writeFile(path.join(dataDir, serviceRecordFile), `${JSON.stringify(record)}\n`, {
    mode: 0o600,
  });
  const service = serviceHandle(dataDir, record, false);
  const deadline = Date.now() + serviceStartTimeoutMs;
  while (Date.now() < deadline) {
    if (await socketAnswers(socketPath)) return { socketPath, service, env };
    if (child.exitCode !== null || child.signalCode !== null) break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await service.stop();
  return undefined;
}

/** Builds the sample image from a static busybox when it is not there yet. */
async function ensureSampleImage(engine: ContainerEngine, signal?: AbortSignal): Promise<boolean> {
  if ((await run("podman", ["image", "exists", sampleImage], engine.env, 15_000)).code === 0)
    return true;
  const busybox = ["/bin/busybox", "/usr/bin/busybox"];
  let source: string | undefined;
  for (const candidate of busybox) {
    if (
      await access(candidate).then(
        () => true,
        () => false,
      )
    )
      source = candidate;
  }
  if (!source) return false;
  const context = await mkdtemp(path.join(tmpdir(), "cloudless-hello-"));
  try {
    await mkdir(path.join(context, "bin"));
    await mkdir(path.join(context, "www"));
    await copyFile(source, path.join(context, "bin", "busybox"));
    for (const applet of ["sh", "httpd", "hostname"]) {
      await symlink("busybox", path.join(context, "bin", applet));
    }
    await writeFile(path.join(context, "www", "index.html"), "<h1>Hello from Cloudless</h1>\n");
    await writeFile(
      path.join(context, "Containerfile"),
      'FROM scratch\nCOPY bin /bin\nCOPY www /www\nCMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]\n',
    );
    const built = await run(
      "podman",
      ["build", "-q", "-t", sampleImage, context],
      engine.env,
      120_000,
      signal,
    );
    return built.code === 0;
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}

const processServer = `const http = require("node:http");
const port = Number(process.env.PORT || 8080);
http.createServer((request, response) => {
  response.setHeader("content-type", "text/plain");
  response.end("Hello from Cloudless (replica " + process.env.CLOUDLESS_REPLICA + ", pid " + process.pid + ")\\n");
}).listen(port, "127.0.0.1");`;

export function sampleSpec(driver: "container" | "process") {
  return {
    apiVersion: "cloudless/v1",
    kind: "Workload",
    metadata: { name: sampleName, namespace: "default" },
    spec: {
      ...(driver === "container"
        ? { image: sampleImage }
        : { command: [process.execPath, "-e", processServer] }),
      // On this machine only: a demo is not a service for the network (the API port
      // follows --host; the sample stays local either way).
      ports: [{ name: "http", containerPort: 8080, hostIP: "127.0.0.1" }],
      resources: { cpuMillicores: 100, memoryMiB: driver === "container" ? 16 : 128 },
      replicas: 2,
      readinessProbe: { http: { path: "/", port: "http" }, periodSeconds: 1 },
      terminationGracePeriodSeconds: 2,
    },
  };
}

/**
 * Applies the sample workload through the public API (as a user would) and waits
 * until a replica answers. Returns the URL that answered.
 */
export async function deploySample(options: {
  configPath: string;
  nodeDrivers: string[];
  engine: ContainerEngine | undefined;
  timeoutMs: number;
  /** Aborts the deployment (`up` was asked to stop meanwhile). */
  signal?: AbortSignal;
}): Promise<{ url: string; driver: "container" | "process" }> {
  const useContainer =
    options.nodeDrivers.includes("container") &&
    options.engine !== undefined &&
    (await ensureSampleImage(options.engine, options.signal));
  const driver = useContainer ? "container" : "process";
  const config = await loadClientConfig(options.configPath);
  // Every coordinator in the config, with failover (issue 4).
  const clients = clientsForConfig(config);
  await clients.workloads.applyWorkload({ specText: JSON.stringify(sampleSpec(driver)) });
  const deadline = Date.now() + options.timeoutMs;
  while (Date.now() < deadline) {
    options.signal?.throwIfAborted();
    const { workload } = await clients.workloads.getWorkload({
      name: sampleName,
      namespace: "default",
    });
    for (const replica of workload?.replicas ?? []) {
      const port = replica.hostPorts.http;
      if (!replica.ready || !port) continue;
      const url = `http://127.0.0.1:${port}/`;
      const answered = await fetch(url, { signal: AbortSignal.timeout(2000) })
        .then((response) => response.ok)
        .catch(() => false);
      if (answered) return { url, driver };
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  throw new Error(
    `the sample workload did not answer within ${options.timeoutMs / 1000} s; see \`cloudless workload describe ${sampleName}\``,
  );
}

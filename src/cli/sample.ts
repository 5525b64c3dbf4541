import { type ChildProcess, execFile, spawn } from "node:child_process";
import { access, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { loadClientConfig } from "../client/config.js";
import { clientsForConfig } from "./clientCommand.js";

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

function run(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number) {
  return new Promise<{ code: number; stderr: string }>((resolve) => {
    execFile(file, args, { env, timeout: timeoutMs }, (error, _stdout, stderr) => {
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

export interface ContainerEngine {
  socketPath: string;
  /** Set when `up` started the engine's API service itself. */
  service?: ChildProcess;
  env: NodeJS.ProcessEnv;
}

/**
 * Finds a Docker-API socket, or starts Podman's API service when Podman is installed
 * but its service is not running. Returns undefined when there is no engine: the
 * node then runs workloads as processes.
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
  const version = await run("podman", ["version", "--format", "{{.Client.Version}}"], env, 15_000);
  if (version.code !== 0) return undefined;
  const socketPath = path.join(dataDir, "podman.sock");
  await rm(socketPath, { force: true });
  const service = spawn("podman", ["system", "service", "--time=0", `unix://${socketPath}`], {
    env,
    stdio: "ignore",
  });
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (await socketAnswers(socketPath)) return { socketPath, service, env };
    if (service.exitCode !== null) return undefined;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  service.kill();
  return undefined;
}

/** Builds the sample image from a static busybox when it is not there yet. */
async function ensureSampleImage(engine: ContainerEngine): Promise<boolean> {
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
}): Promise<{ url: string; driver: "container" | "process" }> {
  const useContainer =
    options.nodeDrivers.includes("container") &&
    options.engine !== undefined &&
    (await ensureSampleImage(options.engine));
  const driver = useContainer ? "container" : "process";
  const config = await loadClientConfig(options.configPath);
  // Every coordinator in the config, with failover (issue 4).
  const clients = clientsForConfig(config);
  await clients.workloads.applyWorkload({ specText: JSON.stringify(sampleSpec(driver)) });
  const deadline = Date.now() + options.timeoutMs;
  while (Date.now() < deadline) {
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

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, existsSync, openSync } from "node:fs";
import { copyFile, cp, mkdir, mkdtemp, readFile, rm, stat, symlink } from "node:fs/promises";
import * as http from "node:http";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** The locally built test image (FROM scratch + static busybox); no registry is reachable here. */
export const testImage = "localhost/cloudless-test/busybox:1";

const fixturesDir = fileURLToPath(new URL("../fixtures", import.meta.url));
export const containersConfPath = path.join(fixturesDir, "containers.conf");
const imageContextDir = path.join(fixturesDir, "busybox-image");

/** The busybox applets the test image links; enough for httpd, shells and probes. */
const applets = [
  "sh",
  "httpd",
  "sleep",
  "echo",
  "cat",
  "ls",
  "wget",
  "nc",
  "env",
  "true",
  "false",
  "kill",
  "pwd",
  "id",
];

export interface PodmanService {
  available: true;
  /** Unix socket of a private `podman system service` speaking the Docker API. */
  socketPath: string;
  image: string;
  stop(): Promise<void>;
}

export type PodmanAvailability = PodmanService | { available: false; reason: string };

function run(
  file: string,
  args: string[],
  timeoutMs: number,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code =
          error === null ? 0 : typeof error.code === "number" ? error.code : error.killed ? 124 : 1;
        const detail = error !== null && typeof error.code === "string" ? `${error.code}` : "";
        resolve({ code, stdout: String(stdout), stderr: String(stderr) + detail });
      },
    );
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** GET /_ping on a unix socket, with a deadline. */
export function pingSocket(socketPath: string, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request(
      { socketPath, path: "/_ping", method: "GET", timeout: timeoutMs },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode === 200));
        res.on("error", () => resolve(false));
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", () => resolve(false));
    req.end();
  });
}

const lockDir = path.join(tmpdir(), "cloudless-test-podman-image.lock");
const staleLockMs = 5 * 60_000;

/**
 * A cross-process lock (mkdir is atomic) so parallel test files do not build the image
 * at the same time; a lock older than a build could take is treated as abandoned.
 */
async function withBuildLock<T>(fn: () => Promise<T>, timeoutMs = 180_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await mkdir(lockDir);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const info = await stat(lockDir).catch(() => undefined);
      if (info && Date.now() - info.mtimeMs > staleLockMs) {
        await rm(lockDir, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for the lock ${lockDir}`);
      await sleep(250);
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lockDir, { recursive: true, force: true });
  }
}

/** Identifies the build inputs, so an image built from an older fixture gets rebuilt. */
async function contextDigest(): Promise<string> {
  const hash = createHash("sha256");
  hash.update(applets.join(","));
  for (const file of ["Containerfile", "www/index.html"]) {
    hash.update(file);
    hash.update(await readFile(path.join(imageContextDir, file)));
  }
  return hash.digest("hex").slice(0, 16);
}

const digestLabel = "cloudless.test.context";

async function buildImage(): Promise<string | undefined> {
  const digest = await contextDigest();
  return withBuildLock(async () => {
    // Idempotent: another test file (or an earlier run) may have built it already.
    const existing = await run(
      "podman",
      ["image", "inspect", "--format", `{{index .Labels "${digestLabel}"}}`, testImage],
      30_000,
    );
    if (existing.code === 0 && existing.stdout.trim() === digest) return undefined;
    // Built from an older fixture: drop it rather than leave it dangling (fails harmlessly
    // while a container still uses it).
    if (existing.code === 0) await run("podman", ["rmi", testImage], 30_000);
    const busybox = ["/bin/busybox", "/usr/bin/busybox"].find((candidate) => existsSync(candidate));
    if (!busybox) return "busybox-static is not installed (no /bin/busybox)";
    const context = await mkdtemp(path.join(tmpdir(), "cloudless-image-"));
    try {
      await cp(imageContextDir, context, { recursive: true });
      await mkdir(path.join(context, "bin"));
      await copyFile(busybox, path.join(context, "bin", "busybox"));
      for (const applet of applets) await symlink("busybox", path.join(context, "bin", applet));
      const built = await run(
        "podman",
        [
          "build",
          "--quiet",
          "--label",
          `${digestLabel}=${digest}`,
          "-t",
          testImage,
          "-f",
          path.join(context, "Containerfile"),
          context,
        ],
        180_000,
      );
      if (built.code !== 0) return `podman build failed: ${built.stderr.trim()}`;
      return undefined;
    } finally {
      await rm(context, { recursive: true, force: true });
    }
  });
}

async function startService(): Promise<PodmanService | { available: false; reason: string }> {
  const dir = await mkdtemp(path.join(tmpdir(), "cloudless-podman-"));
  const socketPath = path.join(dir, "podman.sock");
  const logPath = path.join(dir, "service.log");
  const logFd = openSync(logPath, "a");
  let child: ChildProcess;
  try {
    child = spawn("podman", ["system", "service", "--time=0", `unix://${socketPath}`], {
      stdio: ["ignore", logFd, logFd],
      env: process.env,
    });
  } finally {
    closeSync(logFd);
  }
  let exited = false;
  child.on("exit", () => {
    exited = true;
  });
  child.on("error", () => {
    exited = true;
  });

  const stop = async (): Promise<void> => {
    if (!exited) {
      const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await gone;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (exited) break;
    if (existsSync(socketPath) && (await pingSocket(socketPath))) {
      return { available: true, socketPath, image: testImage, stop };
    }
    await sleep(100);
  }
  const log = await readFile(logPath, "utf8").catch(() => "");
  await stop();
  return {
    available: false,
    reason: `podman system service did not answer on ${socketPath}: ${log.trim().slice(-500)}`,
  };
}

/**
 * Makes podman usable for a test file: checks it works as root, points it at the test
 * containers.conf, builds the test image once and starts a private API service.
 * Returns a reason instead when the tests must be skipped.
 */
export async function ensurePodman(): Promise<PodmanAvailability> {
  if (process.platform !== "linux") return { available: false, reason: "podman tests need Linux" };
  if (process.getuid?.() !== 0) return { available: false, reason: "podman tests need root" };
  process.env.CONTAINERS_CONF = containersConfPath;
  const version = await run("podman", ["version", "--format", "{{.Client.Version}}"], 30_000);
  if (version.code !== 0) {
    return { available: false, reason: `podman is not usable: ${version.stderr.trim()}` };
  }
  const buildError = await buildImage();
  if (buildError) return { available: false, reason: buildError };
  return startService();
}

/** Runs the podman CLI (with the test containers.conf) for assertions and cleanup. */
export function podman(args: string[], timeoutMs = 30_000) {
  process.env.CONTAINERS_CONF = containersConfPath;
  return run("podman", args, timeoutMs);
}

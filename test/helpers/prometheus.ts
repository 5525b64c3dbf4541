import { type ChildProcess, spawn } from "node:child_process";
import { access, constants, writeFile } from "node:fs/promises";
import * as https from "node:https";
import * as net from "node:net";
import * as path from "node:path";
import { stringify } from "yaml";
import { waitFor } from "./processes.js";

/** The absolute path of an executable on PATH, or undefined. */
export async function findExecutable(name: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** A port free on 127.0.0.1 right now (the OS picks it). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface TlsClient {
  caPem: string;
  certPem?: string;
  keyPem?: string;
  /** The name the server certificate is checked against (SNI and hostname check). */
  servername: string;
}

/** An HTTPS GET; `error` (status 0) when the TLS handshake or the exchange failed. */
export function httpsGet(
  url: string,
  client: TlsClient,
): Promise<{ status: number; body: string; error?: string }> {
  return new Promise((resolve) => {
    let answered = false;
    const request = https.request(
      url,
      {
        method: "GET",
        agent: false,
        ca: client.caPem,
        ...(client.certPem ? { cert: client.certPem } : {}),
        ...(client.keyPem ? { key: client.keyPem } : {}),
        servername: client.servername,
        rejectUnauthorized: true,
        timeout: 15_000,
      },
      (response) => {
        answered = true;
        const chunks: Buffer[] = [];
        const done = () =>
          resolve({
            status: response.statusCode ?? 0,
            body: Buffer.concat(chunks).toString("utf8"),
          });
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", done);
        response.on("error", (error) => resolve({ status: 0, body: "", error: error.message }));
      },
    );
    request.on("timeout", () => request.destroy(new Error("HTTPS request timed out")));
    request.on("error", (error) => {
      if (!answered) resolve({ status: 0, body: "", error: error.message });
    });
    request.end();
  });
}

/** Runs a command with `input` on stdin; resolves with its exit code and output. */
export function runWithInput(
  command: string,
  args: string[],
  input: string,
  timeoutMs = 30_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${command} ${args.join(" ")} did not finish in ${timeoutMs} ms`));
    }, timeoutMs);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    child.stdin.end(input);
  });
}

export interface ScrapeTarget {
  job: string;
  /** host:port */
  address: string;
  /** The name the target's certificate must carry (tls_config.server_name). */
  serverName: string;
}

export interface PrometheusTarget {
  labels: Record<string, string>;
  health: string;
  lastError: string;
  scrapeUrl: string;
}

/**
 * A real Prometheus (Debian's `prometheus` binary) run as a child process with its own
 * config and TSDB directory, scraping Cloudless over HTTPS with a client certificate.
 */
export class PrometheusProcess {
  private child: ChildProcess | undefined;
  private output = "";
  private exited: Promise<void> | undefined;

  private constructor(
    readonly url: string,
    private readonly binary: string,
    private readonly args: string[],
  ) {}

  /**
   * Writes the config (client certificate files 0600 in `dir`) and starts Prometheus on
   * a free loopback port. Scrapes every second.
   */
  static async start(options: {
    binary: string;
    dir: string;
    caPem: string;
    certPem: string;
    keyPem: string;
    targets: ScrapeTarget[];
  }): Promise<PrometheusProcess> {
    const { dir } = options;
    const files = {
      ca: path.join(dir, "ca.pem"),
      cert: path.join(dir, "client.pem"),
      key: path.join(dir, "client-key.pem"),
    };
    await writeFile(files.ca, options.caPem, { mode: 0o600 });
    await writeFile(files.cert, options.certPem, { mode: 0o600 });
    await writeFile(files.key, options.keyPem, { mode: 0o600 });
    const config = {
      global: { scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" },
      scrape_configs: options.targets.map((target) => ({
        job_name: target.job,
        scheme: "https",
        metrics_path: "/metrics",
        tls_config: {
          ca_file: files.ca,
          cert_file: files.cert,
          key_file: files.key,
          server_name: target.serverName,
          insecure_skip_verify: false,
        },
        static_configs: [{ targets: [target.address] }],
      })),
    };
    const configPath = path.join(dir, "prometheus.yml");
    await writeFile(configPath, stringify(config), { mode: 0o600 });
    const port = await freePort();
    const prometheus = new PrometheusProcess(`http://127.0.0.1:${port}`, options.binary, [
      `--config.file=${configPath}`,
      `--storage.tsdb.path=${path.join(dir, "tsdb")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ]);
    prometheus.spawn();
    await waitFor(
      "Prometheus to answer",
      async () => {
        if (!prometheus.running) throw new Error(`prometheus exited: ${prometheus.output}`);
        const response = await fetch(`${prometheus.url}/-/ready`);
        return response.ok;
      },
      30_000,
      100,
    );
    return prometheus;
  }

  private spawn(): void {
    const child = spawn(this.binary, this.args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    const collect = (chunk: Buffer) => {
      this.output = (this.output + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on("data", collect);
    child.stderr?.on("data", collect);
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && !this.child.signalCode;
  }

  /** What Prometheus logged (the last 20 kB), for failure messages. */
  get log(): string {
    return this.output;
  }

  async targets(): Promise<PrometheusTarget[]> {
    const response = await fetch(`${this.url}/api/v1/targets?state=active`);
    const body = (await response.json()) as { data: { activeTargets: PrometheusTarget[] } };
    return body.data.activeTargets;
  }

  /** An instant query; each result series' labels and value. */
  async query(expression: string): Promise<{ metric: Record<string, string>; value: number }[]> {
    const response = await fetch(
      `${this.url}/api/v1/query?query=${encodeURIComponent(expression)}`,
    );
    const body = (await response.json()) as {
      status: string;
      error?: string;
      data: { result: { metric: Record<string, string>; value: [number, string] }[] };
    };
    if (body.status !== "success") throw new Error(`query ${expression} failed: ${body.error}`);
    return body.data.result.map((series) => ({
      metric: series.metric,
      value: Number(series.value[1]),
    }));
  }

  /** Stops Prometheus (SIGTERM, then SIGKILL after a grace period). */
  async stop(graceMs = 5_000): Promise<void> {
    if (!this.child || !this.running) return;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child?.kill("SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

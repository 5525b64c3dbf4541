import * as path from "node:path";
import {
  type ManagedProcess,
  ManagedProcess as Proc,
  type RunResult,
  runCli,
  type TestResources,
  waitFor,
} from "./processes.js";

export interface NodeJson {
  name: string;
  uid: string;
  status: string;
  statusReason: string;
  region: string;
  zone: string;
  labels: Record<string, string>;
  capacity: {
    cpuMillicores: number;
    memoryMiB: number;
    storageGiB: number;
    iopsClass: string;
    measuredIops: number;
    egressMbps: number;
    egressSource: string;
  };
  enrollments: number;
  certExpiresAt: string;
  cordoned: boolean;
  draining: boolean;
}

export interface EventJson {
  id: string;
  type: string;
  subject: string;
  reason: string;
  message: string;
  category: string;
  actor: string;
  attributes?: Record<string, string>;
}

/** A coordinator process on loopback plus helpers to drive it through the CLI. */
export class TestCluster {
  coordinator!: ManagedProcess;
  url = "";
  port = 0;
  readonly agents = new Map<string, ManagedProcess>();

  constructor(
    readonly resources: TestResources,
    readonly dataDir: string,
    readonly coordinatorFlags: string[] = [],
    /** Extra environment of the coordinator process. */
    readonly coordinatorEnv: NodeJS.ProcessEnv = {},
  ) {}

  static async start(
    resources: TestResources,
    flags: string[] = [],
    env: NodeJS.ProcessEnv = {},
  ): Promise<TestCluster> {
    const dir = await resources.tempDir("cloudless-coord-");
    const cluster = new TestCluster(resources, dir, flags, env);
    await cluster.startCoordinator(0);
    return cluster;
  }

  get configPath(): string {
    return path.join(this.dataDir, "admin.conf");
  }

  /** Starts (or restarts) the coordinator; port 0 picks a free port the first time. */
  async startCoordinator(port = this.port): Promise<void> {
    this.coordinator = this.resources.track(
      new Proc(
        [
          "coordinator",
          "--data-dir",
          this.dataDir,
          "--host",
          "127.0.0.1",
          "--port",
          String(port),
          "--log-level",
          "info",
          ...this.coordinatorFlags,
        ],
        this.coordinatorEnv,
      ),
    );
    const url = await waitFor(
      "the coordinator to listen",
      () => {
        if (!this.coordinator.running) {
          throw new Error(`coordinator exited: ${this.coordinator.stderr}`);
        }
        return /listening on (https:\/\/\S+)/.exec(this.coordinator.stderr)?.[1];
      },
      20_000,
      50,
    );
    this.url = url;
    this.port = Number(new URL(url).port);
  }

  cli(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs?: number): Promise<RunResult> {
    return runCli(args, {
      env: { CLOUDLESS_CONFIG: this.configPath, ...env },
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    });
  }

  async cliJson<T>(args: string[]): Promise<T> {
    const result = await this.cli([...args, "-o", "json"]);
    if (result.code !== 0) {
      throw new Error(`cloudless ${args.join(" ")} failed (${result.code}): ${result.stderr}`);
    }
    return JSON.parse(result.stdout) as T;
  }

  async createToken(ttl = "10m"): Promise<string> {
    const result = await this.cli(["token", "create", "--ttl", ttl]);
    if (result.code !== 0) throw new Error(`token create failed: ${result.stderr}`);
    return result.stdout.trim();
  }

  async nodes(): Promise<NodeJson[]> {
    return this.cliJson<NodeJson[]>(["node", "list"]);
  }

  async node(name: string): Promise<NodeJson | undefined> {
    return (await this.nodes()).find((node) => node.name === name);
  }

  async events(): Promise<EventJson[]> {
    return this.cliJson<EventJson[]>(["events", "--limit", "10000"]);
  }

  /** Starts an agent process; with a token on first start, without one afterwards. */
  async startAgent(
    name: string,
    options: {
      token?: string;
      zone?: string;
      region?: string;
      dataDir?: string;
      extra?: string[];
      env?: NodeJS.ProcessEnv;
    } = {},
  ): Promise<ManagedProcess> {
    const dataDir = options.dataDir ?? (await this.agentDir(name));
    const args = [
      "agent",
      "--join",
      this.url,
      "--name",
      name,
      "--data-dir",
      dataDir,
      "--log-level",
      "info",
      ...(options.zone ? ["--zone", options.zone] : []),
      ...(options.region ? ["--region", options.region] : []),
      // Many test agents share this host: free ports for the mesh and the name server,
      // and no VIP table (one per host); a test that wants them passes flags in extra.
      ...["--mesh-port", "0", "--dns-port", "0", "--service-vips", "off"],
      ...(options.extra ?? []),
    ];
    const agent = this.resources.track(
      new Proc(args, {
        ...options.env,
        ...(options.token ? { CLOUDLESS_TOKEN: options.token } : {}),
      }),
    );
    this.agents.set(name, agent);
    return agent;
  }

  private readonly agentDirs = new Map<string, string>();

  async agentDir(name: string): Promise<string> {
    let dir = this.agentDirs.get(name);
    if (!dir) {
      dir = await this.resources.tempDir(`cloudless-agent-${name}-`);
      this.agentDirs.set(name, dir);
    }
    return dir;
  }

  async waitForStatus(name: string, status: string, timeoutMs = 20_000): Promise<NodeJson> {
    return waitFor(
      `node ${name} to be ${status}`,
      async () => {
        const node = await this.node(name);
        return node?.status === status ? node : undefined;
      },
      timeoutMs,
      150,
    );
  }
}

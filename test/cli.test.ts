import { chmod, copyFile, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { type EventJson, type NodeJson, TestCluster } from "./helpers/cluster.js";
import {
  ManagedProcess,
  type RunResult,
  runCli,
  TestResources,
  waitFor,
} from "./helpers/processes.js";
import { lines } from "./helpers/system.js";

const nodeName = "cli-node";

/** A user error: non-zero exit, exactly one line on stderr, starting with "error:". */
function expectOneLineError(result: RunResult, pattern?: RegExp): void {
  expect(result.code, `stdout: ${result.stdout}\nstderr: ${result.stderr}`).not.toBe(0);
  expect(result.stderr).toMatch(/^error: [^\n]+\n$/);
  if (pattern) expect(result.stderr).toMatch(pattern);
}

/** A commander usage error: non-zero exit, an "error:" line, no stack trace. */
function expectUsageError(result: RunResult): void {
  expect(result.code).not.toBe(0);
  expect(result.stderr).toMatch(/^error: /m);
  expect(result.stderr).not.toMatch(/^\s+at /m);
}

/** Removes fields that change from one call to the next (heartbeat time). */
function stable(node: Record<string, unknown>): Record<string, unknown> {
  const { lastHeartbeatAt: _heartbeat, ...rest } = node;
  return rest;
}

describe("REQ-072 CLI against a one-node cluster", () => {
  const resources = new TestResources();
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start(resources);
    await cluster.startAgent(nodeName, {
      token: await cluster.createToken(),
      region: "eu-west",
      zone: "eu-west-1a",
      extra: ["--label", "disk=ssd", "--label", "tier=edge"],
    });
    await cluster.waitForStatus(nodeName, "Ready", 40_000);
  });
  afterAll(async () => {
    await resources.cleanup();
  });

  it("REQ-072 node list -o json|yaml gives name, status, region, zone, labels and capacity; the table has a header and a row", async () => {
    const [json, yaml, table, alias] = await Promise.all([
      cluster.cli(["node", "list", "-o", "json"]),
      cluster.cli(["node", "list", "-o", "yaml"]),
      cluster.cli(["node", "list"]),
      cluster.cli(["node", "ls"]),
    ]);
    expect(json.code).toBe(0);
    expect(json.stderr).toBe("");
    const nodes = JSON.parse(json.stdout) as NodeJson[];
    expect(nodes).toHaveLength(1);
    const node = nodes[0] as NodeJson;
    expect(node).toMatchObject({
      name: nodeName,
      status: "Ready",
      region: "eu-west",
      zone: "eu-west-1a",
      labels: { disk: "ssd", tier: "edge" },
    });
    for (const field of ["cpuMillicores", "memoryMiB", "storageGiB", "egressMbps"] as const) {
      expect(typeof node.capacity[field], field).toBe("number");
      expect(node.capacity[field], field).toBeGreaterThan(0);
    }

    expect(yaml.code).toBe(0);
    const fromYaml = parseYaml(yaml.stdout) as Record<string, unknown>[];
    expect(fromYaml.map(stable)).toEqual(
      (nodes as unknown as Record<string, unknown>[]).map(stable),
    );

    expect(table.code).toBe(0);
    const [header, ...rows] = lines(table.stdout);
    expect(header?.split(/\s+/)).toEqual([
      "NAME",
      "STATUS",
      "REGION",
      "ZONE",
      "CPU",
      "MEMORY",
      "STORAGE",
      "EGRESS",
      "AGE",
    ]);
    expect(rows).toHaveLength(1);
    expect(rows[0]?.split(/\s+/).slice(0, 5)).toEqual([
      nodeName,
      "Ready",
      "eu-west",
      "eu-west-1a",
      `${node.capacity.cpuMillicores}m`,
    ]);
    // `ls` is an alias of `list`.
    expect(alias.stdout.split("\n")[0]).toBe(header);
  });

  it("REQ-072 node get NAME prints one row as a table and the node as JSON; an unknown name is one error line", async () => {
    const [table, node, yaml, unknown] = await Promise.all([
      cluster.cli(["node", "get", nodeName]),
      cluster.cliJson<NodeJson>(["node", "get", nodeName]),
      cluster.cli(["node", "get", nodeName, "-o", "yaml"]),
      cluster.cli(["node", "get", "no-such-node"]),
    ]);
    expect(table.code).toBe(0);
    const [header, ...rows] = lines(table.stdout);
    expect(header?.split(/\s+/).slice(0, 2)).toEqual(["NAME", "STATUS"]);
    expect(rows).toHaveLength(1);
    expect(rows[0]?.split(/\s+/).slice(0, 2)).toEqual([nodeName, "Ready"]);

    expect(node.name).toBe(nodeName);
    expect(node.status).toBe("Ready");
    expect(node.labels).toEqual({ disk: "ssd", tier: "edge" });
    expect(Date.parse(node.certExpiresAt)).toBeGreaterThan(0);

    expect(stable(parseYaml(yaml.stdout) as Record<string, unknown>)).toEqual(
      stable(node as unknown as Record<string, unknown>),
    );

    expectOneLineError(unknown, /not found/);
  });

  it("REQ-072 REQ-071 events -o json lists membership events; --type filters; --watch prints new events as they happen", async () => {
    const [events, joined, yaml, table] = await Promise.all([
      cluster.events(),
      cluster.cliJson<EventJson[]>(["events", "--type", "NodeJoined"]),
      cluster.cli(["events", "--type", "NodeJoined", "-o", "yaml"]),
      cluster.cli(["events"]),
    ]);
    const types = events.filter((e) => e.subject === `node/${nodeName}`).map((e) => e.type);
    expect(types).toEqual(expect.arrayContaining(["EnrollmentAccepted", "NodeJoined"]));

    expect(joined.length).toBeGreaterThanOrEqual(1);
    expect(joined.every((e) => e.type === "NodeJoined")).toBe(true);
    expect(joined.map((e) => e.subject)).toContain(`node/${nodeName}`);

    expect(yaml.code).toBe(0);
    expect(parseYaml(yaml.stdout)).toEqual(joined);

    expect(lines(table.stdout)[0]?.split(/\s+/)).toEqual([
      "ID",
      "TIME",
      "TYPE",
      "SUBJECT",
      "REASON",
      "MESSAGE",
    ]);

    const watch = resources.track(
      new ManagedProcess(["events", "--watch", "-o", "json"], {
        CLOUDLESS_CONFIG: cluster.configPath,
      }),
    );
    try {
      // Complete lines only: a chunk may end in the middle of one.
      const parsedLines = () =>
        lines(watch.stdout.slice(0, watch.stdout.lastIndexOf("\n") + 1)).map(
          (line) => JSON.parse(line) as EventJson,
        );
      // The backlog comes first, one JSON object per line.
      await waitFor("the watch to print the backlog", () => {
        if (!watch.running) throw new Error(`events --watch exited: ${watch.stderr}`);
        return parsedLines().some((e) => e.type === "NodeJoined");
      });
      const backlog = parsedLines().length;
      const cordon = await cluster.cli(["node", "cordon", nodeName]);
      expect(cordon.code).toBe(0);
      const cordoned = await waitFor("the watch to print NodeCordoned", () =>
        parsedLines()
          .slice(backlog)
          .find((e) => e.type === "NodeCordoned" && e.subject === `node/${nodeName}`),
      );
      expect(cordoned.id).not.toBe("");
      expect((await cluster.cli(["node", "uncordon", nodeName])).code).toBe(0);
      await waitFor("the watch to print NodeUncordoned", () =>
        parsedLines()
          .slice(backlog)
          .some((e) => e.type === "NodeUncordoned" && e.subject === `node/${nodeName}`),
      );
      expect(watch.running).toBe(true);
      expect(watch.stderr).toBe("");
    } finally {
      await watch.stop(3_000);
    }
  });

  it("REQ-072 node cordon / uncordon / drain change the STATUS column and JSON flags and are recorded as events", async () => {
    const before = await cluster.events();
    const lastId = Math.max(0, ...before.map((e) => Number(e.id)));
    /** The STATUS column of `node get` (table) and the node as `node get -o json` shows it. */
    const observe = async () => {
      const [table, node] = await Promise.all([
        cluster.cli(["node", "get", nodeName]),
        cluster.cliJson<NodeJson>(["node", "get", nodeName]),
      ]);
      expect(table.code).toBe(0);
      return { status: lines(table.stdout)[1]?.split(/\s+/)[1], node };
    };

    const cordon = await cluster.cli(["node", "cordon", nodeName]);
    expect(cordon.code).toBe(0);
    expect(cordon.stdout).toBe(`node/${nodeName} cordoned\n`);
    const cordoned = await observe();
    expect(cordoned.status).toBe("Ready,SchedulingDisabled");
    expect(cordoned.node).toMatchObject({ status: "Ready", cordoned: true, draining: false });

    const uncordon = await cluster.cliJson<NodeJson>(["node", "uncordon", nodeName]);
    expect(uncordon).toMatchObject({ name: nodeName, cordoned: false, draining: false });
    expect((await observe()).status).toBe("Ready");

    const drain = await cluster.cli(["node", "drain", nodeName]);
    expect(drain.code).toBe(0);
    expect(drain.stdout).toBe(`node/${nodeName} drained\n`);
    const drained = await observe();
    expect(drained.status).toBe("Ready,Draining");
    expect(drained.node).toMatchObject({ status: "Ready", cordoned: true, draining: true });

    const after = (await cluster.events()).filter(
      (e) => Number(e.id) > lastId && e.subject === `node/${nodeName}`,
    );
    expect(after.map((e) => e.type)).toEqual(["NodeCordoned", "NodeUncordoned", "NodeDrained"]);
    expect(after.every((e) => e.actor === "admin/admin")).toBe(true);

    // Back to normal for whatever runs next.
    expect((await cluster.cli(["node", "uncordon", nodeName])).code).toBe(0);
  });

  it("REQ-072 REQ-001 token create prints one token; token list never shows its secret; a deleted token no longer enrolls", async () => {
    const created = await cluster.cli(["token", "create", "--ttl", "30m"]);
    expect(created.code).toBe(0);
    const tokenLines = lines(created.stdout);
    expect(tokenLines).toHaveLength(1);
    const token = tokenLines[0] as string;
    const match = /^CL1::[0-9a-f]{64}::([0-9a-f]{10})\.([A-Za-z0-9_-]{43})$/.exec(token);
    expect(match).not.toBeNull();
    const [, id, secret] = match as unknown as [string, string, string];
    // The hint goes to stderr, without the secret.
    expect(created.stderr).toContain(id);
    expect(created.stderr).not.toContain(secret);

    const [list, table, yaml] = await Promise.all([
      cluster.cli(["token", "list", "-o", "json"]),
      cluster.cli(["token", "list"]),
      cluster.cli(["token", "list", "-o", "yaml"]),
    ]);
    expect(list.code).toBe(0);
    const tokens = JSON.parse(list.stdout) as { id: string; expiresAt: string }[];
    const listed = tokens.find((t) => t.id === id);
    expect(listed).toBeDefined();
    // Expires about 30 minutes after creation (checked against the creation time).
    const entry = listed as { id: string; expiresAt: string; createdAt?: string };
    expect(Date.parse(entry.expiresAt) - Date.parse(entry.createdAt ?? "")).toBe(30 * 60_000);
    for (const output of [list.stdout, table.stdout, yaml.stdout]) {
      expect(output).toContain(id);
      expect(output).not.toContain(secret);
    }

    const deleted = await cluster.cli(["token", "delete", id]);
    expect(deleted.code).toBe(0);
    expect(deleted.stdout).toBe(`token/${id} deleted\n`);
    const agentDir = await resources.tempDir("cloudless-agent-revoked-");
    const [remaining, deleteAgain, join] = await Promise.all([
      cluster.cliJson<{ id: string }[]>(["token", "list"]),
      cluster.cli(["token", "delete", id]),
      runCli(["agent", "--join", cluster.url, "--name", "revoked", "--data-dir", agentDir], {
        env: { CLOUDLESS_TOKEN: token },
      }),
    ]);
    expect(remaining.map((t) => t.id)).not.toContain(id);
    expectOneLineError(deleteAgain, /not found/);
    expectOneLineError(join, /token is not valid/);
    const [nodes, events] = await Promise.all([cluster.nodes(), cluster.events()]);
    expect(nodes.map((n) => n.name)).not.toContain("revoked");
    const refused = events.filter((e) => e.type === "EnrollmentRefused");
    expect(refused.map((e) => e.subject)).toContain("node/revoked");
  });

  it("REQ-072 bad client input fails with one error line and a non-zero exit, never a stack trace", async () => {
    const tokensBefore = await cluster.cliJson<{ id: string }[]>(["token", "list"]);
    const cases: [string[], RegExp][] = [
      [["node", "list", "-o", "xml"], /-o xml/],
      [["events", "-o", "xml"], /-o xml/],
      [["token", "create", "--ttl", "bogus"], /--ttl bogus/],
      [["token", "create", "--ttl", "0s"], /--ttl 0s/],
      [["events", "--since", "yesterday"], /--since yesterday/],
    ];
    const [results, unknown, unknownSub] = await Promise.all([
      Promise.all(cases.map(([args]) => cluster.cli(args))),
      cluster.cli(["frobnicate"]),
      cluster.cli(["node", "frobnicate"]),
    ]);
    results.forEach((result, index) => {
      expectOneLineError(result, (cases[index] as [string[], RegExp])[1]);
    });
    expectUsageError(unknown);
    expectUsageError(unknownSub);
    // The refused `token create` calls created nothing.
    expect(await cluster.cliJson<{ id: string }[]>(["token", "list"])).toEqual(tokensBefore);
  });

  it("REQ-072 bad client configs fail with one error line that says what is wrong", async () => {
    const dir = await resources.tempDir("cloudless-configs-");
    const missing = path.join(dir, "missing.conf");
    const open = path.join(dir, "open.conf");
    await copyFile(cluster.configPath, open);
    await chmod(open, 0o644);
    const notYaml = path.join(dir, "garbage.conf");
    await writeFile(notYaml, "{{{ : [ this is not yaml\n", { mode: 0o600 });
    const notConfig = path.join(dir, "scalar.conf");
    await writeFile(notConfig, "just a string\n", { mode: 0o600 });

    const cases: { args: string[]; config: string; error: RegExp }[] = [
      { args: [], config: missing, error: /no client config at .*missing\.conf/ },
      // --config wins over the environment.
      { args: ["--config", missing], config: cluster.configPath, error: /missing\.conf/ },
      { args: [], config: open, error: /readable by others.*chmod 600/ },
      { args: [], config: notYaml, error: /not valid YAML/ },
      { args: [], config: notConfig, error: /client config .*scalar\.conf/ },
    ];
    const results = await Promise.all(
      cases.map(({ args, config }) =>
        runCli([...args, "node", "list"], { env: { CLOUDLESS_CONFIG: config } }),
      ),
    );
    results.forEach((result, index) => {
      expectOneLineError(result, cases[index]?.error);
    });
  });
});

describe("REQ-072 CLI errors without a running cluster", () => {
  let resources: TestResources;

  beforeEach(() => {
    resources = new TestResources();
  });
  afterEach(async () => {
    await resources.cleanup();
  });

  it("REQ-072 a stopped coordinator is reported as unreachable in one line", async () => {
    const cluster = await TestCluster.start(resources);
    expect((await cluster.cli(["node", "list"])).code).toBe(0);
    await cluster.coordinator.stop();
    const results = await Promise.all(
      [["node", "list"], ["events"], ["token", "list"]].map((args) => cluster.cli(args)),
    );
    for (const result of results) {
      expectOneLineError(result, /cannot reach the coordinator at https:\/\/127\.0\.0\.1:\d+/);
    }
  });

  it("REQ-072 bad daemon flags fail with one error line and a non-zero exit", async () => {
    const dir = await resources.tempDir("cloudless-daemons-");
    // Each case gets its own (empty) data dir; none may bind a fixed port.
    const local = ["--host", "127.0.0.1", "--port", "0"];
    const cases: [string[], RegExp][] = [
      [["agent"], /has not joined a cluster yet.*--join/],
      [
        ["agent", "--join", "http://x", "--token", "t"],
        /--join http:\/\/x: expected an https:\/\/ URL/,
      ],
      [["agent", "--join", "http://x"], /--join http:\/\/x/],
      [["coordinator", "--port", "99999"], /--port 99999/],
      [["coordinator", ...local, "--log-level", "loud"], /--log-level loud/],
      [["coordinator", ...local, "--node-cert-ttl", "soon"], /--node-cert-ttl soon/],
    ];
    const results = await Promise.all(
      cases.map(([args], index) =>
        runCli([...args, "--data-dir", path.join(dir, `case-${index}`)]),
      ),
    );
    results.forEach((result, index) => {
      expectOneLineError(result, (cases[index] as [string[], RegExp])[1]);
    });
  });
});

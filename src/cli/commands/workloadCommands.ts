import { readFile, stat } from "node:fs/promises";
import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { CloudlessError } from "../../api/errors.js";
import {
  type Workload,
  WorkloadSchema,
  type WorkloadStatus,
  WorkloadView,
} from "../../api/gen/cloudless/v1/workload_pb.js";
import { limitRef, limits, specTooLargeMessage } from "../../api/limits.js";
import { formatSpecErrors, parseWorkloadText } from "../../api/workload/parse.js";
import { formatAge, parseDurationMs } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { parseOutputFormat, printResult, renderTable } from "../output.js";
import { action, fail } from "../run.js";

interface NamespaceFlag {
  namespace: string;
}

const workloadHeaders = [
  "NAMESPACE",
  "NAME",
  "READY",
  "UP-TO-DATE",
  "AVAILABLE",
  "PHASE",
  "REVISION",
  "AGE",
];
const replicaHeaders = ["REPLICA", "NODE", "PHASE", "READY", "RESTARTS", "PORTS", "AGE", "REASON"];

export function workloadJson(workload: Workload): unknown {
  return toJson(WorkloadSchema, workload, { alwaysEmitImplicit: true });
}

function workloadRow(workload: Workload, nowMs: number): string[] {
  const status = workload.status;
  return [
    workload.namespace,
    workload.name,
    `${status?.readyReplicas ?? 0}/${status?.desiredReplicas ?? 0}`,
    String(status?.updatedReplicas ?? 0),
    String(status?.availableReplicas ?? 0),
    status?.phase ?? "-",
    String(status?.revision ?? 0),
    workload.createdAt ? formatAge(nowMs - timestampMs(workload.createdAt)) : "-",
  ];
}

function replicaRows(workload: Workload, nowMs: number): string[][] {
  return workload.replicas.map((replica) => [
    replica.id,
    replica.node || "-",
    replica.phase,
    replica.ready ? "true" : "false",
    String(replica.restarts),
    Object.entries(replica.hostPorts)
      .map(([name, port]) => `${name}:${port}`)
      .join(",") || "-",
    replica.createdAt ? formatAge(nowMs - timestampMs(replica.createdAt)) : "-",
    [replica.reason, replica.message].filter(Boolean).join(": ") || "-",
  ]);
}

/** A spec file's text; one over the specBytes limit is refused before it is read whole. */
async function readSpecFile(file: string): Promise<string> {
  let text: string | undefined;
  try {
    if (file === "-") text = await readStdin();
    else if ((await stat(file)).size <= limits.specBytes) text = await readFile(file, "utf8");
  } catch {
    throw CloudlessError.invalid(`-f ${file}: cannot read the file`);
  }
  if (text === undefined) throw CloudlessError.invalid(specTooLargeMessage(file));
  return text;
}

/** Standard input, or undefined once it is past the specBytes limit. */
async function readStdin(): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of process.stdin) {
    bytes += (chunk as Buffer).byteLength;
    if (bytes > limits.specBytes) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function statusLine(status: WorkloadStatus | undefined): string {
  if (!status) return "";
  return `${status.phase}: ${status.readyReplicas}/${status.desiredReplicas} ready, ${status.updatedReplicas} updated (revision ${status.revision})${status.message ? ` — ${status.message}` : ""}`;
}

export function registerWorkloadCommands(program: Command): void {
  const workload = program
    .command("workload")
    .alias("wl")
    .description("apply and manage workloads (replicated containers or processes)");
  const withNamespace = (command: Command) =>
    command.option("-n, --namespace <namespace>", "namespace of the workload", "default");
  const client = () => connect(program.opts().config);
  const call = async <T>(server: string, promise: Promise<T>): Promise<T> =>
    promise.catch((error: unknown) => Promise.reject(describeClientError(error, server)));

  workload
    .command("validate")
    .description("check a spec file against the schema, without a cluster")
    .requiredOption("-f, --file <file>", "YAML or JSON spec (- for stdin)")
    .action(
      action(async (flags: { file: string }) => {
        const text = await readSpecFile(flags.file);
        const parsed = parseWorkloadText(text, flags.file);
        if (!parsed.ok) {
          process.stderr.write(`${formatSpecErrors(parsed.errors)}\n`);
          process.stderr.write(
            `error: ${flags.file} is invalid (${parsed.errors.length} error${parsed.errors.length === 1 ? "" : "s"})\n`,
          );
          process.exitCode = 2;
          return;
        }
        const doc = parsed.doc;
        process.stdout.write(
          `${flags.file} is valid: workload ${doc.metadata.namespace}/${doc.metadata.name}, ${doc.spec.replicas} replica${doc.spec.replicas === 1 ? "" : "s"}, ${doc.spec.image ? `container image ${doc.spec.image}` : "process"}\n`,
        );
      }),
    );

  workload
    .command("apply")
    .description("create a workload or update it to the spec in FILE")
    .requiredOption("-f, --file <file>", "YAML or JSON spec (- for stdin)")
    .option("--dry-run", "validate and show what would change, without changing anything")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (flags: { file: string; dryRun?: boolean; output?: string }) => {
        const format = parseOutputFormat(flags.output);
        const text = await readSpecFile(flags.file);
        const parsed = parseWorkloadText(text, flags.file);
        if (!parsed.ok) {
          process.stderr.write(`${formatSpecErrors(parsed.errors)}\n`);
          throw CloudlessError.invalid(`${flags.file} is invalid; nothing was applied`);
        }
        const { clients, server } = await client();
        const response = await call(
          server,
          clients.workloads.applyWorkload({ specText: text, dryRun: flags.dryRun ?? false }),
        );
        const found = response.workload as Workload;
        if (format === "table") {
          process.stdout.write(
            `workload/${found.name} ${response.action}${flags.dryRun ? " (dry run)" : ""}\n`,
          );
        } else {
          // A dry run says so: nothing was written, and a new workload has no uid or times.
          printResult(
            format,
            {
              action: response.action,
              ...(flags.dryRun ? { dryRun: true } : {}),
              workload: workloadJson(found),
            },
            { headers: [], rows: [] },
          );
        }
      }),
    );

  withNamespace(workload.command("get <name>").description("show a workload and its replicas"))
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string, flags: NamespaceFlag & { output?: string }) => {
        const format = parseOutputFormat(flags.output);
        const { clients, server } = await client();
        const response = await call(
          server,
          clients.workloads.getWorkload({ name, namespace: flags.namespace }),
        );
        const found = response.workload as Workload;
        if (format !== "table") {
          printResult(format, workloadJson(found), { headers: [], rows: [] });
          return;
        }
        const now = Date.now();
        process.stdout.write(renderTable(workloadHeaders, [workloadRow(found, now)]));
        if (found.replicas.length > 0) {
          process.stdout.write(`\n${renderTable(replicaHeaders, replicaRows(found, now))}`);
        }
      }),
    );

  workload
    .command("list")
    .alias("ls")
    .description("list workloads")
    .option("-n, --namespace <namespace>", "only this namespace (default: all)")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (flags: { namespace?: string; output?: string }) => {
        const format = parseOutputFormat(flags.output);
        const { clients, server } = await client();
        // The table shows counts only; -o json|yaml keeps every replica, as before.
        const view = format === "table" ? WorkloadView.BASIC : WorkloadView.FULL;
        const response = await call(
          server,
          clients.workloads.listWorkloads({ namespace: flags.namespace ?? "", view }),
        );
        const now = Date.now();
        printResult(format, response.workloads.map(workloadJson), {
          headers: workloadHeaders,
          rows: response.workloads.map((w) => workloadRow(w, now)),
        });
      }),
    );

  withNamespace(
    workload.command("describe <name>").description("a workload in detail, with its recent events"),
  ).action(
    action(async (name: string, flags: NamespaceFlag) => {
      const { clients, server } = await client();
      const response = await call(
        server,
        clients.workloads.getWorkload({ name, namespace: flags.namespace }),
      );
      const found = response.workload as Workload;
      const spec = (found.spec ?? {}) as { spec?: Record<string, unknown> };
      const inner = spec.spec ?? {};
      const now = Date.now();
      const lines = [
        `Name:        ${found.name}`,
        `Namespace:   ${found.namespace}`,
        `Revision:    ${found.status?.revision ?? 0}`,
        `Status:      ${statusLine(found.status)}`,
        `Driver:      ${inner.image ? `container (${String(inner.image)})` : `process (${JSON.stringify(inner.command ?? [])})`}`,
        `Resources:   ${JSON.stringify(inner.resources ?? {})}`,
        `Placement:   ${JSON.stringify(inner.placement ?? {})}`,
        `Rollout:     ${JSON.stringify(inner.rollout ?? {})}, minAvailable ${String(inner.minAvailable ?? "")}`,
        "",
        renderTable(replicaHeaders, replicaRows(found, now)).trimEnd(),
      ];
      const pending = found.replicas.filter((r) => r.phase === "Pending");
      if (pending.length > 0) {
        const explained = await call(
          server,
          clients.workloads.explainWorkload({ name, namespace: flags.namespace }),
        );
        lines.push("", `Scheduling:  ${explained.summary}`);
      }
      const events = await call(
        server,
        clients.events.listEvents({
          subject: `workload/${found.namespace}/${found.name}`,
          limit: 10,
        }),
      );
      lines.push("", "Events:");
      for (const event of events.events) {
        const when = event.time ? formatAge(now - timestampMs(event.time)) : "-";
        lines.push(`  ${when.padEnd(6)} ${event.type.padEnd(22)} ${event.message}`);
      }
      if (events.events.length === 0) lines.push("  <none>");
      process.stdout.write(`${lines.join("\n")}\n`);
    }),
  );

  withNamespace(workload.command("scale <name>").description("change the number of replicas"))
    .requiredOption("--replicas <n>", "desired replica count")
    .action(
      action(async (name: string, flags: NamespaceFlag & { replicas: string }) => {
        const replicas = Number(flags.replicas);
        if (!Number.isInteger(replicas) || replicas < 0) {
          fail(`--replicas ${flags.replicas}: expected a non-negative integer`);
        }
        if (replicas > limits.replicasPerWorkload) {
          fail(
            `--replicas ${flags.replicas}: at most ${limits.replicasPerWorkload} ${limitRef("replicasPerWorkload")}`,
          );
        }
        const { clients, server } = await client();
        await call(
          server,
          clients.workloads.scaleWorkload({ name, namespace: flags.namespace, replicas }),
        );
        process.stdout.write(`workload/${name} scaled to ${replicas}\n`);
      }),
    );

  withNamespace(
    workload.command("delete <name>").description("delete a workload and stop its replicas"),
  ).action(
    action(async (name: string, flags: NamespaceFlag) => {
      const { clients, server } = await client();
      await call(server, clients.workloads.deleteWorkload({ name, namespace: flags.namespace }));
      process.stdout.write(`workload/${name} deleted\n`);
    }),
  );

  withNamespace(
    workload
      .command("explain <name>")
      .description(
        "why replicas are pending (filters and scores); does the placement survive a node loss",
      ),
  )
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string, flags: NamespaceFlag & { output?: string }) => {
        const format = parseOutputFormat(flags.output);
        const { clients, server } = await client();
        const response = await call(
          server,
          clients.workloads.explainWorkload({ name, namespace: flags.namespace }),
        );
        if (format !== "table") {
          printResult(
            format,
            response.pending.map((p) => ({
              replicaId: p.replicaId,
              totalNodes: p.totalNodes,
              feasibleNodes: p.feasibleNodes,
              rejections: p.rejections,
              message: p.message,
              bestScores: p.bestScores.map((s) => ({ node: s.node, score: s.score })),
            })),
            { headers: [], rows: [] },
          );
          return;
        }
        process.stdout.write(`${response.summary}\n`);
        const first = response.pending[0];
        if (!first) return;
        const rows = Object.entries(first.rejections).map(([filter, count]) => [
          filter,
          String(count),
        ]);
        if (rows.length > 0)
          process.stdout.write(`\n${renderTable(["FILTER", "NODES REJECTED"], rows)}`);
        if (first.bestScores.length > 0) {
          process.stdout.write(
            `\n${renderTable(
              ["NODE", "SCORE"],
              first.bestScores.map((s) => [s.node, s.score.toFixed(1)]),
            )}`,
          );
        }
      }),
    );

  const rollout = workload.command("rollout").description("follow or undo a rollout");
  withNamespace(rollout.command("status <name>").description("follow a rollout until it completes"))
    .option("--timeout <duration>", "give up after this long", "10m")
    .action(
      action(async (name: string, flags: NamespaceFlag & { timeout: string }) => {
        const timeoutMs = parseDurationMs(flags.timeout);
        if (timeoutMs === undefined)
          fail(`--timeout ${flags.timeout}: expected a duration such as 5m`);
        if (timeoutMs > limits.rolloutStatusTimeoutSeconds * 1000) {
          fail(
            `--timeout ${flags.timeout}: at most 24h ${limitRef("rolloutStatusTimeoutSeconds")}`,
          );
        }
        const { clients, server } = await client();
        let last = "";
        try {
          for await (const update of clients.workloads.rolloutStatus(
            { name, namespace: flags.namespace, timeoutSeconds: Math.ceil(timeoutMs / 1000) },
            { timeoutMs: timeoutMs + 30_000 },
          )) {
            const line = statusLine(update.status);
            if (line !== last) process.stdout.write(`${line}\n`);
            last = line;
            if (update.done) {
              if (update.failed) {
                throw CloudlessError.unavailable(
                  `rollout of ${name} did not complete within ${flags.timeout}`,
                );
              }
              process.stdout.write(
                `workload/${name} rolled out (revision ${update.status?.revision ?? 0})\n`,
              );
              return;
            }
          }
        } catch (error) {
          throw error instanceof CloudlessError ? error : describeClientError(error, server);
        }
      }),
    );
  withNamespace(
    rollout.command("undo <name>").description("roll back to the previous revision"),
  ).action(
    action(async (name: string, flags: NamespaceFlag) => {
      const { clients, server } = await client();
      const response = await call(
        server,
        clients.workloads.rolloutUndo({ name, namespace: flags.namespace }),
      );
      process.stdout.write(
        `workload/${name} rolled back to the spec of revision ${response.toRevision} (now revision ${response.workload?.status?.revision ?? "?"})\n`,
      );
    }),
  );

  withNamespace(workload.command("logs <name>").description("print a replica's logs"))
    .option("-f, --follow", "keep printing new lines")
    .option("--replica <id>", "which replica (default: the first running one)")
    .option("--tail <n>", "only the last N lines", "-1")
    .action(
      action(
        async (
          name: string,
          flags: NamespaceFlag & { follow?: boolean; replica?: string; tail: string },
        ) => {
          const tail = Number(flags.tail);
          if (!Number.isInteger(tail)) fail(`--tail ${flags.tail}: expected an integer`);
          if (tail > limits.logTailLines) {
            fail(
              `--tail ${flags.tail}: at most ${limits.logTailLines} ${limitRef("logTailLines")}`,
            );
          }
          const { clients, server } = await client();
          try {
            for await (const line of clients.workloads.workloadLogs(
              {
                name,
                namespace: flags.namespace,
                replicaId: flags.replica ?? "",
                follow: flags.follow ?? false,
                tailLines: tail,
              },
              { timeoutMs: flags.follow ? 0 : 60_000 },
            )) {
              (line.stream === "stderr" ? process.stderr : process.stdout).write(`${line.line}\n`);
            }
          } catch (error) {
            throw describeClientError(error, server);
          }
        },
      ),
    );

  withNamespace(
    workload
      .command("exec <name>")
      .description("run a command in a replica: cloudless workload exec NAME -- CMD [ARGS…]")
      .argument("<command...>", "the command and its arguments (after --)"),
  )
    .option("--replica <id>", "which replica (default: the first running one)")
    .option("--timeout <duration>", "give up after this long", "30s")
    .action(
      action(
        async (
          name: string,
          command: string[],
          flags: NamespaceFlag & { replica?: string; timeout: string },
        ) => {
          const timeoutMs = parseDurationMs(flags.timeout);
          if (timeoutMs === undefined)
            fail(`--timeout ${flags.timeout}: expected a duration such as 30s`);
          if (timeoutMs > limits.execTimeoutSeconds * 1000) {
            fail(`--timeout ${flags.timeout}: at most 5m ${limitRef("execTimeoutSeconds")}`);
          }
          const { clients, server } = await client();
          const result = await call(
            server,
            clients.workloads.execWorkload(
              {
                name,
                namespace: flags.namespace,
                replicaId: flags.replica ?? "",
                command,
                timeoutSeconds: Math.ceil(timeoutMs / 1000),
              },
              { timeoutMs: timeoutMs + 10_000 },
            ),
          );
          process.stdout.write(result.stdout);
          process.stderr.write(result.stderr);
          // main() exits with it once the output is written.
          process.exitCode = result.exitCode;
        },
      ),
    );
}

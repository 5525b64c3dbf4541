import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { type Node, NodeSchema } from "../../api/gen/cloudless/v1/node_pb.js";
import { formatAge } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { parseOutputFormat, printResult } from "../output.js";
import { action, fail } from "../run.js";

export function nodeJson(node: Node): unknown {
  return toJson(NodeSchema, node, { alwaysEmitImplicit: true });
}

function statusColumn(node: Node, nowMs: number): string {
  const flags = [node.status];
  if (node.draining) flags.push("Draining");
  else if (node.cordoned) flags.push("SchedulingDisabled");
  const status = flags.join(",");
  // Why a NotReady node still holds its replicas, and for how long (ADR 0031).
  if (node.status === "NotReady" && node.lostDeadline) {
    const left = formatAge(timestampMs(node.lostDeadline) - nowMs);
    return `${status} (${node.statusReason}, Lost in ${left})`;
  }
  return status;
}

function nodeRow(node: Node, nowMs: number): string[] {
  const capacity = node.capacity;
  return [
    node.name,
    statusColumn(node, nowMs),
    node.region || "-",
    node.zone || "-",
    String(capacity?.cpuMillicores ?? 0) + "m",
    `${capacity?.memoryMib ?? 0}Mi`,
    `${(capacity?.storageGib ?? 0).toFixed(1)}Gi`,
    capacity?.egressMbps ? `${capacity.egressMbps}Mbps` : "-",
    node.enrolledAt ? formatAge(nowMs - timestampMs(node.enrolledAt)) : "-",
  ];
}

const headers = ["NAME", "STATUS", "REGION", "ZONE", "CPU", "MEMORY", "STORAGE", "EGRESS", "AGE"];

export function registerNodeCommands(program: Command): void {
  const node = program.command("node").description("inspect and manage nodes");

  node
    .command("list")
    .alias("ls")
    .description("list nodes")
    .option("-o, --output <format>", "table, json or yaml")
    .option("-l, --selector <k=v>", "only nodes with this label", collect, [])
    .action(
      action(async (options: { output?: string; selector: string[] }) => {
        const format = parseOutputFormat(options.output);
        const { clients, server } = await connect(program.opts().config);
        const labelSelector = Object.fromEntries(options.selector.map(splitLabel));
        const response = await clients.nodes
          .listNodes({ labelSelector })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const now = Date.now();
        printResult(format, response.nodes.map(nodeJson), {
          headers,
          rows: response.nodes.map((n) => nodeRow(n, now)),
        });
      }),
    );

  node
    .command("get <name>")
    .description("show one node")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string, options: { output?: string }) => {
        const format = parseOutputFormat(options.output);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.nodes
          .getNode({ name })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const found = response.node as Node;
        printResult(format, nodeJson(found), { headers, rows: [nodeRow(found, Date.now())] });
      }),
    );

  const simple = (
    verb: "cordon" | "uncordon" | "drain" | "delete",
    description: string,
    done: string,
  ) =>
    node
      .command(`${verb} <name>`)
      .description(description)
      .option("-o, --output <format>", "table, json or yaml")
      .action(
        action(async (name: string, options: { output?: string }) => {
          const format = parseOutputFormat(options.output);
          const { clients, server } = await connect(program.opts().config);
          const call = {
            cordon: () => clients.nodes.cordonNode({ name }),
            uncordon: () => clients.nodes.uncordonNode({ name }),
            drain: () => clients.nodes.drainNode({ name }),
            delete: () => clients.nodes.deleteNode({ name }),
          }[verb];
          const response = (await call().catch((error: unknown) =>
            Promise.reject(describeClientError(error, server)),
          )) as { node?: Node };
          if (format === "table") {
            process.stdout.write(`node/${name} ${done}\n`);
          } else {
            printResult(format, response.node ? nodeJson(response.node) : { name, deleted: true }, {
              headers: [],
              rows: [],
            });
          }
        }),
      );

  simple("cordon", "mark a node unschedulable", "cordoned");
  simple("uncordon", "mark a node schedulable again", "uncordoned");
  simple("drain", "cordon a node and move its replicas away", "drained");
  simple("delete", "remove a node from the cluster and revoke its certificate", "deleted");
}

export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export function splitLabel(text: string): [string, string] {
  const index = text.indexOf("=");
  if (index <= 0) fail(`label "${text}" must look like key=value, e.g. --label disk=ssd`);
  return [text.slice(0, index), text.slice(index + 1)];
}

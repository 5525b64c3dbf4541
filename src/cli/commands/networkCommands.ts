import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { type NodePeers, NodePeersSchema } from "../../api/gen/cloudless/v1/service_pb.js";
import { formatAge } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { parseOutputFormat, printResult } from "../output.js";
import { action } from "../run.js";

function peerRows(nodes: NodePeers[], now: number): string[][] {
  return nodes.flatMap((reporter) =>
    reporter.peers.map((p) => [
      reporter.node,
      p.node,
      p.path,
      p.via || "-",
      p.address || "-",
      p.rttMs > 0 ? `${p.rttMs.toFixed(1)}ms` : "-",
      String(p.bytesSent),
      String(p.bytesReceived),
      String(p.activeFlows),
      p.changedAt ? `${formatAge(now - timestampMs(p.changedAt))} ago` : "-",
    ]),
  );
}

export function registerNetworkCommands(program: Command): void {
  const network = program.command("network").description("the mesh between nodes (REQ-040)");
  network
    .command("peers")
    .description("each node's view of its mesh peers: path (direct or relayed), RTT and bytes")
    .option("--node <name>", "only what this node reports")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (options: { node?: string; output?: string }) => {
        const format = parseOutputFormat(options.output);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.services
          .listPeers({ node: options.node ?? "" })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        printResult(
          format,
          response.nodes.map((n) => toJson(NodePeersSchema, n)),
          {
            headers: [
              "NODE",
              "PEER",
              "PATH",
              "VIA",
              "ADDRESS",
              "RTT",
              "SENT",
              "RECEIVED",
              "FLOWS",
              "CHANGED",
            ],
            rows: peerRows(response.nodes, Date.now()),
          },
        );
        if (format === "table" && response.nodes.length === 0) {
          process.stderr.write(
            options.node
              ? `node "${options.node}" has not reported its mesh peers\n`
              : "no node has reported its mesh peers yet\n",
          );
        }
      }),
    );
}

import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { CoordinatorInfoSchema } from "../../api/gen/cloudless/v1/cluster_pb.js";
import { formatAge } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { parseOutputFormat, printResult } from "../output.js";
import { action } from "../run.js";

export function registerClusterCommands(program: Command): void {
  const cluster = program.command("cluster").description("the control plane itself");

  cluster
    .command("members")
    .alias("coordinators")
    .description("list the coordinators, which one leads, and whether each is alive")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (options: { output?: string }) => {
        const format = parseOutputFormat(options.output);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.cluster
          .listCoordinators({})
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const now = Date.now();
        printResult(
          format,
          response.coordinators.map((c) => toJson(CoordinatorInfoSchema, c)),
          {
            headers: ["ID", "URL", "LEADER", "STATUS", "LAST SEEN", "AGE"],
            rows: response.coordinators.map((c) => [
              c.id,
              c.url,
              c.leader ? "yes" : "no",
              c.alive ? "alive" : "unreachable",
              c.lastSeen ? `${formatAge(now - timestampMs(c.lastSeen))} ago` : "-",
              c.startedAt ? formatAge(now - timestampMs(c.startedAt)) : "-",
            ]),
          },
        );
        if (format === "table" && !response.coordinators.some((c) => c.leader)) {
          process.stderr.write("no leader elected: nothing is scheduled until one is\n");
        }
      }),
    );
}

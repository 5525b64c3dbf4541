import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { type Event, EventSchema } from "../../api/gen/cloudless/v1/event_pb.js";
import { limitRef, limits } from "../../api/limits.js";
import { parseDurationMs } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { parseOutputFormat, printResult, renderTable } from "../output.js";
import { action, fail } from "../run.js";
import { collect } from "./nodeCommands.js";

const headers = ["ID", "TIME", "TYPE", "SUBJECT", "REASON", "MESSAGE"];

function row(event: Event): string[] {
  return [
    event.id,
    event.time ? new Date(timestampMs(event.time)).toISOString() : "-",
    event.type,
    event.subject,
    event.reason,
    event.message,
  ];
}

export function registerEventCommands(program: Command): void {
  program
    .command("events")
    .description("show the cluster's event stream (membership, scheduling, security)")
    .option("--since <duration>", "only events newer than this, e.g. 10m, 1h")
    .option("--type <type>", "only events of this type (repeatable)", collect, [])
    .option("--subject <subject>", "only events about this subject, e.g. node/edge-1")
    .option("--limit <n>", "at most this many events (newest)", "500")
    .option("-w, --watch", "keep printing new events as they happen")
    .option("-o, --output <format>", "table, json or yaml (json with --watch prints one per line)")
    .action(
      action(
        async (options: {
          since?: string;
          type: string[];
          subject?: string;
          limit: string;
          watch?: boolean;
          output?: string;
        }) => {
          const format = parseOutputFormat(options.output);
          let sinceSeconds = 0;
          if (options.since !== undefined) {
            const ms = parseDurationMs(options.since);
            if (ms === undefined)
              fail(`--since ${options.since}: expected a duration such as 10m or 1h`);
            sinceSeconds = Math.ceil(ms / 1000);
          }
          const limit = Number(options.limit);
          if (!Number.isInteger(limit) || limit <= 0)
            fail(`--limit ${options.limit}: expected a positive integer`);
          if (limit > limits.eventsPerList) {
            fail(
              `--limit ${options.limit}: at most ${limits.eventsPerList} ${limitRef("eventsPerList")}`,
            );
          }
          const { clients, server } = await connect(program.opts().config);
          const response = await clients.events
            .listEvents({
              sinceSeconds,
              types: options.type,
              subject: options.subject ?? "",
              limit,
            })
            .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
          if (!options.watch) {
            printResult(
              format,
              response.events.map((e) => toJson(EventSchema, e)),
              {
                headers,
                rows: response.events.map(row),
              },
            );
            return;
          }
          const print = (event: Event) => {
            if (format === "json")
              process.stdout.write(`${JSON.stringify(toJson(EventSchema, event))}\n`);
            else process.stdout.write(renderTable(headers, [row(event)]).split("\n")[1] + "\n");
          };
          if (format !== "json") process.stdout.write(renderTable(headers, []));
          for (const event of response.events) print(event);
          let afterId = response.events.at(-1)?.id ?? "";
          const stream = clients.events.watchEvents(
            { afterId, types: options.type },
            { timeoutMs: 0 },
          );
          try {
            for await (const message of stream) {
              if (!message.event) continue;
              if (options.subject && message.event.subject !== options.subject) continue;
              afterId = message.event.id;
              print(message.event);
            }
          } catch (error) {
            throw describeClientError(error, server);
          }
        },
      ),
    );
}

/**
 * `cloudless config …` (issue 15, ADR 0056): create, update, list, get (with the values:
 * configs are not secret) and delete. Values come from literals and files, read and
 * checked as for secrets (keyValueFlags.ts) against the config limits before anything is
 * sent.
 */
import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { configDataLimits, validateConfigName } from "../../api/configs.js";
import { CloudlessError } from "../../api/errors.js";
import { type ConfigInfo, ConfigInfoSchema } from "../../api/gen/cloudless/v1/config_pb.js";
import { formatAge } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { type KeyValueFlags, keyValueDataFromFlags } from "../keyValueFlags.js";
import { parseOutputFormat, printResult } from "../output.js";
import { action, fail } from "../run.js";
import { collect } from "./nodeCommands.js";

interface DataFlags extends KeyValueFlags {
  namespace: string;
  output?: string;
}

function configJson(info: ConfigInfo): Record<string, unknown> {
  return toJson(ConfigInfoSchema, info) as Record<string, unknown>;
}

function keysColumn(info: ConfigInfo): string {
  return info.keys.map((key) => `${key.name}(${key.sizeBytes})`).join(",");
}

function ageOf(info: ConfigInfo, now: number): string {
  return info.updatedAt ? formatAge(now - timestampMs(info.updatedAt)) : "-";
}

/** A value as text when it is UTF-8, else undefined (shown as base64 under binaryData). */
function textOf(value: Uint8Array): string | undefined {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(value);
  } catch {
    return undefined;
  }
}

/** Like a Kubernetes ConfigMap: text values under `data`, other bytes base64 under `binaryData`. */
function valuesJson(data: { [key: string]: Uint8Array }): Record<string, unknown> {
  const text: Record<string, string> = {};
  const binary: Record<string, string> = {};
  for (const [key, value] of Object.entries(data).sort(([a], [b]) => a.localeCompare(b))) {
    const decoded = textOf(value);
    if (decoded === undefined) binary[key] = Buffer.from(value).toString("base64");
    else text[key] = decoded;
  }
  return { data: text, ...(Object.keys(binary).length > 0 ? { binaryData: binary } : {}) };
}

export function registerConfigCommands(program: Command): void {
  const config = program
    .command("config")
    .description("manage configuration objects mounted into replicas as files (not secret)");

  const dataCommand = (name: string, description: string) =>
    config
      .command(`${name} <name>`)
      .description(description)
      .option("--from-literal <key=value>", "a key and its value (repeatable)", collect, [])
      .option(
        "--from-file <[key=]path>",
        "a key (default: the file's name) and the file holding its value (repeatable)",
        collect,
        [],
      )
      .option("-n, --namespace <namespace>", "namespace of the config", "default")
      .option("-o, --output <format>", "table, json or yaml");

  for (const [verb, description] of [
    ["create", "create a config from literals and files"],
    [
      "update",
      "replace a config's keys and values (a new version; replicas see it by a file swap, or roll with onChange: restart)",
    ],
  ] as const) {
    dataCommand(verb, description).action(
      action(async (name: string, flags: DataFlags) => {
        const format = parseOutputFormat(flags.output);
        validateConfigName(flags.namespace, name);
        const data = await keyValueDataFromFlags(flags, configDataLimits);
        const { clients, server } = await connect(program.opts().config);
        const request = { namespace: flags.namespace, name, data: Object.fromEntries(data) };
        const response = await (verb === "create"
          ? clients.configs.createConfig(request)
          : clients.configs.updateConfig(request)
        ).catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const info = response.config;
        if (!info) return;
        if (format === "table") {
          process.stdout.write(
            `config/${info.namespace}/${info.name} ${verb === "create" ? "created" : "updated"} (version ${info.version}, ${info.keys.length} key${info.keys.length === 1 ? "" : "s"})\n`,
          );
          return;
        }
        printResult(format, configJson(info), { headers: [], rows: [] });
      }),
    );
  }

  config
    .command("list")
    .alias("ls")
    .description("list configs: names, versions, keys and sizes")
    .option("-n, --namespace <namespace>", "only this namespace (default: all)")
    .option("-A, --all-namespaces", "configs of every namespace (the default)")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (flags: { namespace?: string; allNamespaces?: boolean; output?: string }) => {
        const format = parseOutputFormat(flags.output);
        if (flags.namespace !== undefined && flags.allNamespaces) {
          fail("give -n NAMESPACE or -A, not both");
        }
        if (flags.namespace !== undefined) validateConfigName(flags.namespace, "x");
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.configs
          .listConfigs({ namespace: flags.namespace ?? "" })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const now = Date.now();
        printResult(format, response.configs.map(configJson), {
          headers: ["NAMESPACE", "NAME", "VERSION", "KEYS", "UPDATED"],
          rows: response.configs.map((info) => [
            info.namespace,
            info.name,
            String(info.version),
            keysColumn(info),
            `${ageOf(info, now)} ago`,
          ]),
        });
      }),
    );

  config
    .command("get <name>")
    .description("show a config: its metadata and values (or one raw value with --key)")
    .option("-n, --namespace <namespace>", "namespace of the config", "default")
    .option("--key <key>", "print only this key's value, as it is (no newline added)")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string, flags: { namespace: string; key?: string; output?: string }) => {
        const format = parseOutputFormat(flags.output);
        validateConfigName(flags.namespace, name);
        if (flags.key !== undefined && flags.output !== undefined) {
          fail("--key prints one raw value; leave out -o");
        }
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.configs
          .getConfig({ namespace: flags.namespace, name })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const info = response.config;
        if (!info) return;
        if (flags.key !== undefined) {
          const value = response.data[flags.key];
          if (value === undefined) {
            throw CloudlessError.notFound(
              `config ${info.namespace}/${info.name} has no key "${flags.key.slice(0, 80)}"; its keys: ${info.keys.map((key) => key.name).join(", ")}`,
            );
          }
          process.stdout.write(value);
          return;
        }
        if (format !== "table") {
          printResult(
            format,
            { ...configJson(info), ...valuesJson(response.data) },
            {
              headers: [],
              rows: [],
            },
          );
          return;
        }
        const now = Date.now();
        process.stdout.write(
          `config/${info.namespace}/${info.name} version ${info.version}, updated ${ageOf(info, now)} ago by ${info.updatedBy}\n`,
        );
        for (const key of info.keys) {
          const value = response.data[key.name] ?? new Uint8Array();
          const text = textOf(value);
          process.stdout.write(`\n--- ${key.name} (${key.sizeBytes} bytes) ---\n`);
          process.stdout.write(
            text === undefined
              ? `(binary; print it with --key ${key.name})\n`
              : text.endsWith("\n")
                ? text
                : `${text}\n`,
          );
        }
      }),
    );

  config
    .command("delete <name>")
    .description("delete a config (running replicas keep their files)")
    .option("-n, --namespace <namespace>", "namespace of the config", "default")
    .action(
      action(async (name: string, flags: { namespace: string }) => {
        validateConfigName(flags.namespace, name);
        const { clients, server } = await connect(program.opts().config);
        await clients.configs
          .deleteConfig({ namespace: flags.namespace, name })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        process.stdout.write(`config/${flags.namespace}/${name} deleted\n`);
      }),
    );
}

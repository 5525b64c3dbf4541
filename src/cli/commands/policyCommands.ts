import { readFile, stat } from "node:fs/promises";
import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { parse as parseYaml } from "yaml";
import { CloudlessError } from "../../api/errors.js";
import { type PolicyInfo, PolicyInfoSchema } from "../../api/gen/cloudless/v1/policy_pb.js";
import { limits, specTooLargeMessage } from "../../api/limits.js";
import { MAX_POLICY_DOCUMENT_BYTES } from "../../api/policy/policy.js";
import { formatAge } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { parseOutputFormat, printResult } from "../output.js";
import { action } from "../run.js";

/** A file's text, refused before it is read whole when it is over `maxBytes`. */
async function readBoundedFile(file: string, maxBytes: number, tooLarge: string): Promise<string> {
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch {
    throw CloudlessError.invalid(`-f ${file}: cannot read the file`);
  }
  if (size > maxBytes) throw CloudlessError.invalid(tooLarge);
  return readFile(file, "utf8");
}

function infoJson(info: PolicyInfo | undefined): object {
  if (!info) return {};
  const { document: _document, ...rest } = toJson(PolicyInfoSchema, info) as Record<
    string,
    unknown
  >;
  return rest;
}

export function registerPolicyCommands(program: Command): void {
  const policy = program
    .command("policy")
    .description(
      "cluster policies (ADR 0053): allow/deny rules for images, root, capabilities, seccomp and egress, checked at every apply",
    );

  policy
    .command("apply")
    .description("create or replace a policy from a YAML or JSON file; admin only")
    .requiredOption("-f, --file <file>", "the Policy document")
    .option("--dry-run", "validate only; nothing is stored")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (options: { file: string; dryRun?: boolean; output?: string }) => {
        const format = parseOutputFormat(options.output);
        const document = await readBoundedFile(
          options.file,
          MAX_POLICY_DOCUMENT_BYTES,
          `-f ${options.file} is larger than ${MAX_POLICY_DOCUMENT_BYTES} bytes (MAX_POLICY_DOCUMENT_BYTES)`,
        );
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.policies
          .applyPolicy({ document, dryRun: options.dryRun ?? false })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        if (format === "table") {
          const dry = options.dryRun ? " (dry run)" : "";
          process.stdout.write(
            `policy/${response.policy?.name ?? "?"} ${response.action}${dry}: ${response.policy?.rules ?? 0} rules\n`,
          );
          return;
        }
        printResult(
          format,
          { ...infoJson(response.policy), action: response.action },
          { headers: [], rows: [] },
        );
      }),
    );

  policy
    .command("list")
    .alias("ls")
    .description("list policies: name, rules, updated, by whom")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (options: { output?: string }) => {
        const format = parseOutputFormat(options.output);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.policies
          .listPolicies({})
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const now = Date.now();
        printResult(
          format,
          response.policies.map((info) => infoJson(info)),
          {
            headers: ["NAME", "RULES", "UPDATED", "BY", "DESCRIPTION"],
            rows: response.policies.map((info) => [
              info.name,
              String(info.rules),
              info.updatedAt ? `${formatAge(now - timestampMs(info.updatedAt))} ago` : "-",
              info.updatedBy || "-",
              info.description || "-",
            ]),
          },
        );
      }),
    );

  policy
    .command("get <name>")
    .description("show a policy: its document (table, yaml) or its record (json)")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string, options: { output?: string }) => {
        const format = parseOutputFormat(options.output);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.policies
          .getPolicy({ name })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const document = response.policy?.document ?? "";
        if (format === "json") {
          printResult(
            format,
            { ...infoJson(response.policy), document: parseYaml(document) as unknown },
            { headers: [], rows: [] },
          );
          return;
        }
        process.stdout.write(document.endsWith("\n") ? document : `${document}\n`);
      }),
    );

  policy
    .command("delete <name>")
    .description("delete a policy; admin only")
    .action(
      action(async (name: string) => {
        const { clients, server } = await connect(program.opts().config);
        await clients.policies
          .deletePolicy({ name })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        process.stdout.write(`policy/${name} deleted\n`);
      }),
    );

  policy
    .command("test")
    .description(
      "which rules decide for a workload spec, nothing applied; exits 1 when a rule denies it",
    )
    .requiredOption("-f, --file <file>", "a workload spec, YAML or JSON")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (options: { file: string; output?: string }) => {
        const format = parseOutputFormat(options.output);
        const specText = await readBoundedFile(
          options.file,
          limits.specBytes,
          specTooLargeMessage(options.file),
        );
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.policies
          .testPolicy({ specText })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        printResult(
          format,
          {
            allowed: response.allowed,
            decisions: response.decisions.map(
              ({ subject, item, effect, policy, rule, reason }) => ({
                subject,
                item,
                effect,
                policy,
                rule,
                reason,
              }),
            ),
          },
          {
            headers: ["SUBJECT", "ITEM", "EFFECT", "POLICY", "RULE", "REASON"],
            rows: response.decisions.map((d) => [
              d.subject,
              d.item,
              d.effect,
              d.policy || "-",
              d.rule || "-",
              d.reason,
            ]),
          },
        );
        if (format === "table") {
          process.stdout.write(response.allowed ? "allowed\n" : "denied\n");
        }
        if (!response.allowed) process.exitCode = 1;
      }),
    );
}

import { access } from "node:fs/promises";
import * as path from "node:path";
import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { stringify } from "yaml";
import { type UserInfo, UserInfoSchema } from "../../api/gen/cloudless/v1/user_pb.js";
import { generateKeyAndCsr, isRole, validateUserName } from "../../api/identity.js";
import { writeSecretFile } from "../../lib/atomicFile.js";
import { formatAge } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { parseOutputFormat, printResult } from "../output.js";
import { action, fail } from "../run.js";

function infoJson(info: UserInfo | undefined): object {
  return info ? (toJson(UserInfoSchema, info) as object) : {};
}

function status(info: UserInfo, nowMs: number): string {
  if (info.revokedAt) return "revoked";
  const expiresMs = info.expiresAt ? timestampMs(info.expiresAt) : 0;
  return expiresMs <= nowMs ? "expired" : "active";
}

export function registerUserCommands(program: Command): void {
  const user = program
    .command("user")
    .description(
      "manage people and programs: client configs with a role (admin, operator, viewer)",
    );

  user
    .command("create <name>")
    .description(
      "create a user and write its client config (own key and certificate, mode 0600); admin only",
    )
    .requiredOption(
      "--role <role>",
      "viewer (read only), operator (workloads) or admin (everything)",
    )
    .option("-f, --file <path>", "where to write the client config (default: ./<name>.conf)")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string, options: { role: string; file?: string; output?: string }) => {
        const format = parseOutputFormat(options.output);
        const checked = validateUserName(name);
        if (!checked.ok) fail(checked.reason);
        if (!isRole(options.role)) {
          fail(`--role ${options.role}: use viewer, operator or admin`);
        }
        const file = path.resolve(options.file ?? `${name}.conf`);
        // Refused before the user is created: a config holds a key and is never overwritten.
        const exists = await access(file).then(
          () => true,
          () => false,
        );
        if (exists) fail(`${file} already exists; remove it or choose another path with -f`);
        const { clients, credentials, server } = await connect(program.opts().config);
        // The private key is made here and never leaves this machine: the CA signs a CSR.
        const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: name });
        const response = await clients.users
          .createUser({ name, role: options.role, csrPem })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const config = {
          apiVersion: "cloudless/v1",
          kind: "ClientConfig",
          cluster: response.clusterName || credentials.clusterName,
          servers: credentials.servers,
          ca: response.caPem || credentials.caPem,
          cert: response.certPem,
          key: keyPem,
        };
        await writeSecretFile(file, stringify(config), { exclusive: true });
        if (format === "table") {
          process.stdout.write(
            `user/${name} created with role ${options.role}; client config written to ${file} (mode 0600)\n`,
          );
          process.stderr.write(`use it with: cloudless --config ${file} workload list\n`);
          return;
        }
        printResult(
          format,
          { ...infoJson(response.info), config: file },
          { headers: [], rows: [] },
        );
      }),
    );

  user
    .command("list")
    .alias("ls")
    .description(
      "list users: name, role, certificate serial, created, expires, revoked; admin only",
    )
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (options: { output?: string }) => {
        const format = parseOutputFormat(options.output);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.users
          .listUsers({})
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const now = Date.now();
        const when = (ms: number) =>
          ms > now ? `in ${formatAge(ms - now)}` : `${formatAge(now - ms)} ago`;
        printResult(
          format,
          response.users.map((info) => infoJson(info)),
          {
            headers: ["NAME", "ROLE", "STATUS", "SERIAL", "CREATED", "EXPIRES", "REVOKED"],
            rows: response.users.map((info) => [
              info.name,
              info.role,
              status(info, now),
              info.serial,
              info.createdAt ? when(timestampMs(info.createdAt)) : "-",
              info.expiresAt ? when(timestampMs(info.expiresAt)) : "-",
              info.revokedAt ? when(timestampMs(info.revokedAt)) : "-",
            ]),
          },
        );
      }),
    );

  user
    .command("revoke <name>")
    .description("revoke a user: its certificate is refused on every later call; admin only")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string, options: { output?: string }) => {
        const format = parseOutputFormat(options.output);
        const checked = validateUserName(name);
        if (!checked.ok) fail(checked.reason);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.users
          .revokeUser({ name })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        if (format === "table") {
          process.stdout.write(
            `user/${name} revoked; certificate serial ${response.info?.serial ?? "?"} is refused from now on\n`,
          );
          return;
        }
        printResult(format, infoJson(response.info), { headers: [], rows: [] });
      }),
    );
}

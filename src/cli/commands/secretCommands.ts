/**
 * `cloudless secret …` (REQ-063): create, update, list, get (metadata only), delete,
 * rotate-key and verify. Values are read from literals or files, checked against the same
 * limits as the coordinator before anything is sent, and never printed.
 */
import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { CloudlessError } from "../../api/errors.js";
import {
  RotateSecretsKeyResponseSchema,
  type SecretInfo,
  SecretInfoSchema,
  VerifySecretsResponseSchema,
} from "../../api/gen/cloudless/v1/secret_pb.js";
import { secretDataLimits, validateSecretName } from "../../api/secrets.js";
import { formatAge } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { type KeyValueFlags, keyValueDataFromFlags } from "../keyValueFlags.js";
import { parseOutputFormat, printResult } from "../output.js";
import { action } from "../run.js";
import { collect } from "./nodeCommands.js";

/** How long `rotate-key` and `verify` wait: every secret of the cluster is visited. */
const rotateTimeoutMs = 10 * 60_000;

interface DataFlags extends KeyValueFlags {
  namespace: string;
  output?: string;
}

function secretJson(info: SecretInfo): unknown {
  return toJson(SecretInfoSchema, info);
}

function keysColumn(info: SecretInfo): string {
  return info.keys.map((key) => `${key.name}(${key.sizeBytes})`).join(",");
}

function ageOf(info: SecretInfo, now: number): string {
  return info.updatedAt ? formatAge(now - timestampMs(info.updatedAt)) : "-";
}

export function registerSecretCommands(program: Command): void {
  const secret = program
    .command("secret")
    .description("manage encrypted secrets (values are never shown)");

  const dataCommand = (name: string, description: string) =>
    secret
      .command(`${name} <name>`)
      .description(description)
      .option("--from-literal <key=value>", "a key and its value (repeatable)", collect, [])
      .option(
        "--from-file <[key=]path>",
        "a key (default: the file's name) and the file holding its value (repeatable)",
        collect,
        [],
      )
      .option("-n, --namespace <namespace>", "namespace of the secret", "default")
      .option("-o, --output <format>", "table, json or yaml");

  for (const [verb, description] of [
    ["create", "create a secret from literals and files"],
    ["update", "replace a secret's keys and values (a new version)"],
  ] as const) {
    dataCommand(verb, description).action(
      action(async (name: string, flags: DataFlags) => {
        const format = parseOutputFormat(flags.output);
        validateSecretName(flags.namespace, name);
        const data = await keyValueDataFromFlags(flags, secretDataLimits);
        const { clients, server } = await connect(program.opts().config);
        const request = { namespace: flags.namespace, name, data: Object.fromEntries(data) };
        const response = await (verb === "create"
          ? clients.secrets.createSecret(request)
          : clients.secrets.updateSecret(request)
        ).catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const info = response.secret;
        if (!info) return;
        if (format === "table") {
          process.stdout.write(
            `secret/${info.namespace}/${info.name} ${verb === "create" ? "created" : "updated"} (version ${info.version}, ${info.keys.length} key${info.keys.length === 1 ? "" : "s"}, KEK ${info.kekId})\n`,
          );
          return;
        }
        printResult(format, secretJson(info), { headers: [], rows: [] });
      }),
    );
  }

  secret
    .command("list")
    .alias("ls")
    .description("list secrets: names, keys and sizes, never values")
    .option("-n, --namespace <namespace>", "only this namespace (default: all)")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (flags: { namespace?: string; output?: string }) => {
        const format = parseOutputFormat(flags.output);
        if (flags.namespace !== undefined) validateSecretName(flags.namespace, "x");
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.secrets
          .listSecrets({ namespace: flags.namespace ?? "" })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const now = Date.now();
        printResult(format, response.secrets.map(secretJson), {
          headers: ["NAMESPACE", "NAME", "VERSION", "KEYS", "KEK", "UPDATED"],
          rows: response.secrets.map((info) => [
            info.namespace,
            info.name,
            String(info.version),
            keysColumn(info),
            info.kekId,
            `${ageOf(info, now)} ago`,
          ]),
        });
      }),
    );

  secret
    .command("get <name>")
    .description("show a secret's metadata: keys, sizes, version, times, KEK id (never values)")
    .option("-n, --namespace <namespace>", "namespace of the secret", "default")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string, flags: { namespace: string; output?: string }) => {
        const format = parseOutputFormat(flags.output);
        validateSecretName(flags.namespace, name);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.secrets
          .getSecret({ namespace: flags.namespace, name })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const info = response.secret;
        if (!info) return;
        const now = Date.now();
        printResult(format, secretJson(info), {
          headers: ["KEY", "SIZE"],
          rows: info.keys.map((key) => [key.name, `${key.sizeBytes} bytes`]),
        });
        if (format === "table") {
          process.stdout.write(
            `\nsecret/${info.namespace}/${info.name} version ${info.version}, KEK ${info.kekId}, updated ${ageOf(info, now)} ago by ${info.updatedBy}\n`,
          );
        }
      }),
    );

  secret
    .command("delete <name>")
    .description("delete a secret")
    .option("-n, --namespace <namespace>", "namespace of the secret", "default")
    .action(
      action(async (name: string, flags: { namespace: string }) => {
        validateSecretName(flags.namespace, name);
        const { clients, server } = await connect(program.opts().config);
        await clients.secrets
          .deleteSecret({ namespace: flags.namespace, name })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        process.stdout.write(`secret/${flags.namespace}/${name} deleted\n`);
      }),
    );

  secret
    .command("rotate-key")
    .description(
      "re-wrap every secret's data key with a new key-encryption key (values are not re-encrypted)",
    )
    .option(
      "--remove-old",
      "then delete the old keys (keys in the data dir only; a key file is edited by you)",
    )
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (flags: { removeOld?: boolean; output?: string }) => {
        const format = parseOutputFormat(flags.output);
        const { clients, server } = await connect(program.opts().config);
        if (format === "table") process.stderr.write("re-wrapping every secret's data key…\n");
        const response = await clients.secrets
          // Each secret is a read and a compare-and-swap: thousands take longer than the
          // default 15 s; the rotation is idempotent, so a retry elsewhere is safe.
          .rotateSecretsKey({ removeOld: flags.removeOld === true }, { timeoutMs: rotateTimeoutMs })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        if (format !== "table") {
          printResult(
            format,
            toJson(RotateSecretsKeyResponseSchema, response, { alwaysEmitImplicit: true }),
            {
              headers: [],
              rows: [],
            },
          );
          return;
        }
        process.stdout.write(
          `${response.rewrapped} of ${response.total} secrets re-wrapped with ${response.createdKek ? "new " : ""}KEK ${response.activeKekId} (${response.alreadyCurrent} already used it); keys in ${response.keySource}\n`,
        );
        process.stdout.write(
          response.removedKekIds.length > 0
            ? `removed old keys: ${response.removedKekIds.join(", ")}\n`
            : "old keys kept; remove them with `cloudless secret rotate-key --remove-old` (or from the key file) once every coordinator has the new key\n",
        );
      }),
    );

  secret
    .command("verify [name]")
    .description("decrypt every secret (or one) inside the coordinator and report any that fail")
    .option("-n, --namespace <namespace>", "only this namespace (default: all)")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string | undefined, flags: { namespace?: string; output?: string }) => {
        const format = parseOutputFormat(flags.output);
        const namespace = flags.namespace ?? "";
        if (namespace !== "" || name !== undefined) {
          validateSecretName(namespace || "default", name ?? "x");
        }
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.secrets
          .verifySecrets({ namespace, name: name ?? "" }, { timeoutMs: rotateTimeoutMs })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        if (format !== "table") {
          printResult(
            format,
            toJson(VerifySecretsResponseSchema, response, { alwaysEmitImplicit: true }),
            {
              headers: [],
              rows: [],
            },
          );
        } else {
          for (const failure of response.failures) {
            process.stdout.write(`FAILED secret/${failure.secret}: ${failure.reason}\n`);
          }
          process.stdout.write(
            `${response.checked - response.failures.length} of ${response.checked} secrets decrypt\n`,
          );
        }
        if (response.failures.length > 0) {
          throw CloudlessError.failedPrecondition(
            `${response.failures.length} secrets do not decrypt; restore the keys they name (see above)`,
          );
        }
      }),
    );
}

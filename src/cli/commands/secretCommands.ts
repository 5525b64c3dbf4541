/**
 * `cloudless secret …` (REQ-063): create, update, list, get (metadata only), delete,
 * rotate-key and verify. Values are read from literals or files, checked against the same
 * limits as the coordinator before anything is sent, and never printed.
 */
import { open } from "node:fs/promises";
import * as path from "node:path";
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
import { formatBytes, limitRef, limits } from "../../api/limits.js";
import { validateSecretData, validateSecretName } from "../../api/secrets.js";
import { formatAge } from "../../lib/duration.js";
import { connect, describeClientError } from "../clientCommand.js";
import { parseOutputFormat, printResult } from "../output.js";
import { action, fail } from "../run.js";
import { collect } from "./nodeCommands.js";

/** How long `rotate-key` and `verify` wait: every secret of the cluster is visited. */
const rotateTimeoutMs = 10 * 60_000;

interface DataFlags {
  fromLiteral: string[];
  fromFile: string[];
  namespace: string;
  output?: string;
}

/** Reads a file of at most secretValueBytes, refusing a larger one before reading it all. */
async function readValueFile(file: string, flag: string): Promise<Buffer> {
  const handle = await open(file, "r").catch((error: NodeJS.ErrnoException) =>
    fail(`${flag} ${file}: cannot read it (${error.code ?? error.message})`),
  );
  try {
    const info = await handle.stat();
    if (!info.isFile()) fail(`${flag} ${file}: not a regular file`);
    if (info.size > limits.secretValueBytes) {
      fail(
        `${flag} ${file}: larger than ${formatBytes(limits.secretValueBytes)} ${limitRef("secretValueBytes")}`,
      );
    }
    // One byte more than allowed: a file that grew since the stat is still caught.
    const buffer = Buffer.alloc(limits.secretValueBytes + 1);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    if (bytesRead > limits.secretValueBytes) {
      fail(
        `${flag} ${file}: larger than ${formatBytes(limits.secretValueBytes)} ${limitRef("secretValueBytes")}`,
      );
    }
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** The keys and values of --from-literal KEY=VALUE and --from-file [KEY=]PATH. */
async function dataFromFlags(flags: DataFlags): Promise<Map<string, Uint8Array>> {
  const data = new Map<string, Uint8Array>();
  const add = (key: string, value: Uint8Array, flag: string) => {
    if (data.has(key)) fail(`${flag}: key "${key}" is given twice`);
    data.set(key, value);
    // Checked as it grows, so a hundred large files are refused before all are read.
    if (data.size > limits.secretKeysPerSecret) validateSecretData(data);
  };
  for (const literal of flags.fromLiteral) {
    const index = literal.indexOf("=");
    // The message never repeats the text: it may be the value itself.
    if (index <= 0) fail("--from-literal: expected KEY=VALUE, e.g. --from-literal password=…");
    add(literal.slice(0, index), Buffer.from(literal.slice(index + 1), "utf8"), "--from-literal");
  }
  for (const spec of flags.fromFile) {
    const index = spec.indexOf("=");
    const key = index > 0 ? spec.slice(0, index) : path.basename(spec);
    const file = index > 0 ? spec.slice(index + 1) : spec;
    add(key, await readValueFile(file, "--from-file"), "--from-file");
  }
  validateSecretData(data);
  return data;
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
        const data = await dataFromFlags(flags);
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

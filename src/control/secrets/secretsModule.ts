/**
 * Secrets (REQ-063, ADR 0052): the key ring (outside the store), the registry of
 * envelope-encrypted secrets and the SecretService API. Published for the modules after it
 * (delivery to replicas reads values through the registry, inside the coordinator).
 */
// biome-ignore lint/style/noRestrictedImports: data keys, IVs and KEKs: cryptographic randomness only
import { randomBytes } from "node:crypto";
import * as path from "node:path";
import { SecretService } from "../../api/gen/cloudless/v1/secret_pb.js";
import { type AuditTarget, auditedMethodName, stringField } from "../api/audit.js";
import { eventsKey } from "../events/eventsModule.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";
import { ReplicaTokenKeys } from "../security/replicaTokens.js";
import { KeyRing, type KeyRingSource, secretsKeyEnvVariable } from "./keyRing.js";
import { SecretRegistry } from "./secretRegistry.js";
import { secretServiceImpl } from "./secretService.js";

export const secretsKey = moduleKey<SecretRegistry>("secrets");
/** The replica tokens' keys (ADR 0058): the configs module checks tokens with them too. */
export const replicaTokensKey = moduleKey<ReplicaTokenKeys>("replica tokens");

/** Where the KEKs are: the key file, else the environment variable, else the data dir. */
export function keyRingSource(options: {
  dataDir: string;
  secretsKeyFile?: string;
  secretsKeyEnv?: string;
}): KeyRingSource {
  if (options.secretsKeyFile) return { kind: "file", file: path.resolve(options.secretsKeyFile) };
  if (options.secretsKeyEnv) {
    return { kind: "env", variable: secretsKeyEnvVariable, value: options.secretsKeyEnv };
  }
  return { kind: "dataDir", dir: path.join(options.dataDir, "secrets-kek") };
}

/** Reads a key file or variable as the coordinator would, failing with one line if unusable. */
export async function checkKeySource(options: {
  dataDir: string;
  secretsKeyFile?: string;
  secretsKeyEnv?: string;
}): Promise<void> {
  await new KeyRing(keyRingSource(options), randomBytes).keys();
}

/** "secret/<namespace>/<name>" of a request: what the audit log names, never a value. */
function secretTarget({ request }: { request: unknown }): string {
  const name = stringField(request, "name");
  if (name === "") return "";
  return `secret/${stringField(request, "namespace") || "default"}/${name}`;
}

export const secretsModule: ModuleDefinition = {
  name: "secrets",
  async start(context) {
    const keyRing = new KeyRing(
      keyRingSource({
        dataDir: context.dataDir,
        secretsKeyFile: context.options.secretsKeyFile,
        secretsKeyEnv: context.options.secretsKeyEnv,
      }),
      randomBytes,
      context.store.backend === "etcd",
    );
    const secrets = new SecretRegistry(
      context.store,
      keyRing,
      context.clock,
      randomBytes,
      context.logger.child({ component: "secrets" }),
    );
    // A key file or variable given at start is checked now: a typo fails the start with one
    // line, not the first `secret create` hours later. The data dir creates its key on use.
    if (keyRing.source.kind !== "dataDir") await keyRing.keys();
    context.provide(secretsKey, secrets);
    const replicaTokens = new ReplicaTokenKeys(context.store, context.clock);
    context.provide(replicaTokensKey, replicaTokens);
    const events = context.use(eventsKey);
    return {
      routes: (router) => {
        router.service(
          SecretService,
          secretServiceImpl({ secrets, keyRing, events, store: context.store, replicaTokens }),
        );
      },
      audited: new Map<string, AuditTarget>([
        [auditedMethodName(SecretService.method.createSecret), secretTarget],
        [auditedMethodName(SecretService.method.updateSecret), secretTarget],
        [auditedMethodName(SecretService.method.deleteSecret), secretTarget],
        // Every delivery to a node, and every refusal, by name (REQ-063).
        [
          auditedMethodName(SecretService.method.readReplicaSecret),
          ({ request }) => {
            const target = secretTarget({ request });
            const replica = stringField(request, "replicaId");
            return target && replica
              ? `${target} replica/${stringField(request, "workload")}/${replica}`
              : target;
          },
        ],
        // Every token issued to a node, and every refusal, by replica; never the token.
        [
          auditedMethodName(SecretService.method.issueReplicaToken),
          ({ request }) =>
            `replica/${stringField(request, "namespace")}/${stringField(request, "workload")}/${stringField(request, "replicaId")}`,
        ],
        [
          auditedMethodName(SecretService.method.rotateSecretsKey),
          ({ response }) => {
            const kek = stringField(response, "activeKekId");
            return kek ? `kek/${kek}` : "kek";
          },
        ],
      ]),
      // Public keys no valid token can name any more leave the store.
      maintain: () => replicaTokens.prune(),
    };
  },
};

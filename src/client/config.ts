import { readFile, stat } from "node:fs/promises";
import { homedir } from "node:os";
import * as path from "node:path";
import { parse } from "yaml";
import { CloudlessError } from "../api/errors.js";

/** What a client needs to reach a cluster: where, the CA to trust, and who it is. */
export interface ClientCredentials {
  clusterName: string;
  servers: string[];
  caPem: string;
  certPem: string;
  keyPem: string;
}

export function defaultDataDir(): string {
  return path.join(homedir(), ".cloudless");
}

/** --config, else $CLOUDLESS_CONFIG, else ~/.cloudless/admin.conf (where `cloudless up` writes it). */
export function resolveConfigPath(flag: string | undefined): string {
  return flag ?? process.env.CLOUDLESS_CONFIG ?? path.join(defaultDataDir(), "admin.conf");
}

export async function loadClientConfig(configPath: string): Promise<ClientCredentials> {
  let text: string;
  try {
    text = await readFile(configPath, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw CloudlessError.invalid(
        `no client config at ${configPath}; start a cluster with \`cloudless up\` or pass --config FILE (or set CLOUDLESS_CONFIG)`,
      );
    }
    throw CloudlessError.invalid(`cannot read client config ${configPath}: ${String(error)}`);
  }
  const mode = (await stat(configPath)).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw CloudlessError.invalid(
      `client config ${configPath} is readable by others (mode ${mode.toString(8)}); it holds a private key: chmod 600 ${configPath}`,
    );
  }
  let doc: unknown;
  try {
    doc = parse(text);
  } catch {
    throw CloudlessError.invalid(`client config ${configPath} is not valid YAML`);
  }
  const config = doc as Record<string, unknown> | null;
  const field = (name: string): string => {
    const value = config?.[name];
    if (typeof value !== "string" || value.length === 0) {
      throw CloudlessError.invalid(
        `client config ${configPath} has no "${name}"; regenerate it with \`cloudless up\``,
      );
    }
    return value;
  };
  const servers = config?.servers;
  if (
    !Array.isArray(servers) ||
    servers.length === 0 ||
    !servers.every((s) => typeof s === "string")
  ) {
    throw CloudlessError.invalid(`client config ${configPath} has no "servers" list`);
  }
  return {
    clusterName: field("cluster"),
    servers: servers as string[],
    caPem: field("ca"),
    certPem: field("cert"),
    keyPem: field("key"),
  };
}

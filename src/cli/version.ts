import { readFileSync } from "node:fs";

/**
 * The program's version, from package.json (as agentVersion is): the CLI must not import
 * the agent or the coordinator just to print it, since each pulls in its whole module
 * graph (dockerode, etcd3, SQLite…) — a process runs only one of them.
 */
export const cliVersion: string = (
  JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
    version: string;
  }
).version;

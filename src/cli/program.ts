import { Command } from "commander";
import { registerAuditCommands } from "./commands/auditCommands.js";
import { registerClusterCommands } from "./commands/clusterCommands.js";
import { registerConfigCommands } from "./commands/configCommands.js";
import { registerEventCommands } from "./commands/eventCommands.js";
import { registerNetworkCommands } from "./commands/networkCommands.js";
import { registerNodeCommands } from "./commands/nodeCommands.js";
import { registerPolicyCommands } from "./commands/policyCommands.js";
import { registerSecretCommands } from "./commands/secretCommands.js";
import { registerServiceCommands } from "./commands/serviceCommands.js";
import { registerTokenCommands } from "./commands/tokenCommands.js";
import { registerUserCommands } from "./commands/userCommands.js";
import { registerWorkloadCommands } from "./commands/workloadCommands.js";
import { cliVersion } from "./version.js";

/**
 * The `cloudless` command with its global options and nothing else; src/cmd/main.ts adds
 * the daemon commands and then the client commands below (ADR 0038: the CLI is a client and
 * never imports the planes it talks to).
 */
export function createProgram(): Command {
  const program = new Command("cloudless")
    .description("Cloudless: one elastic fabric from heterogeneous machines")
    .version(cliVersion, "--version")
    .option(
      "--config <file>",
      "client config (default: $CLOUDLESS_CONFIG or ~/.cloudless/admin.conf)",
    )
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();
  program.configureOutput({
    writeErr: (text) => process.stderr.write(text),
  });
  return program;
}

/** The commands that talk to a cluster as a client (and `audit verify`, which reads a file). */
export function registerClientCommands(program: Command): void {
  registerTokenCommands(program);
  registerUserCommands(program);
  registerSecretCommands(program);
  registerConfigCommands(program);
  registerPolicyCommands(program);
  registerNodeCommands(program);
  registerWorkloadCommands(program);
  registerEventCommands(program);
  registerClusterCommands(program);
  registerAuditCommands(program);
  registerServiceCommands(program);
  registerNetworkCommands(program);
}

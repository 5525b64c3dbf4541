import { Command, CommanderError } from "commander";
import { registerAuditCommands } from "./commands/auditCommands.js";
import { registerClusterCommands } from "./commands/clusterCommands.js";
import { registerDaemonCommands } from "./commands/daemonCommands.js";
import { registerEventCommands } from "./commands/eventCommands.js";
import { registerNodeCommands } from "./commands/nodeCommands.js";
import { registerTokenCommands } from "./commands/tokenCommands.js";
import { registerUpCommand } from "./commands/upCommand.js";
import { registerWorkloadCommands } from "./commands/workloadCommands.js";
import { endQuietlyWhenOutputCloses, exitAfterOutput } from "./exit.js";
import { reportAndExit } from "./run.js";
import { cliVersion } from "./version.js";

/** The `cloudless` program: coordinator, agent and client in one. */
export function buildProgram(): Command {
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
  registerUpCommand(program);
  registerDaemonCommands(program);
  registerTokenCommands(program);
  registerNodeCommands(program);
  registerWorkloadCommands(program);
  registerEventCommands(program);
  registerClusterCommands(program);
  registerAuditCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  endQuietlyWhenOutputCloses();
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) await exitAfterOutput(error.exitCode === 0 ? 0 : 2);
    await reportAndExit(error);
  }
  // Client connections (HTTP/2 sessions and their pings) would keep the process alive
  // after the command is done, so it exits, but only once its output is written.
  await exitAfterOutput(Number(process.exitCode ?? 0));
}

await main(process.argv);

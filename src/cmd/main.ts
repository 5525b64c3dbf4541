/**
 * The `cloudless` program: coordinator, agent and client in one. This folder is the
 * composition root (ADR 0038): the only code that imports every plane, because
 * `cloudless up`, `coordinator` and `agent` start them; the client commands live in cli/.
 */
import { type Command, CommanderError } from "commander";
import { endQuietlyWhenOutputCloses, exitAfterOutput } from "../cli/exit.js";
import { createProgram, registerClientCommands } from "../cli/program.js";
import { reportAndExit } from "../cli/run.js";
import { registerDaemonCommands } from "./daemonCommands.js";
import { registerUpCommand } from "./upCommand.js";

export function buildProgram(): Command {
  const program = createProgram();
  // The order is the order of `cloudless --help`: starting a cluster first.
  registerUpCommand(program);
  registerDaemonCommands(program);
  registerClientCommands(program);
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

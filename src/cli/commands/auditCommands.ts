import type { Command } from "commander";
import { CloudlessError } from "../../api/errors.js";
import { verifyAuditLog } from "../../observe/audit.js";
import { action } from "../run.js";

export function registerAuditCommands(program: Command): void {
  const audit = program
    .command("audit")
    .description("the coordinator's tamper-evident audit log (<data dir>/audit/audit.log)");

  audit
    .command("verify <file...>")
    .description(
      "check an audit log's hash chain and report the first altered, missing or reordered entry; give rotated files oldest first (audit.log.2 audit.log.1 audit.log) to check that they chain",
    )
    .action(
      action(async (files: string[]) => {
        let previous: { seq: number; hash: string } | undefined;
        for (const file of files) {
          const result = await verifyAuditLog(file, previous ? { previous } : {}).catch(
            (error: unknown) => {
              const code = (error as NodeJS.ErrnoException).code;
              if (code === "ENOENT") throw CloudlessError.notFound(`${file}: no such file`);
              if (code === "EACCES") {
                throw CloudlessError.permissionDenied(`${file}: not allowed to read it`);
              }
              if (code === "EISDIR") {
                throw CloudlessError.invalid(`${file} is a directory; give the audit.log file`);
              }
              throw error;
            },
          );
          if (!result.ok) {
            const seq = result.seq !== undefined ? ` (seq ${result.seq})` : "";
            process.stderr.write(`error: ${file} line ${result.line}${seq}: ${result.reason}\n`);
            process.exitCode = 1;
            return;
          }
          const continues =
            !previous && result.firstSeq !== undefined && result.firstSeq > 1
              ? ` (seq ${result.firstSeq}–${result.lastSeq}; continues an earlier file not checked here)`
              : "";
          process.stdout.write(`${file}: ${result.entries} entries, chain intact${continues}\n`);
          if (result.lastSeq !== undefined && result.lastHash !== undefined) {
            previous = { seq: result.lastSeq, hash: result.lastHash };
          }
        }
      }),
    );
}

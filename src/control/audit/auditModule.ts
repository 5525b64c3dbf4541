import * as path from "node:path";
import { CloudlessError } from "../../api/errors.js";
import { AuditLog } from "../../observe/audit.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";

/** The tamper-evident log of state-changing requests (NFR-C1); the API server writes it. */
export const auditKey = moduleKey<AuditLog>("audit log");

/** Opens DATA/audit at start and closes it once the API server has stopped. */
export const auditModule: ModuleDefinition = {
  name: "audit",
  async start(context) {
    const dir = path.join(context.dataDir, "audit");
    const audit = await AuditLog.open({
      dir,
      clock: context.clock,
      logger: context.logger.child({ component: "audit" }),
    }).catch((error: unknown) => {
      throw CloudlessError.unavailable(
        `cannot open the audit log in ${dir}: ${error instanceof Error ? error.message : String(error)}`,
      );
    });
    context.provide(auditKey, audit);
    return { stop: () => audit.close() };
  },
};

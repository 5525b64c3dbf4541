import { TokenService } from "../../api/gen/cloudless/v1/token_pb.js";
import { auditedMethodName, stringField } from "../api/audit.js";
import { tokenServiceImpl } from "../api/tokenService.js";
import { eventsKey } from "../events/eventsModule.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";
import { TokenRegistry } from "./tokenRegistry.js";

/** Bootstrap tokens (ADR 0002): enrollment checks and consumes them. */
export const tokensKey = moduleKey<TokenRegistry>("bootstrap tokens");

/** The token registry, its API (create, list, delete) and the leader's pruning. */
export const tokensModule: ModuleDefinition = {
  name: "tokens",
  start(context) {
    const tokens = new TokenRegistry(context.store, context.clock, context.ca.fingerprintSha256);
    const events = context.use(eventsKey);
    context.provide(tokensKey, tokens);
    return {
      routes: (router) => {
        router.service(TokenService, tokenServiceImpl({ tokens, events }));
      },
      maintain: () => tokens.prune(),
      audited: new Map([
        [
          auditedMethodName(TokenService.method.createToken),
          ({ response }) => {
            const id = stringField((response as { info?: unknown } | undefined)?.info, "id");
            return id ? `token/${id}` : "";
          },
        ],
        [
          auditedMethodName(TokenService.method.deleteToken),
          ({ request }) => {
            const id = stringField(request, "id");
            return id ? `token/${id}` : "";
          },
        ],
      ]),
    };
  },
};

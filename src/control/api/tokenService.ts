import type { ServiceImpl } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import type { TokenService } from "../../api/gen/cloudless/v1/token_pb.js";
import { limitRef, limits } from "../../api/limits.js";
import type { EventLog } from "../events/eventLog.js";
import { type TokenRegistry, tokenTtlTooLongMessage } from "../tokens/tokenRegistry.js";
import { actorName, requireAdmin } from "./context.js";
import { tokenToProto } from "./convert.js";

const defaultTokenTtlSeconds = 3600;

export interface TokenServiceDeps {
  tokens: TokenRegistry;
  events: EventLog;
}

export function tokenServiceImpl(services: TokenServiceDeps): ServiceImpl<typeof TokenService> {
  return {
    async createToken(request, context) {
      const identity = requireAdmin(context);
      // Errors name the API's fields; the CLI words them for its own flags.
      if (request.description.length > limits.tokenDescriptionChars) {
        throw CloudlessError.invalid(
          `description must be at most ${limits.tokenDescriptionChars} characters ${limitRef("tokenDescriptionChars")}`,
        );
      }
      if (request.ttlSeconds > limits.tokenTtlSeconds)
        throw CloudlessError.invalid(tokenTtlTooLongMessage);
      const ttlSeconds = request.ttlSeconds === 0 ? defaultTokenTtlSeconds : request.ttlSeconds;
      const { token, record } = await services.tokens.create({
        ttlMs: ttlSeconds * 1000,
        description: request.description,
        createdBy: actorName(identity),
      });
      await services.events.record({
        type: "TokenCreated",
        category: "security",
        subject: `token/${record.id}`,
        reason: "Created",
        message: `bootstrap token created, valid for ${ttlSeconds} s`,
        actor: actorName(identity),
      });
      return { token, info: tokenToProto(record) };
    },

    async listTokens(_request, context) {
      requireAdmin(context);
      const records = await services.tokens.list();
      records.sort((a, b) => a.createdAtMs - b.createdAtMs);
      return { tokens: records.map(tokenToProto) };
    },

    async deleteToken(request, context) {
      const identity = requireAdmin(context);
      await services.tokens.delete(request.id);
      await services.events.record({
        type: "TokenDeleted",
        category: "security",
        subject: `token/${request.id}`,
        reason: "Deleted",
        message: "bootstrap token revoked",
        actor: actorName(identity),
      });
      return {};
    },
  };
}

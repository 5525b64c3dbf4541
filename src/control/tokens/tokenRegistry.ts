import { z } from "zod";
import { CloudlessError } from "../../api/errors.js";
import { limitRef, limits } from "../../api/limits.js";
import { parseToken } from "../../api/token.js";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import { generateToken, secretMatches } from "../security/tokens.js";
import type { Op, Store } from "../store/store.js";
import { deleteInChunks } from "../store/txnBatches.js";

/**
 * One-time bootstrap tokens (REQ-001). Only a hash of the secret is stored, under
 * /tokens/<id>. Consuming a token is a compare-and-swap in the same transaction as
 * the write that uses it, so a token can never enroll two nodes.
 */
export interface TokenRecord {
  id: string;
  secretHash: string;
  description: string;
  createdAtMs: number;
  expiresAtMs: number;
  usedAtMs?: number;
  usedBy?: string;
  createdBy: string;
}

/** A token record as decoded where it leaves the store (lib/recordCodec.ts); unknown fields kept. */
export const tokenRecordSchema: z.ZodType<TokenRecord> = z.looseObject({
  id: z.string().min(1),
  secretHash: z.string(),
  description: z.string(),
  createdAtMs: z.number(),
  expiresAtMs: z.number(),
  usedAtMs: z.number().optional(),
  usedBy: z.string().optional(),
  createdBy: z.string(),
});

export const tokenKeyPrefix = "/tokens/";

/** How long a used or expired token's record is kept, for `token list` and audit. */
const keepSpentTokensMs = 24 * 3600 * 1000;

export type TokenRefusal = "malformed" | "otherCluster" | "unknown" | "expired" | "used";

export type TokenCheck =
  | { ok: true; record: TokenRecord; modRevision: number }
  | { ok: false; refusal: TokenRefusal; message: string; tokenId?: string };

export const maxTokenTtlMs = limits.tokenTtlSeconds * 1000;

/** Names the API field: the CLI says it for its own --ttl before it sends. */
export const tokenTtlTooLongMessage =
  `ttl_seconds must be at most ${limits.tokenTtlSeconds} (720h, 30 days) ` +
  `${limitRef("tokenTtlSeconds")}; use a shorter TTL`;

export class TokenRegistry {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly caFingerprint: string,
  ) {}

  async create(options: {
    ttlMs: number;
    description: string;
    createdBy: string;
  }): Promise<{ token: string; record: TokenRecord }> {
    if (!Number.isFinite(options.ttlMs) || options.ttlMs < 1000) {
      throw CloudlessError.invalid("ttl_seconds must be at least 1");
    }
    if (options.ttlMs > maxTokenTtlMs) {
      throw CloudlessError.invalid(tokenTtlTooLongMessage);
    }
    const generated = generateToken(this.caFingerprint);
    const now = this.clock.nowMs();
    const record: TokenRecord = {
      id: generated.id,
      secretHash: generated.secretHash,
      description: options.description,
      createdAtMs: now,
      expiresAtMs: now + options.ttlMs,
      createdBy: options.createdBy,
    };
    const result = await this.store.txn({
      compare: [{ key: tokenKeyPrefix + record.id, target: "version", op: "==", version: 0 }],
      success: [{ type: "put", key: tokenKeyPrefix + record.id, value: JSON.stringify(record) }],
    });
    if (!result.succeeded) throw CloudlessError.conflict("token id collision; try again");
    return { token: generated.token, record };
  }

  /** Checks a presented token without consuming it. */
  async check(token: string): Promise<TokenCheck> {
    const parsed = parseToken(token);
    if (!parsed.ok) return { ok: false, refusal: "malformed", message: parsed.reason };
    if (parsed.caFingerprint !== this.caFingerprint) {
      return {
        ok: false,
        refusal: "otherCluster",
        tokenId: parsed.id,
        message:
          "token was issued by another cluster (its CA hash does not match); create one with `cloudless token create` on this cluster",
      };
    }
    const kv = await this.store.get(tokenKeyPrefix + parsed.id);
    const record = kv ? decodeRecord(tokenRecordSchema, kv.key, kv.value) : undefined;
    if (!kv || !record || !secretMatches(record.secretHash, parsed.id, parsed.secret)) {
      return {
        ok: false,
        refusal: "unknown",
        tokenId: parsed.id,
        message: "token is not valid for this cluster; create one with `cloudless token create`",
      };
    }
    if (record.usedAtMs !== undefined) {
      return {
        ok: false,
        refusal: "used",
        tokenId: parsed.id,
        message: "token was already used; bootstrap tokens are single-use, create a new one",
      };
    }
    if (this.clock.nowMs() >= record.expiresAtMs) {
      return {
        ok: false,
        refusal: "expired",
        tokenId: parsed.id,
        message: "token has expired; create a new one with `cloudless token create --ttl 1h`",
      };
    }
    return { ok: true, record, modRevision: kv.modRevision };
  }

  /** The compare and put that consume a checked token inside a caller's transaction. */
  consumeOps(
    check: Extract<TokenCheck, { ok: true }>,
    usedBy: string,
  ): { compare: { key: string; target: "modRevision"; op: "=="; modRevision: number }; op: Op } {
    const key = tokenKeyPrefix + check.record.id;
    const used: TokenRecord = { ...check.record, usedAtMs: this.clock.nowMs(), usedBy };
    return {
      compare: { key, target: "modRevision", op: "==", modRevision: check.modRevision },
      op: { type: "put", key, value: JSON.stringify(used) },
    };
  }

  async list(): Promise<TokenRecord[]> {
    const result = await this.store.range(tokenKeyPrefix);
    return result.kvs.map((kv) => decodeRecord(tokenRecordSchema, kv.key, kv.value));
  }

  async delete(id: string): Promise<void> {
    const deleted = await this.store.delete(tokenKeyPrefix + id);
    if (deleted === 0) {
      throw CloudlessError.notFound(
        `token "${id}" not found; run \`cloudless token list\` to see token ids`,
      );
    }
  }

  /** Removes records of tokens spent or expired more than a day ago. */
  async prune(): Promise<number> {
    const now = this.clock.nowMs();
    const spent = (await this.list())
      .filter((record) => now - (record.usedAtMs ?? record.expiresAtMs) > keepSpentTokensMs)
      .map((record) => tokenKeyPrefix + record.id);
    return deleteInChunks(this.store, spent);
  }
}

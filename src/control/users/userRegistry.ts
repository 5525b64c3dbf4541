import { z } from "zod";
import { CloudlessError } from "../../api/errors.js";
import { isRole, type Role, validateUserName } from "../../api/identity.js";
import { limitRef, limits } from "../../api/limits.js";
import type { Clock } from "../../lib/clock.js";
import { decodeRecord } from "../../lib/recordCodec.js";
import type { Store } from "../store/store.js";

/**
 * People and programs with a client certificate and a role (ADR 0051), under
 * /users/<name>. The record names the one serial the user's certificate has; a request
 * with any other serial, or after `revokedAtMs`, is refused — the way a deleted node's
 * certificate is (api/peer.ts isCurrentMember). Revoked records stay, for `user list` and
 * audit, until the name is created again.
 */
export interface UserRecord {
  name: string;
  role: Role;
  serial: string;
  createdAtMs: number;
  expiresAtMs: number;
  createdBy: string;
  revokedAtMs?: number;
  revokedBy?: string;
}

export const userRecordSchema: z.ZodType<UserRecord> = z.looseObject({
  name: z.string().min(1),
  role: z.enum(["admin", "operator", "viewer"]),
  serial: z.string().min(1),
  createdAtMs: z.number(),
  expiresAtMs: z.number(),
  createdBy: z.string(),
  revokedAtMs: z.number().optional(),
  revokedBy: z.string().optional(),
});

export const userKeyPrefix = "/users/";

/** A user's certificate lives a year, like admin.conf's; revoke it to end it sooner. */
export const userCertTtlMs = 365 * 24 * 3600 * 1000;

/** Checks a create request's name and role before any work; one line naming what is wrong. */
export function checkUserRequest(name: string, role: string): Role {
  const checked = validateUserName(name);
  if (!checked.ok) throw CloudlessError.invalid(checked.reason);
  if (!isRole(role)) {
    throw CloudlessError.invalid(
      `role ${JSON.stringify(role)} is not valid: use admin, operator or viewer`,
    );
  }
  return role;
}

export class UserRegistry {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  async get(name: string): Promise<UserRecord | undefined> {
    if (!validateUserName(name).ok) return undefined;
    const kv = await this.store.get(userKeyPrefix + name);
    return kv ? decodeRecord(userRecordSchema, kv.key, kv.value) : undefined;
  }

  /** Whether a certificate with `serial` for user `name` may still be used. */
  async isCurrent(name: string, serial: string): Promise<boolean> {
    const record = await this.get(name);
    return record !== undefined && record.serial === serial && record.revokedAtMs === undefined;
  }

  async list(): Promise<UserRecord[]> {
    const result = await this.store.range(userKeyPrefix, { limit: limits.users + 1 });
    return result.kvs.map((kv) => decodeRecord(userRecordSchema, kv.key, kv.value));
  }

  /**
   * Refuses a name in use by a user who is not revoked, and a cluster already at its
   * limit, before the CA signs anything.
   */
  async checkCreatable(name: string): Promise<void> {
    const existing = await this.get(name);
    if (existing !== undefined && existing.revokedAtMs === undefined) {
      throw CloudlessError.alreadyExists(
        `user "${name}" already exists; revoke it first (\`cloudless user revoke ${name}\`) or choose another name`,
      );
    }
    if (existing === undefined && (await this.list()).length >= limits.users) {
      throw CloudlessError.failedPrecondition(
        `this cluster has ${limits.users} users ${limitRef("users")}; revoke and reuse names of ones no longer needed`,
      );
    }
  }

  /** Stores a user whose certificate was just issued; a concurrent create of the name loses. */
  async create(record: UserRecord): Promise<void> {
    const key = userKeyPrefix + record.name;
    const existing = await this.store.get(key);
    if (
      existing !== undefined &&
      decodeRecord(userRecordSchema, existing.key, existing.value).revokedAtMs === undefined
    ) {
      await this.checkCreatable(record.name);
    }
    const result = await this.store.txn({
      compare: [{ key, target: "modRevision", op: "==", modRevision: existing?.modRevision ?? 0 }],
      success: [{ type: "put", key, value: JSON.stringify(record) }],
    });
    if (!result.succeeded) {
      throw CloudlessError.conflict(`user "${record.name}" was created meanwhile; try again`);
    }
  }

  async revoke(name: string, revokedBy: string): Promise<UserRecord> {
    const key = userKeyPrefix + name;
    const kv = validateUserName(name).ok ? await this.store.get(key) : undefined;
    if (kv === undefined) {
      throw CloudlessError.notFound(
        `user "${name}" not found; run \`cloudless user list\` to see users`,
      );
    }
    const record = decodeRecord(userRecordSchema, kv.key, kv.value);
    if (record.revokedAtMs !== undefined) return record;
    const revoked: UserRecord = { ...record, revokedAtMs: this.clock.nowMs(), revokedBy };
    const result = await this.store.txn({
      compare: [{ key, target: "modRevision", op: "==", modRevision: kv.modRevision }],
      success: [{ type: "put", key, value: JSON.stringify(revoked) }],
    });
    if (!result.succeeded) {
      throw CloudlessError.conflict(`user "${name}" changed meanwhile; try again`);
    }
    return revoked;
  }
}

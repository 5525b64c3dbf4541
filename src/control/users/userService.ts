import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import {
  type UserInfo,
  UserInfoSchema,
  type UserService,
} from "../../api/gen/cloudless/v1/user_pb.js";
import { spiffeUri } from "../../api/identity.js";
import { limits } from "../../api/limits.js";
import type { Clock } from "../../lib/clock.js";
import { actorName, requireAdmin } from "../api/context.js";
import type { EventLog } from "../events/eventLog.js";
import type { CertificateAuthority } from "../security/pki.js";
import {
  checkUserRequest,
  type UserRecord,
  type UserRegistry,
  userCertTtlMs,
} from "./userRegistry.js";

export interface UserServiceDeps {
  users: UserRegistry;
  ca: CertificateAuthority;
  clusterName: string;
  events: EventLog;
  clock: Clock;
}

export function userToProto(record: UserRecord): UserInfo {
  return create(UserInfoSchema, {
    name: record.name,
    role: record.role,
    serial: record.serial,
    createdAt: timestampFromMs(record.createdAtMs),
    expiresAt: timestampFromMs(record.expiresAtMs),
    revokedAt: record.revokedAtMs === undefined ? undefined : timestampFromMs(record.revokedAtMs),
    createdBy: record.createdBy,
  });
}

/**
 * The user API (ADR 0051). The authorization interceptor lets only the admin role here
 * (users.read / users.write); `requireAdmin` keeps nodes out as before.
 */
export function userServiceImpl(deps: UserServiceDeps): ServiceImpl<typeof UserService> {
  return {
    async createUser(request, context) {
      const identity = requireAdmin(context);
      const role = checkUserRequest(request.name, request.role);
      if (request.csrPem.length === 0 || request.csrPem.length > limits.csrPemBytes) {
        throw CloudlessError.invalid(
          `csr_pem must be a PEM certificate signing request of at most ${limits.csrPemBytes} bytes`,
        );
      }
      await deps.users.checkCreatable(request.name);
      const now = deps.clock.nowMs();
      let issued: { certPem: string; serial: string; notAfterMs: number };
      try {
        // The CA decides the name and role; the CSR contributes only its public key.
        issued = await deps.ca.issueFromCsr(request.csrPem, {
          subjectName: request.name,
          spiffeUri: spiffeUri(deps.clusterName, "user", request.name),
          role,
          ttlMs: userCertTtlMs,
          nowMs: now,
          usage: "client",
        });
      } catch (error) {
        throw CloudlessError.invalid(
          `certificate signing request refused: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
      const record: UserRecord = {
        name: request.name,
        role,
        serial: issued.serial,
        createdAtMs: now,
        expiresAtMs: issued.notAfterMs,
        createdBy: actorName(identity),
      };
      await deps.users.create(record);
      await deps.events.record({
        type: "UserCreated",
        category: "security",
        subject: `user/${record.name}`,
        reason: "Created",
        message: `user created with role ${role}, certificate serial ${issued.serial}`,
        actor: actorName(identity),
      });
      return {
        info: userToProto(record),
        certPem: issued.certPem,
        caPem: deps.ca.certPem,
        clusterName: deps.clusterName,
      };
    },

    async listUsers(_request, context) {
      requireAdmin(context);
      const records = await deps.users.list();
      records.sort((a, b) => a.createdAtMs - b.createdAtMs || a.name.localeCompare(b.name));
      return { users: records.map(userToProto) };
    },

    async revokeUser(request, context) {
      const identity = requireAdmin(context);
      const record = await deps.users.revoke(request.name, actorName(identity));
      await deps.events.record({
        type: "UserRevoked",
        category: "security",
        subject: `user/${record.name}`,
        reason: "Revoked",
        message: `user revoked; certificate serial ${record.serial} is refused from now on`,
        actor: actorName(identity),
      });
      return { info: userToProto(record) };
    },
  };
}

/**
 * Roles and permissions (ADR 0051): every API method needs exactly one permission, a role
 * is a set of permissions, and a method missing from the table is refused to everyone —
 * so a new RPC cannot be served before someone decides who may call it. Pure: the
 * authorization interceptor (control/api/authorization.ts) and the tests read it.
 */
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { ClusterService } from "../../api/gen/cloudless/v1/cluster_pb.js";
import { ConfigService } from "../../api/gen/cloudless/v1/config_pb.js";
import { EventService } from "../../api/gen/cloudless/v1/event_pb.js";
import { NodeService } from "../../api/gen/cloudless/v1/node_pb.js";
import { PolicyService } from "../../api/gen/cloudless/v1/policy_pb.js";
import { SecretService } from "../../api/gen/cloudless/v1/secret_pb.js";
import { ServiceService } from "../../api/gen/cloudless/v1/service_pb.js";
import { TokenService } from "../../api/gen/cloudless/v1/token_pb.js";
import { UserService } from "../../api/gen/cloudless/v1/user_pb.js";
import { WorkloadService } from "../../api/gen/cloudless/v1/workload_pb.js";
import type { Role } from "../../api/identity.js";

/**
 * What a method needs. `public` is open to a caller without a certificate (Enroll, which
 * carries a token); `agent` is for node agents only (their handlers check which node).
 * `secrets.*`, `policies.*` and `configs.*` are the secret, policy and config services'.
 */
export type Permission =
  | "public"
  | "agent"
  | "cluster.read"
  | "events.read"
  | "nodes.read"
  | "nodes.write"
  | "services.read"
  | "services.write"
  | "workloads.read"
  | "workloads.write"
  | "workloads.exec"
  | "tokens.read"
  | "tokens.write"
  | "users.read"
  | "users.write"
  | "secrets.read"
  | "secrets.write"
  | "secrets.keys"
  | "policies.read"
  | "policies.write"
  | "configs.read"
  | "configs.write";

const viewerPermissions: readonly Permission[] = [
  "cluster.read",
  "events.read",
  "nodes.read",
  "services.read",
  "workloads.read",
  // Configs are not secret; a viewer sees them as it sees the workloads that mount them.
  "configs.read",
];

/**
 * Operator: the viewer's reads plus changing workloads (apply, delete, scale, rollout,
 * exec), services, secrets and configs. Not tokens, users or policies, and not nodes:
 * cordon, drain and delete act on the whole cluster's capacity, so like Kubernetes
 * (nodes are cluster-scoped, not in the `edit` role) they stay with admin. An operator
 * may read policies, to learn why an apply was refused; rotating the secrets key is admin
 */
const operatorPermissions: readonly Permission[] = [
  ...viewerPermissions,
  "workloads.write",
  "workloads.exec",
  "services.write",
  "secrets.read",
  "secrets.write",
  "configs.write",
  "policies.read",
];

/** Admin: everything a person or program can be granted; `agent` belongs to nodes alone. */
const adminPermissions: readonly Permission[] = [
  ...operatorPermissions,
  "nodes.write",
  "tokens.read",
  "tokens.write",
  "users.read",
  "users.write",
  "policies.write",
  // Rotating the key-encryption key touches every namespace's secrets.
  "secrets.keys",
];

export const rolePermissions: Readonly<Record<Role, ReadonlySet<Permission>>> = {
  viewer: new Set(viewerPermissions),
  operator: new Set(operatorPermissions),
  admin: new Set(adminPermissions),
};

/** Names a method as the table and the audit log do: "cloudless.v1.TokenService/CreateToken". */
export function methodKey(method: DescMethod): string {
  return `${method.parent.typeName}/${method.name}`;
}

function entries<S extends DescService>(
  service: S,
  permissions: { [K in keyof S["method"]]: Permission },
): [string, Permission][] {
  return Object.entries(permissions).map(([localName, permission]) => {
    const method = service.method[localName];
    if (method === undefined) throw new Error(`${service.typeName} has no method ${localName}`);
    return [methodKey(method), permission];
  });
}

/**
 * Every method of every service and the permission it needs. Typed per service, so a
 * method added to a .proto does not compile until it is listed here.
 */
export const methodPermissions: ReadonlyMap<string, Permission> = new Map([
  ...entries(ClusterService, { listCoordinators: "cluster.read" }),
  ...entries(ConfigService, {
    createConfig: "configs.write",
    updateConfig: "configs.write",
    deleteConfig: "configs.write",
    // Configs are not secret (get returns values): readable like workloads, by viewers too.
    getConfig: "configs.read",
    listConfigs: "configs.read",
    // A node reads the configs its own replicas mount; the handler checks which.
    readReplicaConfig: "agent",
  }),
  ...entries(EventService, { listEvents: "events.read", watchEvents: "events.read" }),
  ...entries(NodeService, {
    enroll: "public",
    heartbeat: "agent",
    renewCertificate: "agent",
    measureEgress: "agent",
    uploadLogs: "agent",
    reportExecResult: "agent",
    listNodes: "nodes.read",
    getNode: "nodes.read",
    cordonNode: "nodes.write",
    uncordonNode: "nodes.write",
    drainNode: "nodes.write",
    deleteNode: "nodes.write",
  }),
  ...entries(PolicyService, {
    applyPolicy: "policies.write",
    deletePolicy: "policies.write",
    getPolicy: "policies.read",
    listPolicies: "policies.read",
    testPolicy: "policies.read",
  }),
  ...entries(SecretService, {
    createSecret: "secrets.write",
    updateSecret: "secrets.write",
    deleteSecret: "secrets.write",
    // Metadata only (no RPC returns a value to a client), still not for viewers.
    getSecret: "secrets.read",
    listSecrets: "secrets.read",
    rotateSecretsKey: "secrets.keys",
    verifySecrets: "secrets.keys",
    // A node reads the values its own replicas reference; the handler checks which.
    readReplicaSecret: "agent",
    // A node gets a token only for a replica assigned to it (ADR 0058); the handler checks.
    issueReplicaToken: "agent",
  }),
  ...entries(ServiceService, {
    listServices: "services.read",
    getService: "services.read",
    listPeers: "services.read",
  }),
  ...entries(TokenService, {
    createToken: "tokens.write",
    listTokens: "tokens.read",
    deleteToken: "tokens.write",
  }),
  ...entries(UserService, {
    createUser: "users.write",
    listUsers: "users.read",
    revokeUser: "users.write",
  }),
  ...entries(WorkloadService, {
    applyWorkload: "workloads.write",
    getWorkload: "workloads.read",
    listWorkloads: "workloads.read",
    deleteWorkload: "workloads.write",
    scaleWorkload: "workloads.write",
    rolloutStatus: "workloads.read",
    rolloutUndo: "workloads.write",
    explainWorkload: "workloads.read",
    // Logs are reads (Kubernetes `view` reads pods/log); exec runs code in a replica.
    workloadLogs: "workloads.read",
    execWorkload: "workloads.exec",
  }),
]);

/** The caller as the decision needs it: its kind and, for people and programs, its role. */
export type Caller =
  | { kind: "node" | "coordinator"; name: string }
  | { kind: "admin" | "user"; name: string; role: Role };

export type MethodDecision = { ok: true } | { ok: false; permission?: Permission; reason: string };

/**
 * Whether `caller` may call `method`. Nodes and coordinators keep exactly what they had
 * before roles: the handlers decide (a node acts only as itself); the table only refuses
 * a method it does not list. People and programs need the method's permission in their
 * role.
 */
export function decideMethod(caller: Caller, method: string): MethodDecision {
  const permission = methodPermissions.get(method);
  if (permission === undefined) {
    return {
      ok: false,
      reason: `${method} has no permission assigned, so nobody may call it (default deny)`,
    };
  }
  if (permission === "public") return { ok: true };
  if (!("role" in caller)) return { ok: true };
  if (rolePermissions[caller.role].has(permission)) return { ok: true };
  const holders = (Object.keys(rolePermissions) as Role[]).filter((role) =>
    rolePermissions[role].has(permission),
  );
  const shortMethod = method.replace(/^cloudless\.v1\./, "");
  const who = caller.kind === "admin" ? "admin" : `user "${caller.name}"`;
  return {
    ok: false,
    permission,
    reason:
      `${who} with role ${caller.role} may not call ${shortMethod}: it needs permission ` +
      `${permission}${holders.length > 0 ? ` (role ${holders.join(" or ")})` : ", which only node agents have"}`,
  };
}

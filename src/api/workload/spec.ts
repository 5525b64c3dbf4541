/**
 * The declarative workload spec (REQ-020, REQ-081): one zod schema that is the single source of
 * truth for validation, defaults, the TypeScript types and the published JSON Schema
 * (schemas/workload.schema.json, generated from this file by scripts/generate-schema.ts).
 *
 * Every object is strict so a typo such as `spec.replica` is an error rather than a silently
 * ignored field. Messages are written for people: parse.ts prefixes them with the field's path.
 * Cross-field rules live in `superRefine` checks that run even when other fields are already
 * invalid (`when: () => true`), so one round of validation reports every problem; they therefore
 * read the partially parsed value defensively.
 */
import { z } from "zod";
import { formatBytes, limitRef, limits } from "../limits.js";
import { capabilityName, linuxCapabilities } from "./capabilities.js";

export const workloadApiVersion = "cloudless/v1";
export const workloadKind = "Workload";

// ---------------------------------------------------------------------------------------------
// Building blocks

type IssueInput = { input?: unknown };

/** A field-specific message, except that an absent value is reported as missing. */
function orRequired(message: string) {
  return (issue: IssueInput) => (issue.input === undefined ? "is required" : message);
}

/**
 * An integer in [min, max] with one message for every way it can be wrong, so "-1", "1.5" and
 * "ten" all read the same. `z.int()` is avoided on purpose: its non-integer issue aborts the
 * whole parse, which would hide the cross-field errors of the same document.
 */
function integer(message: string, min: number, max?: number) {
  let schema = z.number({ error: orRequired(message) }).min(min, { error: message });
  if (max !== undefined) schema = schema.max(max, { error: message });
  return schema.refine(Number.isSafeInteger, { error: message }).meta({ type: "integer" });
}

/**
 * An integer from `min` to a limit of api/limits.ts: a value above the limit gets one error
 * that names it ("must be at most 10000 (limit replicasPerWorkload)"), whether it is 10001
 * or 1e300; every other wrong value gets `message`.
 */
function limitedInteger(
  message: string,
  min: number,
  limit: "replicasPerWorkload" | "probeSeconds",
) {
  const max = limits[limit];
  const tooBig = `must be at most ${max} ${limitRef(limit)}`;
  return z
    .number({ error: orRequired(message) })
    .min(min, { error: message })
    .max(max, { error: tooBig })
    .refine((value) => value > max || Number.isSafeInteger(value), { error: message })
    .meta({ type: "integer" });
}

const positiveInteger = () => integer("expected a positive integer", 1);
const nonNegativeInteger = () => integer("expected a non-negative integer", 0);

const dnsLabelPattern = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const dnsLabelMessage =
  "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or " +
  "digit, at most 63 characters";

/** DNS-1123 label: workload, namespace and port names end up in DNS names (REQ-041). */
function dnsLabel() {
  return z
    .string({ error: orRequired(dnsLabelMessage) })
    .regex(dnsLabelPattern, { error: dnsLabelMessage })
    .max(63, { error: dnsLabelMessage });
}

function nonEmptyString() {
  return z.string().min(1, { error: "must not be empty" });
}

// Same rules as node labels (src/control/api/validation.ts) so selectors can match them.
const labelKeyPattern = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$/;
const labelKeyMessage =
  "is not a valid label key: letters, digits, '.', '_', '-' and '/', starting and ending with a " +
  "letter or digit, at most 63 characters";

function labelMap() {
  return z
    .record(
      z.string().regex(labelKeyPattern, { error: labelKeyMessage }),
      z.string().max(limits.labelValueChars, {
        error: `must be at most ${limits.labelValueChars} characters ${limitRef("labelValueChars")}`,
      }),
    )
    .refine((labels) => Object.keys(labels).length <= limits.labelCount, {
      error: `at most ${limits.labelCount} labels are allowed ${limitRef("labelCount")}`,
    })
    .default({});
}

/** An argv: a non-empty list whose first entry, the executable, is not empty. */
function argv() {
  return z
    .array(z.string())
    .min(1, { error: "must not be empty" })
    .refine((command) => command[0] !== "", {
      error: "the executable (first entry) must not be empty",
      path: [0],
    });
}

const portNumberMessage = "expected a port number from 1 to 65535";
const portNumber = () => integer(portNumberMessage, 1, 65535);

/** A probe's target port: a number, or the name of an entry in `spec.ports`. */
function portReference() {
  return z.union([portNumber(), dnsLabel()], {
    error: orRequired("expected a port number from 1 to 65535 or the name of a port in spec.ports"),
  });
}

// ---------------------------------------------------------------------------------------------
// Sections

export const containerPortSchema = z
  .strictObject({
    name: dnsLabel().describe("Unique within the workload; probes may refer to it."),
    containerPort: portNumber(),
    protocol: z.enum(["tcp", "udp"]).default("tcp"),
    hostIP: z
      .union([z.ipv4(), z.ipv6()], {
        error: "expected an IP address of the node, such as 127.0.0.1",
      })
      .optional()
      .describe(
        "Containers: the node address the port is published on; 127.0.0.1 keeps it on the " +
          "node itself (default: every address). A process listens where it chooses.",
      ),
  })
  .describe("A port the workload listens on.");

/** A path inside the replica where files are mounted: absolute, no `..`, no NUL. */
function mountPath() {
  const message = "must be an absolute path without '..' segments, such as /run/secrets/db";
  return z
    .string()
    .max(limits.mountPathChars, {
      error: `must be at most ${limits.mountPathChars} characters ${limitRef("mountPathChars")}`,
    })
    .refine(
      (value) =>
        value.startsWith("/") &&
        value !== "/" &&
        !value.includes("\0") &&
        !value.split("/").some((segment) => segment === ".." || segment === "."),
      { error: message },
    );
}

const envNamePattern = /^[A-Za-z_][A-Za-z0-9_]*$/;

export const secretReferenceSchema = z
  .strictObject({
    name: dnsLabel().describe("A secret in the workload's namespace (`cloudless secret`)."),
    mountPath: mountPath()
      .optional()
      .describe(
        "Where the secret's keys appear as files (mode 0400, owned by the replica's user). Default: /run/secrets/<name>.",
      ),
    env: z
      .array(
        z.strictObject({
          name: z
            .string()
            .regex(envNamePattern, {
              error:
                "must be an environment variable name: letters, digits and '_', not starting with a digit",
            })
            .max(256, { error: "must be at most 256 characters" }),
          key: z.string().min(1, { error: "must name a key of the secret" }),
        }),
      )
      .optional()
      .describe(
        "Environment variables set from keys of the secret when a replica starts (an update reaches them only at the next start; files update in place).",
      ),
  })
  .describe("A secret the replicas read.");

export const configReferenceSchema = z
  .strictObject({
    name: dnsLabel().describe("A config in the workload's namespace (`cloudless config`)."),
    mountPath: mountPath()
      .optional()
      .describe(
        "Where the config's keys appear as files (read-only). Default: /run/configs/<name>.",
      ),
    onChange: z
      .enum(["reload", "restart"])
      .default("reload")
      .describe(
        "reload: an update swaps the files in place, atomically, without a restart; restart: an update rolls the replicas, never below minAvailable.",
      ),
  })
  .describe("A configuration object the replicas read.");

/** The largest uid a replica may run as: uids above it are negative to much of userland. */
const maxRunAsUser = 2_147_483_647;

/**
 * How far a replica's least-privilege defaults (REQ-062, ADR 0050/0054) are loosened.
 * Every field is optional and none has a default, so a spec without it keeps its hash
 * and runs with the defaults; cluster policies (REQ-061) decide which loosening is allowed.
 */
export const securityContextSchema = z
  .strictObject({
    runAsUser: integer(`expected an integer uid from 0 to ${maxRunAsUser}`, 0, maxRunAsUser)
      .optional()
      .describe(
        "The uid (and gid) the replica runs as. Absent: the workload's own unprivileged user, allocated per node. 0 (root) only when written, and policies may forbid it (runAsRoot).",
      ),
    capabilitiesAdd: z
      .array(
        z
          .string({ error: "expected a capability name such as NET_BIND_SERVICE" })
          .refine((name) => capabilityName(name) !== undefined, {
            error: (issue) =>
              `${JSON.stringify(issue.input)} is not a Linux capability; use a name such as NET_BIND_SERVICE, upper case, CAP_ prefix optional (see capabilities(7))`,
          }),
      )
      // A list longer than Linux's capabilities names one twice: a mistake, and a bound.
      .max(linuxCapabilities.length, {
        error: `at most ${linuxCapabilities.length} capabilities (the ones Linux has)`,
      })
      .optional()
      .describe(
        "Capabilities the replica keeps on top of none, e.g. NET_BIND_SERVICE (with or without the CAP_ prefix); policies may forbid each (capability rules).",
      ),
    readOnlyRootFilesystem: z
      .boolean({ error: "expected true or false" })
      .optional()
      .describe(
        "Containers: the image's file system is read-only (a tmpfs /tmp stays writable). Process replicas see the host read-only anyway.",
      ),
    seccompProfile: z
      .enum(["default", "unconfined"], { error: "expected default or unconfined" })
      .optional()
      .describe(
        "default: the system calls a workload has no business making fail with EPERM (mount, bpf, ptrace, new user namespaces…). unconfined: no filter; policies may forbid it (seccompUnconfined).",
      ),
  })
  .describe("Loosens the replica's least-privilege defaults, as far as policies allow (REQ-062).");

export const resourcesSchema = z
  .strictObject({
    cpuMillicores: positiveInteger().describe("CPU reserved per replica; 1000 = one core."),
    memoryMiB: positiveInteger().describe("Memory reserved per replica, in MiB."),
    storageGiB: z
      .number({ error: orRequired("expected a non-negative number") })
      .min(0, { error: "expected a non-negative number" })
      .default(0)
      .describe("Node-local ephemeral storage per replica, in GiB."),
    bandwidthMbps: nonNegativeInteger()
      .default(0)
      .describe("Egress bandwidth reserved per replica, in Mbit/s."),
  })
  .describe("What each replica reserves on its node; the scheduler only places it where it fits.");

function localityAffinity(what: "region" | "zone") {
  const names = () => z.array(dnsLabel()).default([]);
  return z
    .strictObject({
      required: names().describe(`Replicas run only in these ${what}s (empty: any).`),
      preferred: names().describe(`Replicas favour these ${what}s when scoring nodes.`),
    })
    .prefault({});
}

export const tolerationSchema = z
  .strictObject({
    key: nonEmptyString(),
    operator: z.enum(["Equal", "Exists"]).default("Equal"),
    value: z.string().default(""),
    effect: z
      .enum(["NoSchedule", "PreferNoSchedule", ""])
      .default("")
      .describe('The taint effect tolerated; "" tolerates every effect.'),
  })
  .superRefine(
    (toleration, ctx) => {
      if (!isRecord(toleration)) return;
      if (toleration.operator === "Exists" && toleration.value !== "") {
        ctx.addIssue({
          code: "custom",
          path: ["value"],
          message: "must be omitted when operator is Exists",
        });
      }
    },
    { when: () => true },
  );

export const placementSchema = z
  .strictObject({
    strategy: z
      .enum(["binpack", "spread"])
      .default("binpack")
      .describe("binpack fills nodes before using new ones (REQ-022); spread balances load."),
    regions: localityAffinity("region"),
    zones: localityAffinity("zone"),
    antiAffinity: z
      .boolean({ error: "expected true or false" })
      .default(false)
      .describe("When true, no two replicas of this workload share a node."),
    spreadAcrossZones: z
      .boolean({ error: "expected true or false" })
      .default(false)
      .describe("When true, replica counts per zone differ by at most one."),
    nodeSelector: labelMap().describe("Node labels a node must carry to run a replica."),
    tolerations: z.array(tolerationSchema).default([]),
    rebalance: z
      .boolean({ error: "expected true or false" })
      .default(true)
      .describe(
        "When true, replicas move one at a time (never below minAvailable) to restore the " +
          "spread once a lost node or zone is back. Changing it starts no rollout.",
      ),
  })
  .prefault({});

export const rolloutSchema = z
  .strictObject({
    maxSurge: nonNegativeInteger()
      .default(1)
      .describe("Replicas that may run above the desired count during an update."),
    maxUnavailable: nonNegativeInteger()
      .default(0)
      .describe("Replicas that may be missing during an update (never below minAvailable)."),
  })
  .superRefine(
    (rollout, ctx) => {
      if (!isRecord(rollout)) return;
      if (rollout.maxSurge === 0 && rollout.maxUnavailable === 0) {
        ctx.addIssue({
          code: "custom",
          path: [],
          message:
            "maxSurge and maxUnavailable cannot both be 0; a rolling update could never replace a " +
            "replica",
        });
      }
    },
    { when: () => true },
  )
  .prefault({});

/** Weight bounds of a service's endpoints: 0 drains, 1000 is ten times the default. */
export const serviceWeightMax = 1000;
export const serviceWeightDefault = 100;

export const serviceSchema = z
  .strictObject({
    name: dnsLabel()
      .optional()
      .describe(
        "The service's name (default metadata.name). Workloads naming the same service " +
          "share it: their replicas are its endpoints together.",
      ),
    ports: z
      .array(dnsLabel())
      .optional()
      .describe("Names of spec.ports to publish (default: every tcp port)."),
    weight: integer(`expected an integer from 0 to ${serviceWeightMax}`, 0, serviceWeightMax)
      .default(serviceWeightDefault)
      .describe("This workload's share of the service's traffic; 0 drains it."),
  })
  .describe("How the workload is published as a service (REQ-041). Changing it starts no rollout.");

const httpPath = z
  .string({ error: "expected a string" })
  .regex(/^\/\S*$/, { error: "must be a URL path starting with '/' and without spaces" })
  .default("/");

const probeKinds = ["http", "tcp", "exec"] as const;

export const probeSchema = z
  .strictObject({
    http: z.strictObject({ path: httpPath, port: portReference() }).optional(),
    tcp: z.strictObject({ port: portReference() }).optional(),
    exec: z.strictObject({ command: argv() }).optional(),
    periodSeconds: limitedInteger("expected a positive integer", 1, "probeSeconds").default(10),
    timeoutSeconds: limitedInteger("expected a positive integer", 1, "probeSeconds").default(1),
    failureThreshold: positiveInteger().default(3),
    successThreshold: positiveInteger().default(1),
    initialDelaySeconds: limitedInteger(
      "expected a non-negative integer",
      0,
      "probeSeconds",
    ).default(0),
  })
  .superRefine(
    (probe, ctx) => {
      if (!isRecord(probe)) return;
      const present = probeKinds.filter((kind) => probe[kind] !== undefined);
      if (present.length !== 1) {
        ctx.addIssue({
          code: "custom",
          path: [],
          message:
            present.length === 0
              ? "must set exactly one of http, tcp or exec"
              : `must set exactly one of http, tcp or exec, not ${present.join(" and ")}`,
        });
      }
    },
    { when: () => true },
  )
  // The JSON Schema cannot see the check above; say it structurally for editors.
  .meta({ oneOf: probeKinds.map((kind) => ({ required: [kind] })) })
  .describe("Exactly one of http, tcp or exec (REQ-032).");

export const metadataSchema = z.strictObject({
  name: dnsLabel(),
  namespace: dnsLabel().default("default"),
  labels: labelMap(),
});

const specObjectSchema = z.strictObject({
  image: z
    .string({ error: "expected a string" })
    .regex(/^\S+$/, {
      error: "must be an image reference such as registry/name:tag, without spaces",
    })
    .optional()
    .describe("Container image; without it the workload runs `command` as a process."),
  command: argv()
    .optional()
    .describe("With image: overrides its entrypoint. Without image: required, the process argv."),
  args: z.array(z.string()).default([]),
  env: z
    .record(
      z.string().regex(envNamePattern, {
        error:
          "is not a valid environment variable name: letters, digits and '_', not starting with " +
          "a digit",
      }),
      z.string(),
    )
    .refine((env) => envBytes(env) <= limits.envBytes, {
      error: (issue) =>
        `is ${envBytes(issue.input as Record<string, string>)} bytes; names and values may ` +
        `take at most ${limits.envBytes} (${formatBytes(limits.envBytes)}) ${limitRef("envBytes")}`,
    })
    .default({})
    .describe(
      `Environment variables; names and values at most ${formatBytes(limits.envBytes)} in all.`,
    ),
  ports: z.array(containerPortSchema).default([]),
  resources: resourcesSchema,
  replicas: limitedInteger("expected a non-negative integer", 0, "replicasPerWorkload")
    .default(1)
    .describe(`Replicas to run, at most ${limits.replicasPerWorkload}.`),
  minAvailable: nonNegativeInteger()
    .optional()
    .describe(
      "Ready replicas a rollout or drain never goes below (default replicas - 1); no node " +
        "gets more replicas than it can lose and keep this many, while nodes allow.",
    ),
  placement: placementSchema,
  restartPolicy: z.enum(["Always", "OnFailure", "Never"]).default("Always"),
  rollout: rolloutSchema,
  service: serviceSchema.optional(),
  secrets: z
    .array(secretReferenceSchema)
    .max(limits.secretsPerWorkload, {
      error: `at most ${limits.secretsPerWorkload} secrets ${limitRef("secretsPerWorkload")}`,
    })
    .refine((refs) => new Set(refs.map((ref) => ref.name)).size === refs.length, {
      error: "names a secret twice",
    })
    .refine(
      (refs) =>
        refs.reduce((sum, ref) => sum + (ref.env?.length ?? 0), 0) <= limits.secretEnvPerWorkload,
      {
        error: `at most ${limits.secretEnvPerWorkload} environment variables from secrets ${limitRef("secretEnvPerWorkload")}`,
      },
    )
    // Absent means none; no default is written, so existing workloads keep their hash.
    .optional()
    .describe(
      "Secrets the replicas may read (REQ-063): the node running a replica may fetch these, no others; each is mounted as files (one per key) readable only by the replica's user, and may also fill environment variables.",
    ),
  configs: z
    .array(configReferenceSchema)
    .max(limits.configsPerWorkload, {
      error: `at most ${limits.configsPerWorkload} configs ${limitRef("configsPerWorkload")}`,
    })
    .refine((refs) => new Set(refs.map((ref) => ref.name)).size === refs.length, {
      error: "names a config twice",
    })
    // Absent means none; no default is written, so existing workloads keep their hash.
    .optional()
    .describe(
      "Configuration objects (`cloudless config`) mounted into the replicas as files, one per key.",
    ),
  // Absent means the defaults; no default is written, so existing workloads keep their hash.
  securityContext: securityContextSchema.optional(),
  livenessProbe: probeSchema.optional().describe("Failing it restarts the replica."),
  readinessProbe: probeSchema.optional().describe("Until it passes the replica gets no traffic."),
  terminationGracePeriodSeconds: integer(
    `expected an integer from 0 to ${limits.terminationGracePeriodSeconds} ${limitRef("terminationGracePeriodSeconds")}`,
    0,
    limits.terminationGracePeriodSeconds,
  ).default(10),
});

/** An environment's size as execve counts it: "NAME=value" and a terminating NUL each. */
function envBytes(env: Record<string, string>): number {
  let bytes = 0;
  for (const [name, value] of Object.entries(env)) {
    bytes += Buffer.byteLength(name) + Buffer.byteLength(value) + 2;
  }
  return bytes;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A well-formed replica count; malformed ones already have their own error. */
const isCount = (value: unknown): value is number =>
  Number.isSafeInteger(value) && Number(value) >= 0;
const isPortNumber = (value: unknown): value is number =>
  Number.isSafeInteger(value) && Number(value) >= 1 && Number(value) <= 65535;

/** The rules that relate fields to each other; reported at the field a person would fix. */
function checkSpec(spec: unknown, ctx: z.RefinementCtx): void {
  if (!isRecord(spec)) return;

  if (spec.image === undefined && spec.command === undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["image"],
      message: "is required unless command is set (a command without an image runs as a process)",
    });
  }

  const { replicas, minAvailable } = spec;
  if (isCount(replicas) && isCount(minAvailable) && minAvailable > replicas) {
    ctx.addIssue({
      code: "custom",
      path: ["minAvailable"],
      message: `must be at most replicas (${replicas})`,
    });
  }
  // With every replica required and no surge, a rollout could neither stop an old replica nor
  // start a new one (REQ-023), so it would hang forever.
  const rollout = spec.rollout;
  if (
    isCount(replicas) &&
    replicas > 0 &&
    minAvailable === replicas &&
    isRecord(rollout) &&
    rollout.maxSurge === 0
  ) {
    ctx.addIssue({
      code: "custom",
      path: ["rollout", "maxSurge"],
      message: `must be at least 1 when minAvailable equals replicas (${replicas}), or a rolling update can never proceed`,
    });
  }

  const portNames = new Set<string>();
  const portNumbers = new Set<string>();
  const ports = Array.isArray(spec.ports) ? spec.ports : [];
  ports.forEach((port: unknown, index) => {
    if (!isRecord(port)) return;
    // Only well-formed values take part; malformed ones already have their own error.
    if (typeof port.name === "string" && dnsLabelPattern.test(port.name)) {
      if (portNames.has(port.name)) {
        ctx.addIssue({
          code: "custom",
          path: ["ports", index, "name"],
          message: `duplicate port name "${port.name}"`,
        });
      }
      portNames.add(port.name);
    }
    if (isPortNumber(port.containerPort)) {
      // TCP and UDP on one number are distinct sockets (DNS serves both on 53).
      const protocol = typeof port.protocol === "string" ? port.protocol : "tcp";
      const key = `${port.containerPort}/${protocol}`;
      if (portNumbers.has(key)) {
        ctx.addIssue({
          code: "custom",
          path: ["ports", index, "containerPort"],
          message: `duplicate port ${port.containerPort}/${protocol}`,
        });
      }
      portNumbers.add(key);
    }
  });

  checkServicePorts(spec.service, ports, ctx);

  for (const probeField of ["livenessProbe", "readinessProbe"] as const) {
    const probe = spec[probeField];
    if (!isRecord(probe)) continue;
    for (const kind of ["http", "tcp"] as const) {
      const target = probe[kind];
      if (!isRecord(target) || typeof target.port !== "string") continue;
      if (!dnsLabelPattern.test(target.port)) continue;
      if (!portNames.has(target.port)) {
        const known = [...portNames].map((name) => `"${name}"`).join(", ");
        ctx.addIssue({
          code: "custom",
          path: [probeField, kind, "port"],
          message:
            `no port named "${target.port}" in spec.ports` +
            (known === "" ? " (it declares none)" : ` (known: ${known})`),
        });
      }
    }
  }
}

/**
 * `service.ports` must name tcp ports of spec.ports (the mesh is L4 TCP only), and a
 * workload publishing nothing is no service: said at the entry a person would fix.
 */
function checkServicePorts(service: unknown, ports: unknown[], ctx: z.RefinementCtx): void {
  if (!isRecord(service) || !Array.isArray(service.ports)) return;
  const byName = new Map<string, unknown>();
  for (const port of ports) {
    if (isRecord(port) && typeof port.name === "string") byName.set(port.name, port.protocol);
  }
  const tcpNames = [...byName].filter(([, protocol]) => (protocol ?? "tcp") === "tcp");
  const known = tcpNames.map(([name]) => `"${name}"`).join(", ");
  const seen = new Set<string>();
  service.ports.forEach((name: unknown, index) => {
    if (typeof name !== "string" || !dnsLabelPattern.test(name)) return;
    const path = ["service", "ports", index];
    if (seen.has(name)) {
      ctx.addIssue({ code: "custom", path, message: `duplicate port name "${name}"` });
    }
    seen.add(name);
    if (!byName.has(name)) {
      ctx.addIssue({
        code: "custom",
        path,
        message:
          `no port named "${name}" in spec.ports` +
          (known === "" ? " (it declares no tcp port)" : ` (tcp ports: ${known})`),
      });
    } else if ((byName.get(name) ?? "tcp") !== "tcp") {
      ctx.addIssue({
        code: "custom",
        path,
        message: `port "${name}" is udp; a service publishes tcp ports only (the mesh is L4 TCP)`,
      });
    }
  });
}

export const workloadSpecSchema = specObjectSchema
  .superRefine(checkSpec, { when: () => true })
  // A defaulted minAvailable depends on replicas, so it is filled in after validation.
  .transform((spec) => ({
    ...spec,
    minAvailable: spec.minAvailable ?? Math.max(0, spec.replicas - 1),
  }))
  // Editors cannot see checkSpec; the one rule that fits JSON Schema is stated here.
  .meta({ anyOf: [{ required: ["image"] }, { required: ["command"] }] });

/** The whole document: the single source of truth for workload specs. */
export const workloadSchema = z.strictObject({
  apiVersion: z.literal(workloadApiVersion, {
    error: orRequired(`must be ${workloadApiVersion}`),
  }),
  kind: z.literal(workloadKind, { error: orRequired(`must be ${workloadKind}`) }),
  metadata: metadataSchema,
  spec: workloadSpecSchema,
});

// ---------------------------------------------------------------------------------------------
// Types

/** A validated document with every default applied. */
export type WorkloadSpecDocument = z.output<typeof workloadSchema>;
/** What a person may write: defaulted fields are optional. */
export type WorkloadSpecInput = z.input<typeof workloadSchema>;
export type WorkloadMetadata = WorkloadSpecDocument["metadata"];
export type WorkloadSpec = WorkloadSpecDocument["spec"];
export type ContainerPort = z.output<typeof containerPortSchema>;
export type Resources = z.output<typeof resourcesSchema>;
export type SecurityContext = z.output<typeof securityContextSchema>;
export type Placement = z.output<typeof placementSchema>;
export type PlacementStrategy = Placement["strategy"];
export type Toleration = z.output<typeof tolerationSchema>;
export type RolloutStrategy = z.output<typeof rolloutSchema>;
export type RestartPolicy = WorkloadSpec["restartPolicy"];
export type Probe = z.output<typeof probeSchema>;
export type ServiceSection = z.output<typeof serviceSchema>;
export type PortReference = number | string;
export type WorkloadDriver = "container" | "process";

/** A container image selects the container driver; a bare command runs as a process. */
export function driverOf(doc: WorkloadSpecDocument): WorkloadDriver {
  return doc.spec.image === undefined ? "process" : "container";
}

/** A probe's single action with its port resolved to a number, ready for a prober to run. */
export type ProbeAction =
  | { kind: "http"; path: string; port: number }
  | { kind: "tcp"; port: number }
  | { kind: "exec"; command: string[] };

/** Resolves a port number or a name from `spec.ports`; undefined when the name is unknown. */
export function resolvePort(
  ports: readonly ContainerPort[],
  port: PortReference,
): number | undefined {
  if (typeof port === "number") return port;
  return ports.find((candidate) => candidate.name === port)?.containerPort;
}

/** The action of a validated probe; validation guarantees exactly one kind and known names. */
export function probeActionOf(probe: Probe, ports: readonly ContainerPort[]): ProbeAction {
  const portOf = (port: PortReference): number => {
    const resolved = resolvePort(ports, port);
    if (resolved === undefined) throw new Error(`probe refers to unknown port "${port}"`);
    return resolved;
  };
  if (probe.http) return { kind: "http", path: probe.http.path, port: portOf(probe.http.port) };
  if (probe.tcp) return { kind: "tcp", port: portOf(probe.tcp.port) };
  if (probe.exec) return { kind: "exec", command: [...probe.exec.command] };
  throw new Error("probe sets none of http, tcp or exec");
}

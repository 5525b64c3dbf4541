/**
 * Every bound on what a caller may ask of Cloudless, in one place (ADR 0026): the spec
 * schema, the coordinator's API handlers and controller, the agent and the CLI all read
 * them from here, so the CLI refuses what the coordinator would refuse, with the same
 * words. Each name carries its unit; each comment says why the bound is where it is.
 *
 * A limit is checked before the work it bounds, and an error that a limit caused names
 * it as `(limit <name>)` so a reader can find it here. This module depends on nothing.
 */
export const limits = {
  // --- Workloads ------------------------------------------------------------------------
  /**
   * Replicas one workload may ask for. Each replica is a record in the store and in the
   * leader's memory (1–3 KB) and a line in every status answer; 10,000 is a fifth of the
   * largest cluster the product is sized for (50,000 replicas) in one workload, and what
   * `workload scale` always allowed.
   */
  replicasPerWorkload: 10_000,
  /**
   * Replicas all workloads together may ask for: twice the 50,000 the product is sized
   * and benchmarked for. Without it, many workloads within replicasPerWorkload could
   * still ask for a million replicas (3.3 GB of coordinator memory in issue 12).
   */
  replicasPerCluster: 100_000,
  /**
   * Workloads in one namespace: every status read and controller resync walks them, and
   * each keeps up to 10 revisions of its spec in the store. Twice the 500 workloads of the
   * 50,000-replica benchmark.
   */
  workloadsPerNamespace: 1_000,
  /**
   * A workload spec's size as sent (YAML or JSON text, or the structured spec as JSON).
   * Real specs are a few KiB; the spec is stored 11 times (record plus 10 revisions) and
   * sent to every node that runs it.
   */
  specBytes: 256 * 1024,
  /**
   * How deeply a spec's text may nest collections, as counted before it is parsed (an
   * upper bound, at most twice the real depth). The deepest field of a real spec is 6
   * levels down; the YAML parser recurses per level, and a JSON spec of 1,000 nested
   * lists, 2 KB, crashed the coordinator (V8 ran out of stack inside a regular
   * expression compile, a fatal out-of-memory error).
   */
  specNestingLevels: 64,
  /**
   * A spec's environment: names, values, '=' and a terminator each, as execve counts them.
   * Linux refuses a single string over 128 KiB (MAX_ARG_STRLEN) and all of argv plus env
   * over a quarter of the stack limit; 64 KiB leaves room for argv and stays far below.
   */
  envBytes: 64 * 1024,
  /** Labels on a workload or node (same rule for both, so selectors can match). */
  labelCount: 64,
  /** A label key: DNS-label-like, as in Kubernetes. */
  labelKeyChars: 63,
  /** A label value: a DNS name fits. */
  labelValueChars: 253,
  /** How long a replica may take to stop before it is killed: an hour blocks a rollout long enough. */
  terminationGracePeriodSeconds: 3600,
  /**
   * A probe's period, timeout and initial delay: a day. Node timers take at most 2^31-1 ms
   * (24.8 days); a longer one fires after 1 ms, so a huge period would probe without pause.
   */
  probeSeconds: 86_400,

  // --- The controller -------------------------------------------------------------------
  /**
   * Replica writes (creates, stops, forgets) and placements one controller pass plans; the
   * rest waits for the next pass. Bounds a pass's memory and store transaction volume to one
   * full workload, however much was asked at once (ADR 0026).
   */
  replicasPerPass: 10_000,

  // --- Requests -------------------------------------------------------------------------
  /**
   * Any one request message, checked by the server before it parses it. Far above every
   * bound below (a spec, a CSR); only the egress probe's stream sends more, in chunks.
   */
  requestBytes: 4 * 1024 * 1024,
  /** A node's certificate signing request, PEM: a 4096-bit RSA CSR is under 2 KiB. */
  csrPemBytes: 16 * 1024,
  /** A region or zone: a DNS label. */
  localityChars: 63,
  /** A bootstrap token lives at most 30 days: a token is a secret that enrolls a machine. */
  tokenTtlSeconds: 30 * 24 * 3600,
  /** A bootstrap token's description, shown in `token list`. */
  tokenDescriptionChars: 256,
  /**
   * Users (client identities with a role) a cluster keeps, revoked ones included: `user
   * list` answers them in one message, and each is a store record read per request.
   */
  users: 1_000,
  // --- Secrets (REQ-063) ------------------------------------------------------------------
  /** Keys in one secret (files in its mount): Kubernetes secrets rarely hold more than a few. */
  secretKeysPerSecret: 64,
  /** A secret key's name: a file name under the mount path, like a Kubernetes secret key. */
  secretKeyNameChars: 253,
  /**
   * One value, in bytes: certificates, keys and tokens are a few KiB. Sealed and encoded it
   * grows by about 1.8x, and every coordinator keeps the record in its store.
   */
  secretValueBytes: 128 * 1024,
  /**
   * All values of one secret together: Kubernetes allows 1 MiB; the sealed record (base64
   * of base64, about 1.8x) must stay well inside etcd's 1.5 MiB request limit.
   */
  secretTotalBytes: 256 * 1024,
  /** Secrets one workload may reference: each is fetched for every replica it starts. */
  secretsPerWorkload: 32,
  /** Secrets in one namespace: `secret list` and `secret rotate-key` walk them all. */
  secretsPerNamespace: 1_000,
  // --- Configuration objects (issue 15, hot reload) ---------------------------------------
  /** Keys in one config (files in its mount), as for secrets. */
  configKeysPerConfig: 64,
  /** A config key's name: a file name under the mount path. */
  configKeyNameChars: 253,
  /**
   * All values of one config together: Kubernetes ConfigMaps allow 1 MiB; every coordinator
   * keeps the record and every node running a replica that mounts it keeps a copy.
   */
  configTotalBytes: 512 * 1024,
  /** Configs one workload may reference: each is fetched for every replica it starts. */
  configsPerWorkload: 32,
  /** Configs in one namespace: `config list` walks them all. */
  configsPerNamespace: 1_000,
  /**
   * A replica token (ADR 0058) lives 5 minutes: long enough for an agent to fetch a
   * replica's secrets and configs and follow a few updates, short enough that a token
   * copied off a node is soon useless. The agent renews it 1 minute before it expires.
   */
  replicaTokenTtlMs: 5 * 60_000,
  /** A replica token as sent: an Ed25519 JWT is ~400 characters; anything far longer is refused unread. */
  replicaTokenChars: 4096,
  /**
   * Clock difference tolerated between coordinators in HA when checking a replica
   * token's `iat` and `exp`: NTP keeps hosts far closer; small against the 5-minute life.
   */
  replicaTokenClockSkewMs: 5_000,
  /**
   * A coordinator signs replica tokens with one key pair for 6 hours, then makes a new
   * one; the public key stays in the store one token life longer, then goes.
   */
  replicaTokenKeyLifeMs: 6 * 3600_000,
  /** Environment variables one workload may take from its secrets (`spec.secrets[].env`). */
  secretEnvPerWorkload: 64,
  /** A mount path in a replica (`mountPath`): a Linux path, well under PATH_MAX. */
  mountPathChars: 1024,
  /** Events one ListEvents returns: the whole retained log (10,000 events by default). */
  eventsPerList: 10_000,
  /** Event types one query may filter on: there are a few dozen types. */
  eventTypesPerQuery: 64,
  /** An event subject filter (`workload/<namespace>/<name>` is at most 135 characters). */
  eventSubjectChars: 512,
  /** Lines `workload logs --tail` may ask for; each line crosses the agent's stream. */
  logTailLines: 100_000,
  /** Arguments of one `workload exec` command, all together, in bytes (sent to the node). */
  execCommandBytes: 64 * 1024,
  /** How long one `workload exec` may run: the CLI holds a request open meanwhile. */
  execTimeoutSeconds: 300,
  /** How long one `workload rollout status` stream may follow a rollout: a day. */
  rolloutStatusTimeoutSeconds: 86_400,
} as const;

export type LimitName = keyof typeof limits;

/** How an error names the limit it enforces: `(limit replicasPerWorkload)`. */
export function limitRef(name: LimitName): string {
  return `(limit ${name})`;
}

/** A byte count as people read it: 262144 → "256 KiB", 4194304 → "4 MiB". */
export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * 1024 && bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

/**
 * The one answer to a spec over specBytes, whoever finds it: the CLI before it sends, the
 * handler, or the server's edge when the request is too large to read at all.
 */
export function specTooLargeMessage(what = "workload spec"): string {
  return (
    `${what} is larger than ${formatBytes(limits.specBytes)} ${limitRef("specBytes")}; ` +
    "make it smaller (move large data out of env, command and args)"
  );
}

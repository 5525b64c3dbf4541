/**
 * The tamper-evident audit log (NFR-C1): one JSON line per state-changing request — who,
 * what, when, from where, result — in which every entry carries the hash of the one before.
 *
 * Format (docs/operations/audit.md, decision 0008): each line is the canonical JSON (keys
 * sorted, no whitespace) of an entry; `hash` is the SHA-256 (hex) of the canonical JSON of
 * the entry without `hash`; `prevHash` is the previous entry's hash, 64 zeros for the first
 * entry of a chain. `seq` counts up by one across restarts and rotations, and a rotated-in
 * file starts with the last hash of the file before it. `verifyAuditLog` recomputes all of
 * it and names the first line that does not fit.
 *
 * Only the fields of `AuditRecord` are written: never request or response bodies, so never
 * tokens, CSRs or keys (and any bootstrap token pasted into a name or message is masked).
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { chmod, type FileHandle, mkdir, open, rename, rm } from "node:fs/promises";
import * as path from "node:path";
import { redactToken } from "../api/token.js";
import { syncDirectory } from "../lib/atomicFile.js";
import { canonicalJson } from "../lib/canonicalJson.js";
import { type Clock, systemClock } from "../lib/clock.js";
import { type Logger, silentLogger } from "./logger.js";

/** The prevHash of the first entry of a chain. */
export const genesisHash = "0".repeat(64);
export const auditFileName = "audit.log";

/** What a caller records about one request. */
export interface AuditRecord {
  /** `admin/admin`, `node/a`, `anonymous@10.0.0.7:51234`. */
  actor: string;
  /** Where the request came from, `ip:port`. */
  address: string;
  /** `cloudless.v1.NodeService/CordonNode`. */
  method: string;
  /** What the request was about, e.g. `node/a`, `workload/default/web`, `token/abc`; or "". */
  target: string;
  /** `ok`, or the error code (`PermissionDenied`, `Unauthenticated`, …). */
  result: string;
  /** The error message, when the request failed. */
  error?: string;
  durationMs: number;
  /** Set (true) for a dry-run apply, which changes nothing. */
  dryRun?: boolean;
}

/** One line of the audit log. */
export interface AuditEntry extends AuditRecord {
  seq: number;
  /** ISO 8601, when the request was recorded. */
  time: string;
  prevHash: string;
  hash: string;
}

export interface AuditLogOptions {
  /** The directory that holds audit.log (created 0700). */
  dir: string;
  clock?: Clock;
  logger?: Logger;
  /** Rotate before a write would take the file past this size. Default 64 MiB. */
  maxFileBytes?: number;
  /** Rotated files kept (audit.log.1 … audit.log.N). Default 10. */
  keepFiles?: number;
  /** Entries waiting to be written; beyond this, entries are dropped and counted. Default 10,000. */
  maxQueue?: number;
  /** Entries per write + fdatasync. Default 500. */
  maxBatch?: number;
  /**
   * Refused anonymous requests recorded per source host per window, and in all; the rest
   * are counted into one summary entry per host, so an unauthenticated flood cannot rotate
   * real entries away. Defaults 20 per host and 200 in all per 10 s.
   */
  anonymousLimit?: { perHost: number; total: number; windowMs: number };
}

export interface AuditRecordOptions {
  /**
   * Rate-limit this entry under the anonymous limit, keyed by this source host. For refused
   * requests from callers without an identity; everything else is always recorded.
   */
  anonymousHost?: string;
}

interface Pending {
  record: AuditRecord;
  timeMs: number;
  resolve: () => void;
}

interface ChainHead {
  seq: number;
  hash: string;
}

const limits = { actor: 256, address: 128, method: 128, target: 256, error: 1000 } as const;
const tailBytes = 256 * 1024;
const summaryHostsMax = 50;

/**
 * An append-only, hash-chained JSON-lines file. `record` queues an entry and resolves once
 * it is on disk (written and fdatasync'ed, in batches) — or at once if it had to be dropped;
 * it never rejects, so auditing never fails a request.
 */
export class AuditLog {
  readonly path: string;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly maxFileBytes: number;
  private readonly keepFiles: number;
  private readonly maxQueue: number;
  private readonly maxBatch: number;
  private readonly limiter: AnonymousLimiter;
  private queue: Pending[] = [];
  private writing: Promise<void> | undefined;
  private closed = false;
  private droppedTotal = 0;
  private droppedUnreported = 0;
  private writtenTotal = 0;

  private constructor(
    private readonly dir: string,
    private handle: FileHandle,
    private size: number,
    private head: ChainHead,
    options: AuditLogOptions,
  ) {
    this.path = path.join(dir, auditFileName);
    this.clock = options.clock ?? systemClock;
    this.logger = options.logger ?? silentLogger;
    this.maxFileBytes = options.maxFileBytes ?? 64 * 1024 * 1024;
    this.keepFiles = Math.max(1, options.keepFiles ?? 10);
    this.maxQueue = options.maxQueue ?? 10_000;
    this.maxBatch = options.maxBatch ?? 500;
    this.limiter = new AnonymousLimiter(
      options.anonymousLimit ?? { perHost: 20, total: 200, windowMs: 10_000 },
    );
  }

  /**
   * Opens (or creates) `<dir>/audit.log` and continues the chain found at its end. A file
   * whose last line is damaged (a crash mid-write, or tampering) is rotated aside untouched,
   * and the new file continues from the last intact entry.
   */
  static async open(options: AuditLogOptions): Promise<AuditLog> {
    const dir = path.resolve(options.dir);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    const file = path.join(dir, auditFileName);
    const handle = await openAuditFile(file);
    const { size } = await handle.stat();
    let head: ChainHead = { seq: 0, hash: genesisHash };
    let damaged = false;
    if (size > 0) {
      const tail = await readTail(handle, size);
      damaged = tail.damaged;
      head = tail.head ?? head;
      if (tail.damaged) {
        (options.logger ?? silentLogger).warn(
          { file, continuesFromSeq: head.seq },
          "the audit log ends with a damaged line; it is rotated aside and a new file continues the chain",
        );
      }
    }
    const log = new AuditLog(dir, handle, size, head, options);
    if (damaged) await log.rotate();
    return log;
  }

  /** Entries dropped so far (queue full, write failure, or recorded after close). */
  get dropped(): number {
    return this.droppedTotal;
  }

  /** Entries written so far by this instance (summaries included). */
  get written(): number {
    return this.writtenTotal;
  }

  /** The seq and hash of the last entry written. */
  get lastEntry(): { seq: number; hash: string } {
    return { ...this.head };
  }

  record(record: AuditRecord, options: AuditRecordOptions = {}): Promise<void> {
    const nowMs = this.clock.nowMs();
    if (this.closed) {
      this.noteDropped(1);
      return Promise.resolve();
    }
    for (const summary of this.limiter.roll(nowMs)) this.enqueue(summary, nowMs);
    if (options.anonymousHost !== undefined && !this.limiter.admit(options.anonymousHost)) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      if (!this.enqueue(record, nowMs, resolve)) resolve();
    });
  }

  /** Resolves when every entry queued so far is on disk. */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
  }

  /** Writes what is queued (and any pending summaries), then closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    for (const summary of this.limiter.roll(Number.POSITIVE_INFINITY)) {
      this.enqueue(summary, this.clock.nowMs());
    }
    this.closed = true;
    await this.flush();
    await this.handle.close();
  }

  private enqueue(record: AuditRecord, timeMs: number, resolve: () => void = () => {}): boolean {
    if (this.queue.length >= this.maxQueue) {
      this.noteDropped(1);
      return false;
    }
    this.queue.push({ record, timeMs, resolve });
    this.kick();
    return true;
  }

  private kick(): void {
    if (this.writing) return;
    this.writing = this.drain().finally(() => {
      this.writing = undefined;
      if (this.queue.length > 0) this.kick();
    });
  }

  private noteDropped(count: number): void {
    if (this.droppedUnreported === 0) {
      this.logger.warn(
        { dropped: this.droppedTotal + count, file: this.path },
        "audit entries dropped (queue full, write failure or shutdown)",
      );
    }
    this.droppedTotal += count;
    this.droppedUnreported += count;
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, this.maxBatch);
      const records = batch.map((item) => ({ record: item.record, timeMs: item.timeMs }));
      const reportedDrops = this.droppedUnreported;
      if (reportedDrops > 0) {
        records.unshift({
          record: {
            actor: "coordinator",
            address: "",
            method: "cloudless.audit/EntriesDropped",
            target: "",
            result: "Dropped",
            error: `${reportedDrops} audit entries before this one were not written (queue full, write failure or shutdown)`,
            durationMs: 0,
          },
          timeMs: this.clock.nowMs(),
        });
      }
      let head = this.head;
      const lines: string[] = [];
      for (const { record, timeMs } of records) {
        const entry = buildEntry(record, head, timeMs);
        head = { seq: entry.seq, hash: entry.hash };
        lines.push(`${canonicalJson(entry)}\n`);
      }
      const buffer = Buffer.from(lines.join(""), "utf8");
      try {
        if (this.size > 0 && this.size + buffer.length > this.maxFileBytes) await this.rotate();
        await writeAll(this.handle, buffer);
        await this.handle.datasync();
        this.size += buffer.length;
        this.head = head;
        this.writtenTotal += records.length;
        this.droppedUnreported -= reportedDrops;
      } catch (error) {
        this.logger.error({ err: error, file: this.path }, "cannot write the audit log");
        // Leave no partial line behind: the chain continues from the last written entry.
        await this.handle.truncate(this.size).catch(() => undefined);
        this.noteDropped(batch.length);
      }
      for (const item of batch) item.resolve();
    }
  }

  /** audit.log → audit.log.1 → … → audit.log.N (the oldest is removed); a new audit.log. */
  private async rotate(): Promise<void> {
    const file = this.path;
    await rm(`${file}.${this.keepFiles}`, { force: true });
    for (let index = this.keepFiles - 1; index >= 1; index--) {
      await rename(`${file}.${index}`, `${file}.${index + 1}`).catch((error: unknown) => {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      });
    }
    await rename(file, `${file}.1`);
    const next = await openAuditFile(file);
    const previous = this.handle;
    this.handle = next;
    this.size = 0;
    await previous.close().catch(() => undefined);
    await syncDirectory(this.dir);
    this.logger.info({ file, continuesFromSeq: this.head.seq }, "audit log rotated");
  }
}

async function openAuditFile(file: string): Promise<FileHandle> {
  const handle = await open(file, "a+", 0o600);
  try {
    await handle.chmod(0o600);
  } catch (error) {
    await handle.close();
    throw error;
  }
  return handle;
}

async function writeAll(handle: FileHandle, buffer: Buffer): Promise<void> {
  let offset = 0;
  while (offset < buffer.length) {
    const { bytesWritten } = await handle.write(buffer, offset, buffer.length - offset);
    offset += bytesWritten;
  }
}

/** The last intact entry at the end of a file, and whether the last line is damaged. */
async function readTail(
  handle: FileHandle,
  size: number,
): Promise<{ head?: ChainHead; damaged: boolean }> {
  const length = Math.min(size, tailBytes);
  const buffer = Buffer.alloc(length);
  await handle.read(buffer, 0, length, size - length);
  const text = buffer.toString("utf8");
  const lines = text.split("\n");
  // The first piece may start mid-line unless the whole file was read.
  if (length < size) lines.shift();
  const endsWithNewline = text.endsWith("\n");
  if (endsWithNewline) lines.pop();
  let damaged = !endsWithNewline;
  for (let index = lines.length - 1; index >= 0; index--) {
    const entry = parseEntry(lines[index] ?? "");
    if (typeof entry === "string") {
      damaged = true;
      continue;
    }
    return { head: { seq: entry.seq, hash: entry.hash }, damaged };
  }
  return { damaged: true };
}

function buildEntry(record: AuditRecord, head: ChainHead, timeMs: number): AuditEntry {
  const body: Omit<AuditEntry, "hash"> = {
    seq: head.seq + 1,
    time: new Date(timeMs).toISOString(),
    actor: clean(record.actor, limits.actor),
    address: clean(record.address, limits.address),
    method: clean(record.method, limits.method),
    target: clean(record.target, limits.target),
    result: clean(record.result, limits.method),
    ...(record.error !== undefined ? { error: clean(record.error, limits.error) } : {}),
    durationMs: Math.max(0, Math.round(Number.isFinite(record.durationMs) ? record.durationMs : 0)),
    ...(record.dryRun ? { dryRun: true } : {}),
    prevHash: head.hash,
  };
  return { ...body, hash: entryHash(body) };
}

/** Bounded, token-masked, newline-free text. */
function clean(text: string, max: number): string {
  const masked = redactToken(String(text)).replace(/\s*\n\s*/g, "; ");
  return masked.length > max ? `${masked.slice(0, max - 1)}…` : masked;
}

/** SHA-256 (hex) of the canonical JSON of an entry without its `hash`. */
export function entryHash(entry: object): string {
  const { hash: _ignored, ...rest } = entry as Record<string, unknown>;
  return createHash("sha256").update(canonicalJson(rest)).digest("hex");
}

// ---------------------------------------------------------------------------------------------
// Verification

export type AuditVerifyResult =
  | { ok: true; entries: number; firstSeq?: number; lastSeq?: number; lastHash?: string }
  | { ok: false; line: number; seq?: number; reason: string };

export interface AuditVerifyOptions {
  /**
   * The chain this file continues (the last entry of the file rotated out before it). Without
   * it, a file whose first entry is seq 1 must start at 64 zeros, and any other file is taken
   * to continue a chain whose earlier files are not at hand.
   */
  previous?: { seq: number; hash: string };
}

const hexHash = /^[0-9a-f]{64}$/;

/**
 * Recomputes every hash and checks the chain: reports the FIRST line that is not valid
 * JSON, altered (hash mismatch or not as written), out of the chain (prevHash is not the
 * previous line's hash: an entry missing, reordered or inserted) or out of sequence.
 */
export async function verifyAuditLog(
  file: string,
  options: AuditVerifyOptions = {},
): Promise<AuditVerifyResult> {
  let previous: ChainHead | undefined = options.previous;
  let entries = 0;
  let firstSeq: number | undefined;
  let lineNumber = 0;
  for await (const line of readLines(file)) {
    lineNumber++;
    const entry = parseEntry(line);
    if (typeof entry === "string") return { ok: false, line: lineNumber, reason: entry };
    const seq = entry.seq;
    const fail = (reason: string): AuditVerifyResult => ({
      ok: false,
      line: lineNumber,
      seq,
      reason,
    });
    const expectedHash = entryHash(entry);
    if (expectedHash !== entry.hash) {
      return fail("hash mismatch: this entry was altered after it was written");
    }
    if (canonicalJson(entry) !== line) {
      return fail("the entry is not byte-for-byte as written (its formatting was altered)");
    }
    if (previous) {
      if (entry.prevHash !== previous.hash) {
        return fail(
          lineNumber === 1
            ? `prevHash does not match the last hash of the previous file (seq ${previous.seq}): the files do not chain`
            : `prevHash does not match the hash of line ${lineNumber - 1}: an entry before this one is missing, reordered or altered`,
        );
      }
      if (seq !== previous.seq + 1) {
        return fail(`sequence gap: expected seq ${previous.seq + 1}, found ${seq}`);
      }
    } else if (seq === 1 && entry.prevHash !== genesisHash) {
      return fail("the first entry of a chain (seq 1) must have a prevHash of 64 zeros");
    }
    previous = { seq, hash: entry.hash };
    firstSeq ??= seq;
    entries++;
  }
  return {
    ok: true,
    entries,
    ...(firstSeq !== undefined && previous
      ? { firstSeq, lastSeq: previous.seq, lastHash: previous.hash }
      : {}),
  };
}

/** The entry on a line, or why it is not one. */
function parseEntry(line: string): AuditEntry | string {
  if (line.length === 0) return "empty line";
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return "not valid JSON (truncated, altered or appended)";
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return "not an audit entry (expected a JSON object)";
  }
  const entry = value as Record<string, unknown>;
  for (const field of ["time", "actor", "address", "method", "target", "result"] as const) {
    if (typeof entry[field] !== "string") return `not an audit entry: "${field}" is missing`;
  }
  if (!Number.isSafeInteger(entry.seq) || (entry.seq as number) < 1) {
    return 'not an audit entry: "seq" must be a positive integer';
  }
  if (!Number.isSafeInteger(entry.durationMs)) {
    return 'not an audit entry: "durationMs" must be an integer';
  }
  for (const field of ["prevHash", "hash"] as const) {
    if (typeof entry[field] !== "string" || !hexHash.test(entry[field] as string)) {
      return `not an audit entry: "${field}" must be 64 hex digits`;
    }
  }
  if (entry.error !== undefined && typeof entry.error !== "string") {
    return 'not an audit entry: "error" must be a string';
  }
  return entry as unknown as AuditEntry;
}

/** The lines of a file split on "\n" only; a final line without "\n" is yielded too. */
async function* readLines(file: string): AsyncGenerator<string> {
  let rest = Buffer.alloc(0);
  for await (const chunk of createReadStream(file)) {
    let data = rest.length > 0 ? Buffer.concat([rest, chunk as Buffer]) : (chunk as Buffer);
    let start = 0;
    for (let index = data.indexOf(0x0a); index !== -1; index = data.indexOf(0x0a, start)) {
      yield data.subarray(start, index).toString("utf8");
      start = index + 1;
    }
    data = data.subarray(start);
    rest = Buffer.from(data);
  }
  if (rest.length > 0) yield rest.toString("utf8");
}

// ---------------------------------------------------------------------------------------------
// Anonymous refusals

/**
 * Admits at most `perHost` entries per source host and `total` in all per window; counts
 * the rest and turns the counts into one summary entry per host when the window ends.
 */
class AnonymousLimiter {
  private windowStartMs = Number.NEGATIVE_INFINITY;
  private total = 0;
  private readonly perHost = new Map<string, number>();
  private readonly suppressed = new Map<string, number>();

  constructor(private readonly config: { perHost: number; total: number; windowMs: number }) {}

  admit(host: string): boolean {
    const count = this.perHost.get(host) ?? 0;
    if (count >= this.config.perHost || this.total >= this.config.total) {
      this.suppressed.set(host, (this.suppressed.get(host) ?? 0) + 1);
      return false;
    }
    if (this.perHost.size < 100_000 || this.perHost.has(host)) this.perHost.set(host, count + 1);
    this.total++;
    return true;
  }

  /** Starts a new window when the current one is over; returns its summaries. */
  roll(nowMs: number): AuditRecord[] {
    if (nowMs - this.windowStartMs < this.config.windowMs) return [];
    const windowMs = this.config.windowMs;
    this.windowStartMs = nowMs === Number.POSITIVE_INFINITY ? this.windowStartMs : nowMs;
    this.total = 0;
    this.perHost.clear();
    if (this.suppressed.size === 0) return [];
    const sorted = [...this.suppressed.entries()].sort((a, b) => b[1] - a[1]);
    this.suppressed.clear();
    const summary = (host: string, count: number, what: string): AuditRecord => ({
      actor: host === "*" ? "anonymous" : `anonymous@${host}`,
      address: host,
      method: "cloudless.audit/RefusalsSuppressed",
      target: "",
      result: "Suppressed",
      error: `${count} more refused requests ${what} were not recorded one by one (more than the limit per ${windowMs} ms)`,
      durationMs: 0,
    });
    const records = sorted
      .slice(0, summaryHostsMax)
      .map(([host, count]) => summary(host, count, "from this host"));
    const others = sorted.slice(summaryHostsMax);
    if (others.length > 0) {
      const count = others.reduce((sum, [, n]) => sum + n, 0);
      records.push(summary("*", count, `from ${others.length} other hosts`));
    }
    return records;
  }
}

/** The host part of `ip:port` (IPv6 as printed by Node, without brackets). */
export function hostOf(address: string): string {
  return address.replace(/:\d+$/, "");
}

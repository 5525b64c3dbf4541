import { appendFile, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { canonicalJson } from "../lib/canonicalJson.js";
import { ManualClock } from "../lib/clock.js";
import {
  type AuditEntry,
  AuditLog,
  type AuditLogOptions,
  type AuditRecord,
  auditFileName,
  entryHash,
  genesisHash,
  verifyAuditLog,
} from "./audit.js";

function sample(index: number, overrides: Partial<AuditRecord> = {}): AuditRecord {
  return {
    actor: "admin/admin",
    address: "127.0.0.1:40000",
    method: "cloudless.v1.NodeService/CordonNode",
    target: `node/n${index}`,
    result: "ok",
    durationMs: 3,
    ...overrides,
  };
}

describe("NFR-C1 audit log", () => {
  let dir: string;
  let logs: AuditLog[];

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-audit-"));
    logs = [];
  });
  afterEach(async () => {
    for (const log of logs) await log.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function open(options: Partial<AuditLogOptions> = {}): Promise<AuditLog> {
    const log = await AuditLog.open({ dir, ...options });
    logs.push(log);
    return log;
  }

  const file = () => path.join(dir, auditFileName);

  async function lines(name = auditFileName): Promise<string[]> {
    const text = await readFile(path.join(dir, name), "utf8");
    return text.split("\n").filter((line) => line.length > 0);
  }

  async function entries(name = auditFileName): Promise<AuditEntry[]> {
    return (await lines(name)).map((line) => JSON.parse(line) as AuditEntry);
  }

  async function writeLog(count: number): Promise<string[]> {
    const log = await open();
    for (let i = 1; i <= count; i++) await log.record(sample(i));
    await log.close();
    return lines();
  }

  it("chains entries by hash: seq from 1, prevHash of the first is 64 zeros, each line canonical", async () => {
    const log = await open();
    for (let i = 1; i <= 5; i++) await log.record(sample(i));
    await log.record(
      sample(6, { result: "PermissionDenied", error: "only administrators may do this" }),
    );
    await log.close();

    const written = await entries();
    expect(written.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(written[0]?.prevHash).toBe(genesisHash);
    for (let i = 1; i < written.length; i++) {
      expect(written[i]?.prevHash).toBe(written[i - 1]?.hash);
    }
    for (const entry of written) {
      expect(entry.hash).toBe(entryHash(entry));
      expect(entry.hash).toMatch(/^[0-9a-f]{64}$/);
      expect(Number.isNaN(Date.parse(entry.time))).toBe(false);
    }
    expect(written[5]).toMatchObject({
      actor: "admin/admin",
      address: "127.0.0.1:40000",
      method: "cloudless.v1.NodeService/CordonNode",
      target: "node/n6",
      result: "PermissionDenied",
      error: "only administrators may do this",
    });
    expect(written[0]).not.toHaveProperty("error");
    for (const line of await lines()) expect(line).toBe(canonicalJson(JSON.parse(line)));
    expect(await verifyAuditLog(file())).toMatchObject({ ok: true, entries: 6, lastSeq: 6 });
  });

  it("NFR-C1 contract: a fixed vector keeps the hash of a written entry (one canonical JSON, ADR 0038)", () => {
    // Computed by audit.ts's own canonical JSON before it moved to lib/canonicalJson.ts:
    // logs written before the move must still verify after it.
    const entry = {
      seq: 7,
      time: "2024-05-01T12:00:00.000Z",
      actor: "admin/admin",
      address: "127.0.0.1:5000",
      method: "cloudless.v1.WorkloadService/Apply",
      target: "workload/shop/vec",
      result: "ok",
      durationMs: 12.5,
      prevHash: genesisHash,
      dryRun: true,
      error: undefined,
    };
    expect(canonicalJson(entry)).toBe(
      '{"actor":"admin/admin","address":"127.0.0.1:5000","dryRun":true,"durationMs":12.5,"method":"cloudless.v1.WorkloadService/Apply","prevHash":"0000000000000000000000000000000000000000000000000000000000000000","result":"ok","seq":7,"target":"workload/shop/vec","time":"2024-05-01T12:00:00.000Z"}',
    );
    expect(entryHash(entry)).toBe(
      "598ab1bb87ee8d4b800817ca5614fb445cbef4caafe9a52f5f314591a50ba17f",
    );
  });

  it("creates the directory 0700 and the file 0600", async () => {
    const log = await open();
    await log.record(sample(1));
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(file())).mode & 0o777).toBe(0o600);
  });

  it("masks bootstrap tokens and keeps fields bounded and on one line", async () => {
    const token = `CL1::${"a".repeat(64)}::abcdefghij.${"S".repeat(40)}`;
    const log = await open();
    await log.record(
      sample(1, {
        target: `node/${token}`,
        result: "InvalidArgument",
        error: `bad name ${token}\nsecond line ${"x".repeat(5000)}`,
      }),
    );
    await log.close();
    const text = await readFile(file(), "utf8");
    expect(text).not.toContain("S".repeat(40));
    expect(text).toContain("[REDACTED]");
    const [entry] = await entries();
    expect(entry?.error?.length).toBeLessThanOrEqual(1000);
    expect(entry?.error).not.toContain("\n");
    expect(text.split("\n")).toHaveLength(2);
    expect((await verifyAuditLog(file())).ok).toBe(true);
  });

  it("continues the same chain after a restart", async () => {
    const first = await open();
    for (let i = 1; i <= 3; i++) await first.record(sample(i));
    await first.close();
    const second = await open();
    expect(second.lastEntry.seq).toBe(3);
    for (let i = 4; i <= 5; i++) await second.record(sample(i));
    await second.close();

    const written = await entries();
    expect(written.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(written[3]?.prevHash).toBe(written[2]?.hash);
    expect(await verifyAuditLog(file())).toMatchObject({ ok: true, entries: 5 });
  });

  it("rotates to audit.log.1 … audit.log.N, keeps N, and each new file continues the chain", async () => {
    const log = await open({ maxFileBytes: 1200, keepFiles: 3 });
    for (let i = 1; i <= 40; i++) await log.record(sample(i));
    await log.close();

    const names = ["audit.log.3", "audit.log.2", "audit.log.1", auditFileName];
    for (const name of names) expect((await stat(path.join(dir, name))).size).toBeLessThan(1200);
    await expect(stat(path.join(dir, "audit.log.4"))).rejects.toThrow();

    // The kept files chain into each other, oldest first, and end with the last entry.
    let previous: { seq: number; hash: string } | undefined;
    for (const name of names) {
      const before = previous;
      const result = await verifyAuditLog(path.join(dir, name), before ? { previous: before } : {});
      expect(result.ok, JSON.stringify(result)).toBe(true);
      if (!result.ok) return;
      const [first] = await entries(name);
      if (before) {
        expect(first?.prevHash).toBe(before.hash);
        expect(first?.seq).toBe(before.seq + 1);
      }
      previous = { seq: result.lastSeq as number, hash: result.lastHash as string };
    }
    expect(previous?.seq).toBe(40);

    // A file checked against the wrong predecessor does not chain.
    const wrong = await verifyAuditLog(file(), { previous: { seq: 1, hash: genesisHash } });
    expect(wrong).toMatchObject({ ok: false, line: 1 });

    // After a restart the current file still continues the chain.
    const reopened = await open({ maxFileBytes: 1200, keepFiles: 3 });
    expect(reopened.lastEntry.seq).toBe(40);
  });

  it("verify reports one altered byte in the middle entry on that line", async () => {
    const written = await writeLog(5);
    const altered = [...written];
    altered[2] = (altered[2] as string).replace('"actor":"admin/admin"', '"actor":"admin/admim"');
    expect(altered[2]).not.toBe(written[2]);
    await writeFile(file(), `${altered.join("\n")}\n`);
    const result = await verifyAuditLog(file());
    expect(result).toMatchObject({ ok: false, line: 3, seq: 3 });
    if (!result.ok) expect(result.reason).toMatch(/hash mismatch/);
  });

  it("verify reports a changed digit of the result, and re-formatting, on that line", async () => {
    const written = await writeLog(4);
    const altered = [...written];
    altered[1] = (altered[1] as string).replace('"durationMs":3', '"durationMs":4');
    await writeFile(file(), `${altered.join("\n")}\n`);
    expect(await verifyAuditLog(file())).toMatchObject({ ok: false, line: 2, seq: 2 });

    const spaced = [...written];
    spaced[3] = (spaced[3] as string).replace('"result":', '"result": ');
    await writeFile(file(), `${spaced.join("\n")}\n`);
    const result = await verifyAuditLog(file());
    expect(result).toMatchObject({ ok: false, line: 4, seq: 4 });
    if (!result.ok) expect(result.reason).toMatch(/formatting/);
  });

  it("verify reports a deleted line at the next line, whose prevHash no longer links", async () => {
    const written = await writeLog(5);
    await writeFile(file(), `${written.filter((_, i) => i !== 2).join("\n")}\n`);
    const result = await verifyAuditLog(file());
    expect(result).toMatchObject({ ok: false, line: 3, seq: 4 });
    if (!result.ok) expect(result.reason).toMatch(/prevHash .*line 2.*missing, reordered/);
  });

  it("verify reports swapped lines at the first of them", async () => {
    const written = await writeLog(5);
    const swapped = [...written];
    [swapped[1], swapped[2]] = [swapped[2] as string, swapped[1] as string];
    await writeFile(file(), `${swapped.join("\n")}\n`);
    const result = await verifyAuditLog(file());
    expect(result).toMatchObject({ ok: false, line: 2, seq: 3 });
    if (!result.ok) expect(result.reason).toMatch(/prevHash/);
  });

  it("verify reports a truncated last line", async () => {
    const written = await writeLog(4);
    const text = `${written.join("\n")}\n`;
    await writeFile(file(), text.slice(0, text.length - 20));
    const result = await verifyAuditLog(file());
    expect(result).toMatchObject({ ok: false, line: 4 });
    if (!result.ok) expect(result.reason).toMatch(/not valid JSON/);
  });

  it("verify reports appended garbage and a forged first entry", async () => {
    await writeLog(3);
    await appendFile(file(), "hello\n");
    expect(await verifyAuditLog(file())).toMatchObject({ ok: false, line: 4 });

    // A forged first entry with a self-consistent hash but no genesis link.
    const forgedBody = {
      seq: 1,
      time: new Date().toISOString(),
      actor: "admin/admin",
      address: "x",
      method: "m",
      target: "",
      result: "ok",
      durationMs: 0,
      prevHash: "1".repeat(64),
    };
    await writeFile(file(), `${canonicalJson({ ...forgedBody, hash: entryHash(forgedBody) })}\n`);
    expect(await verifyAuditLog(file())).toMatchObject({ ok: false, line: 1, seq: 1 });
  });

  it("an empty file verifies; a missing file is an error", async () => {
    await writeFile(file(), "");
    expect(await verifyAuditLog(file())).toEqual({ ok: true, entries: 0 });
    await expect(verifyAuditLog(path.join(dir, "nope.log"))).rejects.toThrow(/ENOENT/);
  });

  it("many concurrent records produce one valid chain, written in batches", async () => {
    const log = await open({ maxBatch: 64 });
    await Promise.all(Array.from({ length: 2000 }, (_, i) => log.record(sample(i))));
    expect(log.written).toBe(2000);
    expect(log.dropped).toBe(0);
    await log.close();
    const result = await verifyAuditLog(file());
    expect(result).toMatchObject({ ok: true, entries: 2000, lastSeq: 2000 });
    const targets = new Set((await entries()).map((e) => e.target));
    expect(targets.size).toBe(2000);
  });

  it("a full queue drops entries without failing callers, and says so in the chain", async () => {
    const log = await open({ maxQueue: 5 });
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => log.record(sample(i))));
    expect(results).toHaveLength(50);
    expect(log.dropped).toBeGreaterThan(0);
    const dropped = log.dropped;
    await log.record(sample(99));
    await log.close();
    const written = await entries();
    const notice = written.find((e) => e.method === "cloudless.audit/EntriesDropped");
    expect(notice?.error).toContain(`${dropped} audit entries`);
    expect(written.length).toBe(50 - dropped + 1 + 1);
    expect((await verifyAuditLog(file())).ok).toBe(true);
  });

  it("records after close are dropped, not thrown", async () => {
    const log = await open();
    await log.close();
    await expect(log.record(sample(1))).resolves.toBeUndefined();
    expect(log.dropped).toBe(1);
  });

  it("limits refused anonymous entries per host and summarises the rest", async () => {
    const clock = new ManualClock();
    const log = await open({ clock, anonymousLimit: { perHost: 2, total: 3, windowMs: 1000 } });
    const anonymous = (host: string) =>
      sample(0, {
        actor: `anonymous@${host}:5000`,
        address: `${host}:5000`,
        result: "Unauthenticated",
      });
    for (let i = 0; i < 5; i++)
      await log.record(anonymous("10.0.0.1"), { anonymousHost: "10.0.0.1" });
    await log.record(anonymous("10.0.0.2"), { anonymousHost: "10.0.0.2" });
    await log.record(anonymous("10.0.0.3"), { anonymousHost: "10.0.0.3" });
    // Authenticated callers are never limited.
    for (let i = 0; i < 3; i++) await log.record(sample(i));
    expect((await entries()).filter((e) => e.result === "Unauthenticated")).toHaveLength(3);

    clock.advance(1000);
    await log.record(anonymous("10.0.0.1"), { anonymousHost: "10.0.0.1" });
    await log.close();
    const written = await entries();
    const summaries = written.filter((e) => e.method === "cloudless.audit/RefusalsSuppressed");
    expect(summaries.map((e) => [e.actor, e.error?.split(" ")[0]])).toEqual([
      ["anonymous@10.0.0.1", "3"],
      ["anonymous@10.0.0.3", "1"],
    ]);
    expect(written.at(-1)?.actor).toBe("anonymous@10.0.0.1:5000");
    expect((await verifyAuditLog(file())).ok).toBe(true);
  });

  it("a damaged last line (crash mid-write) is rotated aside; the new file continues from the last intact entry", async () => {
    const written = await writeLog(3);
    await appendFile(file(), '{"seq":4,"time":"20');
    const log = await open();
    expect(log.lastEntry.seq).toBe(3);
    await log.record(sample(4));
    await log.close();

    expect(await verifyAuditLog(path.join(dir, "audit.log.1"))).toMatchObject({
      ok: false,
      line: 4,
    });
    const last = JSON.parse(written[2] as string) as AuditEntry;
    const result = await verifyAuditLog(file(), { previous: { seq: 3, hash: last.hash } });
    expect(result).toMatchObject({ ok: true, entries: 1, firstSeq: 4 });
  });
});

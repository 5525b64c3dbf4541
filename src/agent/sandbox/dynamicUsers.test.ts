import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DynamicUsers, parseUidRange } from "./dynamicUsers.js";

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function table(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "cloudless-uids-"));
  dirs.push(dir);
  return path.join(dir, "replica-uids.json");
}

describe("REQ-062 dynamic users per workload", () => {
  it("REQ-062 gives each workload its own uid, the same for all its replicas and after a restart, freed with its last replica", async () => {
    const file = await table();
    const users = new DynamicUsers(file, { first: 61184, last: 61186 });
    const a1 = users.acquire("default/a", "a-1");
    const a2 = users.acquire("default/a", "a-2");
    const b1 = users.acquire("default/b", "b-1");
    expect(a1).toBe(61184);
    expect(a2).toBe(a1);
    expect(b1).toBe(61185);
    expect((await stat(file)).mode & 0o777).toBe(0o600);

    // A restarted agent reads the same table.
    const again = new DynamicUsers(file, { first: 61184, last: 61186 });
    expect(again.uidOf("default/a")).toBe(61184);
    again.release("a-1");
    expect(again.uidOf("default/a")).toBe(61184);
    again.release("a-2");
    expect(again.uidOf("default/a")).toBeUndefined();
    expect(again.acquire("default/c", "c-1")).toBe(61184);
    expect(again.acquire("default/d", "d-1")).toBe(61186);
    expect(() => again.acquire("default/e", "e-1")).toThrow(
      /no free replica uid.*--replica-uid-range/,
    );
  });

  it("REQ-062 checks the configured range with one-line errors", () => {
    expect(parseUidRange("61184-65519")).toEqual({ first: 61184, last: 65519 });
    expect(() => parseUidRange("abc")).toThrow(/expected FIRST-LAST/);
    expect(() => parseUidRange("0-100")).toThrow(/between 1 and/);
    expect(() => parseUidRange("200-100")).toThrow(/larger than the last/);
    expect(() => parseUidRange("60000-65535")).toThrow(/reserved uid 65534/);
    expect(() => parseUidRange("100000-300000")).toThrow(/at most 65536/);
  });

  it("REQ-062 refuses a securityContext uid inside the range: it could be another workload's user", async () => {
    const users = new DynamicUsers(await table(), { first: 61184, last: 61186 });
    expect(users.explicitUidProblem(61185)).toMatch(
      /^securityContext\.runAsUser 61185 lies in this node's range of workload users \(61184-61186\)/,
    );
    expect(users.explicitUidProblem(4242)).toBeUndefined();
    expect(users.explicitUidProblem(0)).toBeUndefined();
  });
});

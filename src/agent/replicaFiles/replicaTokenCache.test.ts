import { describe, expect, it } from "vitest";
import { limits } from "../../api/limits.js";
import { ManualClock } from "../../lib/clock.js";
import {
  type IssueToken,
  ReplicaTokenCache,
  type ReplicaTokenRef,
  replicaTokenRenewBeforeMs,
} from "./replicaTokenCache.js";

const web = { namespace: "default", workload: "web", replicaId: "web-1" };
const signal = new AbortController().signal;

function counting(clock: ManualClock) {
  const asked: string[] = [];
  const issue: IssueToken = async (replica: ReplicaTokenRef) => {
    asked.push(replica.replicaId);
    return {
      token: `token-${asked.length}`,
      expiresAtMs: clock.nowMs() + limits.replicaTokenTtlMs,
    };
  };
  return { asked, issue };
}

describe("the agent's replica tokens (REQ-063, ADR 0058)", () => {
  it("REQ-063: one token per replica is reused until a minute before it expires, then renewed", async () => {
    const clock = new ManualClock();
    const { asked, issue } = counting(clock);
    const cache = new ReplicaTokenCache(issue, clock);
    const [a, b] = await Promise.all([cache.token(web, signal), cache.token(web, signal)]);
    expect([a, b]).toEqual(["token-1", "token-1"]);
    clock.stall(limits.replicaTokenTtlMs - replicaTokenRenewBeforeMs - 1);
    expect(await cache.token(web, signal)).toBe("token-1");
    clock.stall(1);
    expect(await cache.token(web, signal)).toBe("token-2");
    expect(asked).toEqual(["web-1", "web-1"]);
  });

  it("REQ-063: a forgotten replica's token is gone; a refusal is not cached", async () => {
    const clock = new ManualClock();
    const { issue } = counting(clock);
    const cache = new ReplicaTokenCache(issue, clock);
    await cache.token(web, signal);
    expect(cache.size).toBe(1);
    cache.forget("web-1");
    expect(cache.size).toBe(0);
    expect(await cache.token(web, signal)).toBe("token-2");

    let refuse = true;
    const refusing = new ReplicaTokenCache(async (replica, s) => {
      if (refuse) throw new Error("PermissionDenied: not assigned");
      return issue(replica, s);
    }, clock);
    await expect(refusing.token(web, signal)).rejects.toThrow(/not assigned/);
    expect(refusing.size).toBe(0);
    refuse = false;
    expect(await refusing.token(web, signal)).toBe("token-3");
  });

  it("REQ-063: a token for another replica of the same id (another workload) is not reused", async () => {
    const clock = new ManualClock();
    const { issue } = counting(clock);
    const cache = new ReplicaTokenCache(issue, clock);
    await cache.token(web, signal);
    expect(await cache.token({ ...web, workload: "api" }, signal)).toBe("token-2");
  });
});

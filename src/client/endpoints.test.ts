import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { CloudlessError, toConnectError } from "../api/errors.js";
import { seededRng } from "../lib/rng.js";
import { EndpointRotation, leaderHint, normalizeUrl } from "./endpoints.js";

const a = "https://10.0.0.1:7443";
const b = "https://10.0.0.2:7443";
const c = "https://10.0.0.3:7443";

function rotation(urls = [a, b, c]) {
  return new EndpointRotation(urls, {
    rng: seededRng(7),
    baseDelayMs: 200,
    maxDelayMs: 5_000,
    stableAfterMs: 10_000,
  });
}

describe("NFR-A1 EndpointRotation: the agent rotates through several coordinator URLs", () => {
  it("moves to the next URL after each failure and wraps around", () => {
    const r = rotation();
    expect(r.current).toBe(a);
    expect(r.next({ kind: "failed" }).url).toBe(b);
    expect(r.next({ kind: "failed" }).url).toBe(c);
    expect(r.next({ kind: "failed" }).url).toBe(a);
  });

  it("backs off with jitter per full round, never 0 and never above the cap", () => {
    const r = rotation();
    const delays = Array.from({ length: 30 }, () => r.next({ kind: "failed" }).delayMs);
    // Round 0 (3 failures): cap 200 → 100..200; round 1: 200..400; …; capped at 5 s.
    for (const delay of delays.slice(0, 3)) expect(delay).toBeGreaterThanOrEqual(100);
    for (const delay of delays.slice(0, 3)) expect(delay).toBeLessThanOrEqual(200);
    for (const delay of delays.slice(3, 6)) expect(delay).toBeGreaterThanOrEqual(200);
    for (const delay of delays.slice(3, 6)) expect(delay).toBeLessThanOrEqual(400);
    for (const delay of delays) expect(delay).toBeLessThanOrEqual(5_000);
    expect(delays.at(-1)).toBeGreaterThanOrEqual(2_500);
  });

  it("a stream that stayed up resets the back-off; a short one does not", () => {
    const r = rotation([a]);
    for (let i = 0; i < 10; i++) r.next({ kind: "failed" });
    expect(r.next({ kind: "ended", connectedForMs: 500 }).delayMs).toBeGreaterThanOrEqual(2_500);
    expect(r.next({ kind: "ended", connectedForMs: 60_000 }).delayMs).toBeLessThanOrEqual(200);
  });

  it("follows a leader redirect at once, learning a URL it did not know", () => {
    const r = rotation([a, b]);
    const redirected = r.next({ kind: "notLeader", leaderUrl: `${c}/` });
    expect(redirected).toEqual({ url: c, delayMs: 0, learned: c });
    expect(r.all).toEqual([a, b, c]);
    expect(r.current).toBe(c);
    // A redirect to a known URL jumps there without learning anything.
    r.connected();
    expect(r.next({ kind: "notLeader", leaderUrl: a })).toEqual({ url: a, delayMs: 0 });
  });

  it("without a leader named (election in progress) moves on with back-off", () => {
    const r = rotation([a, b]);
    const next = r.next({ kind: "notLeader" });
    expect(next.url).toBe(b);
    expect(next.delayMs).toBeGreaterThan(0);
  });

  it("two followers naming each other cannot make it dial in a tight loop", () => {
    const r = rotation([a, b]);
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      const other = r.current === a ? b : a;
      delays.push(r.next({ kind: "notLeader", leaderUrl: other }).delayMs);
    }
    expect(delays.slice(0, 2)).toEqual([0, 0]);
    expect(delays.slice(2).every((delay) => delay > 0)).toBe(true);
  });

  it("ignores URLs that are not https and de-duplicates the list", () => {
    expect(normalizeUrl("http://x:1")).toBeUndefined();
    expect(normalizeUrl("not a url")).toBeUndefined();
    expect(normalizeUrl("https://x:1/path")).toBe("https://x:1");
    expect(new EndpointRotation([a, `${a}/`, b], { rng: seededRng(1) }).all).toEqual([a, b]);
    const r = rotation([a]);
    expect(r.next({ kind: "notLeader", leaderUrl: "http://evil:1" }).delayMs).toBeGreaterThan(0);
    expect(r.all).toEqual([a]);
  });
});

describe("NFR-A1 leaderHint: reading a follower's answer", () => {
  it("reads the leader URL from the metadata the coordinator sets", () => {
    const error = toConnectError(CloudlessError.notLeader(b));
    expect(error.code).toBe(Code.Unavailable);
    expect(leaderHint(error)).toEqual({ leaderUrl: b });
  });

  it("reads it from the message when the metadata is missing", () => {
    const error = new ConnectError(`not the leader; the leader is ${c}`, Code.Unavailable);
    expect(leaderHint(error)).toEqual({ leaderUrl: c });
  });

  it("recognises 'no leader elected yet' without a URL", () => {
    expect(leaderHint(toConnectError(CloudlessError.notLeader(undefined)))).toEqual({});
  });

  it("is undefined for other errors", () => {
    expect(leaderHint(new ConnectError("connect ECONNREFUSED", Code.Unavailable))).toBeUndefined();
    expect(leaderHint(new ConnectError("not the leader", Code.NotFound))).toBeUndefined();
    expect(leaderHint(new Error("boom"))).toBeUndefined();
  });
});

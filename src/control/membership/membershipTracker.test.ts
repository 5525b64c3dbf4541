import { describe, expect, it } from "vitest";
import { defaultMembershipConfig, MembershipTracker } from "./membershipTracker.js";

function beatEvery(tracker: MembershipTracker, name: string, fromMs: number, count: number) {
  let now = fromMs;
  for (let i = 0; i < count; i++) {
    now += 1000;
    tracker.onBeat(name, now);
  }
  return now;
}

describe("membership tracker", () => {
  it("REQ-002 a new node joins Ready on its first hello", () => {
    const tracker = new MembershipTracker();
    const transitions = tracker.onHello("a", 0);
    expect(transitions).toMatchObject([
      { node: "a", from: undefined, to: "Ready", reason: "Joined" },
    ]);
    expect(tracker.onHello("a", 10)).toEqual([]);
  });

  it("REQ-002 stream closed means NotReady at once, then Lost after the grace", () => {
    const tracker = new MembershipTracker();
    tracker.onHello("a", 0);
    const now = beatEvery(tracker, "a", 0, 5);
    expect(tracker.onStreamClosed("a", now)).toMatchObject([
      { to: "NotReady", reason: "HeartbeatStreamClosed" },
    ]);
    expect(tracker.tick(now + defaultMembershipConfig.streamLossGraceMs - 1)).toEqual([]);
    expect(tracker.tick(now + defaultMembershipConfig.streamLossGraceMs)).toMatchObject([
      { to: "Lost", reason: "NoReconnect" },
    ]);
    expect(tracker.onHello("a", now + 5000)).toMatchObject([
      { from: "Lost", to: "Ready", reason: "HeartbeatsResumed" },
    ]);
  });

  it("REQ-002 a silent node with an open stream goes NotReady then Lost by phi", () => {
    const tracker = new MembershipTracker();
    tracker.onHello("a", 0);
    const last = beatEvery(tracker, "a", 0, 30);
    const seen: string[] = [];
    for (let t = last; t < last + 10_000; t += 100) {
      for (const transition of tracker.tick(t)) seen.push(transition.to);
    }
    expect(seen).toEqual(["NotReady", "Lost"]);
  });

  it("REQ-002 no verdict while heartbeats keep arriving", () => {
    const tracker = new MembershipTracker();
    tracker.onHello("a", 0);
    let now = 0;
    for (let i = 0; i < 600; i++) {
      now += 900 + ((i * 37) % 200);
      tracker.onBeat("a", now);
      expect(tracker.tick(now + 50)).toEqual([]);
    }
  });

  it("REQ-002 a graceful leave is recorded as Left and never judged Lost", () => {
    const tracker = new MembershipTracker();
    tracker.onHello("a", 0);
    expect(tracker.onLeave("a", 100)).toMatchObject([{ to: "Left", reason: "GracefulLeave" }]);
    expect(tracker.onStreamClosed("a", 101)).toEqual([]);
    expect(tracker.tick(60_000)).toEqual([]);
  });

  it("REQ-002 after a coordinator restart, known nodes get a grace period to reconnect", () => {
    const tracker = new MembershipTracker();
    tracker.restore("a", "Ready", 0);
    tracker.restore("b", "Ready", 0);
    expect(tracker.tick(defaultMembershipConfig.startupGraceMs - 1)).toEqual([]);
    expect(tracker.onHello("a", 500)).toEqual([]);
    beatEvery(tracker, "a", 500, 9);
    const atGrace = tracker.tick(defaultMembershipConfig.startupGraceMs);
    expect(atGrace).toMatchObject([
      { node: "b", to: "NotReady", reason: "NoHeartbeatAfterRestart" },
    ]);
    const later = tracker.tick(
      defaultMembershipConfig.startupGraceMs + defaultMembershipConfig.streamLossGraceMs,
    );
    expect(later).toMatchObject([{ node: "b", to: "Lost" }]);
  });
});

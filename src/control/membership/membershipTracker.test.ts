import { describe, expect, it } from "vitest";
import {
  defaultMembershipConfig,
  type MembershipConfig,
  MembershipTracker,
} from "./membershipTracker.js";

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

  describe("restart grace (ADR 0031)", () => {
    const config: MembershipConfig = {
      ...defaultMembershipConfig,
      streamLossGraceMs: 1000,
      maxRestartGraceMs: 600_000,
    };

    it("REQ-031 without a restart grace a crashed agent's node is Lost after the stream-loss grace, as before", () => {
      const tracker = new MembershipTracker(config);
      tracker.onHello("a", 0);
      const closedAt = beatEvery(tracker, "a", 0, 3);
      expect(tracker.onStreamClosed("a", closedAt)).toMatchObject([
        { to: "NotReady", reason: "HeartbeatStreamClosed", lostDeadlineMs: closedAt + 1000 },
      ]);
      expect(tracker.tick(closedAt + 999)).toEqual([]);
      expect(tracker.tick(closedAt + 1000)).toMatchObject([{ to: "Lost", reason: "NoReconnect" }]);
    });

    it("NFR-A1 REQ-031 a node whose agent announced a restart grace stays NotReady (Reconnecting) for that grace, keeps its place when it returns, and is Lost when it does not", () => {
      const tracker = new MembershipTracker(config);
      tracker.onHello("a", 0, 30_000);
      expect(tracker.grantedRestartGraceMs("a")).toBe(30_000);
      let now = beatEvery(tracker, "a", 0, 3);
      const closed = tracker.onStreamClosed("a", now);
      expect(closed).toMatchObject([
        { from: "Ready", to: "NotReady", reason: "Reconnecting", lostDeadlineMs: now + 30_000 },
      ]);
      expect(closed[0]?.message).toContain("30 s");
      expect(tracker.lostDeadlineMs("a")).toBe(now + 30_000);
      // Back within the grace: Ready again, never Lost.
      expect(tracker.tick(now + 29_999)).toEqual([]);
      expect(tracker.onHello("a", now + 20_000, 30_000)).toMatchObject([
        { from: "NotReady", to: "Ready", reason: "HeartbeatsResumed" },
      ]);
      expect(tracker.lostDeadlineMs("a")).toBeUndefined();
      expect(tracker.tick(now + 20_500)).toEqual([]);
      // Away past it: Lost at the deadline, not before.
      now = beatEvery(tracker, "a", now + 20_000, 3);
      tracker.onStreamClosed("a", now);
      expect(tracker.tick(now + 29_999)).toEqual([]);
      expect(tracker.tick(now + 30_000)).toMatchObject([{ to: "Lost", reason: "NoReconnect" }]);
    });

    it("REQ-031 a restart grace shorter than the stream-loss grace changes nothing", () => {
      const tracker = new MembershipTracker(config);
      tracker.onHello("a", 0, 300);
      expect(tracker.onStreamClosed("a", 1000)).toMatchObject([
        { reason: "HeartbeatStreamClosed", lostDeadlineMs: 2000 },
      ]);
      expect(tracker.tick(1999)).toEqual([]);
      expect(tracker.tick(2000)).toMatchObject([{ to: "Lost" }]);
    });

    it("REQ-030 an announced grace is capped by maxRestartGraceMs", () => {
      const tracker = new MembershipTracker(config);
      tracker.onHello("a", 0, 3_600_000);
      expect(tracker.grantedRestartGraceMs("a")).toBe(600_000);
      tracker.onStreamClosed("a", 1000);
      expect(tracker.tick(600_999)).toEqual([]);
      expect(tracker.tick(601_000)).toMatchObject([{ to: "Lost" }]);
      // A restarting leave is capped the same way.
      tracker.onHello("a", 700_000);
      expect(tracker.onLeave("a", 701_000, 86_400_000)).toMatchObject([
        { to: "NotReady", reason: "Restarting", lostDeadlineMs: 701_000 + 600_000 },
      ]);
    });

    it("NFR-A1 a restarting leave keeps the node NotReady (Restarting), never Left; it returns Ready or is Lost past its promise", () => {
      const tracker = new MembershipTracker(config);
      tracker.onHello("a", 0);
      const leftAt = beatEvery(tracker, "a", 0, 3);
      const leave = tracker.onLeave("a", leftAt, 30_000);
      expect(leave).toMatchObject([
        { from: "Ready", to: "NotReady", reason: "Restarting", lostDeadlineMs: leftAt + 30_000 },
      ]);
      expect(leave[0]?.message).toContain("30 s");
      // The stream closing after the leave is no news.
      expect(tracker.onStreamClosed("a", leftAt + 1)).toEqual([]);
      expect(tracker.tick(leftAt + 29_999)).toEqual([]);
      expect(tracker.status("a")).toBe("NotReady");
      expect(tracker.onHello("a", leftAt + 5_000)).toMatchObject([
        { from: "NotReady", to: "Ready", reason: "HeartbeatsResumed" },
      ]);
      // A second restart that never comes back.
      tracker.onLeave("a", leftAt + 10_000, 30_000);
      expect(tracker.tick(leftAt + 39_999)).toEqual([]);
      const lost = tracker.tick(leftAt + 40_000);
      expect(lost).toMatchObject([{ to: "Lost", reason: "NoReconnect" }]);
      expect(lost[0]?.message).toContain("announcing a restart");
    });

    it("REQ-002 a plain leave after a restart grace was announced is still Left", () => {
      const tracker = new MembershipTracker(config);
      tracker.onHello("a", 0, 30_000);
      expect(tracker.onLeave("a", 100)).toMatchObject([{ to: "Left", reason: "GracefulLeave" }]);
      expect(tracker.tick(60_000)).toEqual([]);
    });

    it("NFR-A1 a new leader keeps a recorded Lost deadline later than its startup grace, and judges a silent node by its restart grace", () => {
      const tracker = new MembershipTracker(config);
      // Restarting, promised back by t=45 s: the startup grace (10 s) would be too short.
      tracker.restore("restarting", "NotReady", 0, { lostDeadlineMs: 45_000 });
      // Reconnecting with a deadline already past: the startup grace still applies.
      tracker.restore("stale", "NotReady", 0, { lostDeadlineMs: 2_000 });
      // Ready but silent, with a 30 s restart grace.
      tracker.restore("silent", "Ready", 0, { restartGraceMs: 30_000 });
      expect(tracker.tick(9_999)).toEqual([]);
      expect(tracker.tick(10_000)).toMatchObject([
        { node: "stale", to: "Lost" },
        {
          node: "silent",
          to: "NotReady",
          reason: "NoHeartbeatAfterRestart",
          lostDeadlineMs: 40_000,
        },
      ]);
      expect(tracker.tick(39_999)).toEqual([]);
      expect(tracker.tick(40_000)).toMatchObject([{ node: "silent", to: "Lost" }]);
      expect(tracker.tick(44_999)).toEqual([]);
      expect(tracker.tick(45_000)).toMatchObject([{ node: "restarting", to: "Lost" }]);
    });

    it("REQ-030 a recorded deadline is capped by maxRestartGraceMs from the restore", () => {
      const tracker = new MembershipTracker(config);
      tracker.restore("a", "NotReady", 0, { lostDeadlineMs: 10 * 3_600_000 });
      expect(tracker.lostDeadlineMs("a")).toBe(600_000);
    });
  });
});

import { describe, expect, it } from "vitest";
import { EndpointRotation, type SessionOutcome } from "../client/endpoints.js";
import { ManualClock } from "../lib/clock.js";
import { seededRng } from "../lib/rng.js";
import { silentLogger } from "../observe/logger.js";
import { HeartbeatLoop, MessageQueue, type StreamSession } from "./heartbeatSession.js";

/** A session that ends when told, with the outcome given. */
function fakeSession(url: string) {
  let end!: () => void;
  let outcome: SessionOutcome = { kind: "failed" };
  const done = new Promise<void>((resolve) => {
    end = resolve;
  });
  const session: StreamSession = {
    abort: new AbortController(),
    done,
    firstAck: Promise.resolve(true),
    outcome: () => outcome,
    leave: async () => undefined,
    send: () => undefined,
  };
  session.abort.signal.addEventListener("abort", () => end());
  return {
    url,
    session,
    end(result: SessionOutcome) {
      outcome = result;
      end();
    },
  };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("the heartbeat loop", () => {
  it("NFR-R1 decider: a failed stream is retried on the next coordinator after the rotation's back-off, under the injected clock; stop ends a wait at once", async () => {
    const clock = new ManualClock(0);
    const endpoints = new EndpointRotation(["https://a:1", "https://b:1"], {
      rng: seededRng(1),
      baseDelayMs: 200,
      maxDelayMs: 5_000,
    });
    const opened: ReturnType<typeof fakeSession>[] = [];
    const retargets: string[] = [];
    const loop = new HeartbeatLoop({
      endpoints,
      clock,
      logger: silentLogger,
      open: () => {
        const fake = fakeSession(endpoints.current);
        opened.push(fake);
        return fake.session;
      },
      onRetarget: (url) => retargets.push(url),
      onLearned: () => undefined,
    });
    const running = loop.run();
    await settle();
    expect(opened.map((o) => o.url)).toEqual(["https://a:1"]);
    expect(loop.current).toBe(opened[0]?.session);

    opened[0]?.end({ kind: "failed" });
    await settle();
    expect(retargets).toEqual(["https://b:1"]);
    expect(loop.current).toBeUndefined();
    // First round of failures: between half and all of the 200 ms base.
    clock.advance(99);
    await settle();
    expect(opened).toHaveLength(1);
    clock.advance(101);
    await settle();
    expect(opened.map((o) => o.url)).toEqual(["https://a:1", "https://b:1"]);

    opened[1]?.end({ kind: "failed" });
    await settle();
    loop.stop();
    await running;
    expect(opened).toHaveLength(2);
  });

  it("REQ-060 decider: a renewed session replaces the current one once acknowledged, and the loop keeps the new one", async () => {
    const clock = new ManualClock(0);
    const endpoints = new EndpointRotation(["https://a:1"], { rng: seededRng(2) });
    const opened: ReturnType<typeof fakeSession>[] = [];
    const loop = new HeartbeatLoop({
      endpoints,
      clock,
      logger: silentLogger,
      open: () => {
        const fake = fakeSession(endpoints.current);
        opened.push(fake);
        return fake.session;
      },
      onRetarget: () => undefined,
      onLearned: () => undefined,
    });
    const running = loop.run();
    await settle();
    const renewed = fakeSession("https://a:1");
    await loop.replaceWith(renewed.session);
    await settle();
    expect(loop.current).toBe(renewed.session);
    expect(opened[0]?.session.abort.signal.aborted).toBe(true);
    expect(opened).toHaveLength(1); // no reconnect: the loop moved to the new session
    loop.stop();
    loop.close();
    await running;
  });

  it("REQ-060 hardening: the outgoing queue is bounded and ends on close", async () => {
    const queue = new MessageQueue<number>(3);
    for (let i = 0; i < 10; i++) queue.push(i);
    queue.close();
    const drained: number[] = [];
    for await (const item of queue.drain()) drained.push(item);
    expect(drained).toEqual([0, 1, 2]);
  });
});

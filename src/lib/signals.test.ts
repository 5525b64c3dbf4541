import { EventEmitter } from "node:events";
import { describe, expect, it } from "vitest";
import { handleStopSignals, type SignalSource } from "./signals.js";

function setup() {
  const emitter = new EventEmitter();
  const notices: string[] = [];
  const stop = handleStopSignals({
    hurryEffect: "replicas are killed without their grace period",
    notice: (line) => notices.push(line),
    source: emitter as unknown as SignalSource,
    pid: 4242,
  });
  return { emitter, notices, stop };
}

describe("stop signals (ADR 0028)", () => {
  it("NFR-U1 hardening: the first SIGINT starts the graceful stop, a SIGTERM after it asks for a faster one, a third is reported and ignored; the handlers stay installed", async () => {
    const { emitter, notices, stop } = setup();
    expect(stop.stopping).toBe(false);
    emitter.emit("SIGINT", "SIGINT");
    expect(await stop.requested).toBe("SIGINT");
    expect(stop.stopping).toBe(true);
    expect(stop.hurry.aborted).toBe(false);
    expect(notices).toEqual([]);

    emitter.emit("SIGTERM", "SIGTERM");
    expect(stop.hurry.aborted).toBe(true);
    expect(notices).toEqual([
      "received SIGTERM again: stopping faster (replicas are killed without their grace period)",
    ]);

    emitter.emit("SIGINT", "SIGINT");
    emitter.emit("SIGINT", "SIGINT");
    expect(notices.slice(1)).toEqual([
      "received SIGINT again: still stopping, as fast as it can; kill -9 4242 abandons the cleanup and leaves what is not stopped yet",
      "received SIGINT again: still stopping, as fast as it can; kill -9 4242 abandons the cleanup and leaves what is not stopped yet",
    ]);
    // Never removed: a signal with no listener would take its default action (exit at once).
    expect(emitter.listenerCount("SIGINT")).toBe(1);
    expect(emitter.listenerCount("SIGTERM")).toBe(1);
  });

  it("NFR-U1 hardening: a stop the program requests itself counts as the first; the next signal hurries it", async () => {
    const { emitter, stop } = setup();
    stop.request("parent process gone");
    stop.request("ignored: already stopping");
    expect(await stop.requested).toBe("parent process gone");
    expect(stop.hurry.aborted).toBe(false);
    emitter.emit("SIGTERM", "SIGTERM");
    expect(stop.hurry.aborted).toBe(true);
  });
});

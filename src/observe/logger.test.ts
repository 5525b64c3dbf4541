import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger, droppedLogLines } from "./logger.js";

/** A destination whose reader is gone: every write fails with EPIPE, as a dead stderr pipe does. */
function brokenPipe() {
  let attempts = 0;
  const stream = new Writable({
    write(_chunk, _encoding, callback) {
      attempts += 1;
      callback(Object.assign(new Error("write EPIPE"), { code: "EPIPE" }));
    },
  });
  return { stream, attempts: () => attempts };
}

describe("logger", () => {
  it("REQ-070 hardening: lines to a broken destination are dropped and counted, never thrown or retried", async () => {
    const { stream, attempts } = brokenPipe();
    const uncaught: unknown[] = [];
    const onUncaught = (error: unknown) => uncaught.push(error);
    process.on("uncaughtException", onUncaught);
    try {
      const logger = createLogger({ component: "test", destination: stream });
      const before = droppedLogLines();
      logger.info("first line, whose write fails");
      await new Promise((resolve) => setImmediate(resolve));
      for (let i = 0; i < 100; i++) logger.warn({ i }, "reconnecting");
      await new Promise((resolve) => setImmediate(resolve));
      // One write reached the stream and failed; the hundred after it were never tried.
      expect(attempts()).toBe(1);
      expect(droppedLogLines() - before).toBe(101);
      expect(uncaught).toEqual([]);
      // A second logger on the same stream knows it is broken.
      createLogger({ component: "other", destination: stream }).info("dropped too");
      expect(attempts()).toBe(1);
      expect(droppedLogLines() - before).toBe(102);
    } finally {
      process.off("uncaughtException", onUncaught);
    }
  });

  it("REQ-070 lines reach a working destination as JSON with the component", () => {
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk, _encoding, callback) {
        lines.push(String(chunk));
        callback();
      },
    });
    createLogger({ component: "test", destination: stream }).info({ a: 1 }, "hello");
    expect(JSON.parse(lines[0] as string)).toMatchObject({
      level: "info",
      component: "test",
      a: 1,
      msg: "hello",
    });
  });

  it("REQ-001 contract: a bootstrap token in a message or an error loses its secret, even truncated or mangled, in an error's stack too", () => {
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk, _encoding, callback) {
        lines.push(String(chunk));
        callback();
      },
    });
    const logger = createLogger({ component: "test", destination: stream });
    const whole = `CL1::${"a".repeat(64)}::0123456789.${"S".repeat(43)}`;
    // Pasted with a shortened CA hash, or cut before its id: still a secret worth hiding.
    const mangled = `CL1::${"a".repeat(20)}::0123456789.${"T".repeat(43)}`;
    const cut = `CL1::${"a".repeat(64)}::${"U".repeat(30)}`;
    logger.warn(`joining with ${whole} failed`);
    logger.warn(`joining with ${mangled} failed`);
    logger.error({ err: new Error(`bad token ${cut}`) }, "join failed");
    logger.error({ err: new Error(`bad token ${whole}`) }, "join failed");
    const text = lines.join("");
    expect(lines).toHaveLength(4);
    for (const secret of ["S".repeat(43), "T".repeat(43), "U".repeat(30)]) {
      expect(text).not.toContain(secret);
    }
    expect(text).toContain("0123456789.[REDACTED]");
  });
});

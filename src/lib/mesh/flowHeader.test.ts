import { Duplex, PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import {
  encodeFlowHeader,
  encodeFlowReply,
  MAX_FLOW_HEADER_BYTES,
  parseFlowHeader,
  parseFlowReply,
  pipeFlow,
  readLine,
} from "./flowHeader.js";

describe("mesh flow header (REQ-040)", () => {
  it("REQ-040: a connect header round-trips, traceparent included", () => {
    const header = {
      v: 1,
      op: "connect",
      namespace: "default",
      service: "web",
      port: "http",
      replica: "web-7d9f-0",
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    } as const;
    const line = encodeFlowHeader(header);
    expect(line.endsWith("\n")).toBe(true);
    expect(parseFlowHeader(line.trimEnd())).toEqual(header);
    expect(parseFlowHeader('{"v":1,"op":"ping"}')).toEqual({ v: 1, op: "ping" });
  });

  it("REQ-040: garbled, unknown and hostile headers are refused with a reason", () => {
    expect(() => parseFlowHeader("{")).toThrow("not JSON");
    expect(() => parseFlowHeader("[]")).toThrow("not a JSON object");
    expect(() => parseFlowHeader('{"v":2,"op":"ping"}')).toThrow("version 2");
    expect(() => parseFlowHeader('{"v":1,"op":"exec"}')).toThrow("unknown flow op");
    const base = { v: 1, op: "connect", namespace: "d", service: "s", port: "p", replica: "r" };
    expect(() => parseFlowHeader(JSON.stringify({ ...base, service: "" }))).toThrow("service");
    expect(() => parseFlowHeader(JSON.stringify({ ...base, port: "a b" }))).toThrow("port");
    expect(() => parseFlowHeader(JSON.stringify({ ...base, replica: 7 }))).toThrow("replica");
    expect(() => parseFlowHeader(JSON.stringify({ ...base, traceparent: "x" }))).toThrow(
      "traceparent",
    );
    expect(() =>
      encodeFlowHeader({ ...base, op: "connect", v: 1, namespace: "n".repeat(3000) }),
    ).toThrow(`longer than ${MAX_FLOW_HEADER_BYTES}`);
  });

  it("REQ-040: replies parse; a long error is cut to fit a line", () => {
    expect(parseFlowReply(encodeFlowReply({ ok: true }).trimEnd())).toEqual({ ok: true });
    const reply = encodeFlowReply({ ok: false, error: "e".repeat(5000) });
    expect(reply.length).toBeLessThan(MAX_FLOW_HEADER_BYTES);
    expect(parseFlowReply(reply.trimEnd())).toEqual({ ok: false, error: "e".repeat(512) });
    expect(() => parseFlowReply("{}")).toThrow("no ok field");
  });

  it("REQ-040: readLine returns the line and leaves the flow's first bytes in the stream", async () => {
    const stream = new PassThrough();
    stream.write('{"v":1,"op":"ping"}\nFIRST');
    stream.write("-BYTES");
    expect(await readLine(stream, 64, 1_000)).toBe('{"v":1,"op":"ping"}');
    stream.end();
    const rest: Buffer[] = [];
    for await (const chunk of stream) rest.push(chunk as Buffer);
    expect(Buffer.concat(rest).toString()).toBe("FIRST-BYTES");
  });

  it("REQ-040: readLine refuses a line over the limit, a stream that ends first, and silence", async () => {
    const long = new PassThrough();
    long.write("x".repeat(40));
    long.write("y".repeat(40));
    await expect(readLine(long, 64, 1_000)).rejects.toThrow("longer than 64 bytes");
    const ended = new PassThrough();
    ended.end("no newline");
    await expect(readLine(ended, 64, 1_000)).rejects.toThrow("closed before a header line");
    await expect(readLine(new PassThrough(), 64, 50)).rejects.toThrow(
      "no header line within 50 ms",
    );
  });

  /** A socket stand-in: the test pushes what it "receives"; what is written is kept. */
  function endpoint() {
    const written: Buffer[] = [];
    let finished = false;
    const duplex = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        written.push(chunk);
        callback();
      },
      final(callback) {
        finished = true;
        callback();
      },
    });
    return { duplex, written, finished: () => finished };
  }

  it("REQ-040: pipeFlow carries both directions, keeps half-close, counts bytes, and an error cuts both", async () => {
    const a = endpoint();
    const b = endpoint();
    const counted = { aToB: 0, bToA: 0 };
    let closed = false;
    pipeFlow(
      a.duplex,
      b.duplex,
      (direction, bytes) => {
        counted[direction] += bytes;
      },
      () => {
        closed = true;
      },
    );
    a.duplex.push("request");
    a.duplex.push(null);
    // A half-closed: B's writable side ends, B can still answer.
    await waitUntil(() => b.finished());
    b.duplex.push("answer");
    b.duplex.push(null);
    await waitUntil(() => a.finished());
    expect(Buffer.concat(b.written).toString()).toBe("request");
    expect(Buffer.concat(a.written).toString()).toBe("answer");
    expect(counted).toEqual({ aToB: 7, bToA: 6 });
    await waitUntil(() => closed);

    const c = endpoint();
    const d = endpoint();
    pipeFlow(
      c.duplex,
      d.duplex,
      () => {},
      () => {},
    );
    c.duplex.destroy(new Error("reset"));
    await waitUntil(() => d.duplex.destroyed);
  });
});

async function waitUntil(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(condition()).toBe(true);
}

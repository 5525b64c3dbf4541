import type { DescMessage, DescMethodStreaming, DescMethodUnary } from "@bufbuild/protobuf";
import type { StreamResponse, Transport, UnaryResponse } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { FaultSwitch } from "./faultSwitch.js";

/** A transport that records what it was sent and answers each stream with two messages. */
class RecordingTransport implements Transport {
  readonly sent: unknown[] = [];
  readonly signals: AbortSignal[] = [];

  async unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    signal: AbortSignal | undefined,
  ): Promise<UnaryResponse<I, O>> {
    if (signal) this.signals.push(signal);
    return { method, message: {} } as unknown as UnaryResponse<I, O>;
  }

  async stream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodStreaming<I, O>,
    signal: AbortSignal | undefined,
    _timeoutMs: number | undefined,
    _header: unknown,
    input: AsyncIterable<unknown>,
  ): Promise<StreamResponse<I, O>> {
    if (signal) this.signals.push(signal);
    for await (const message of input) this.sent.push(message);
    const message = (async function* () {
      yield { n: 1 };
      yield { n: 2 };
    })();
    return { method, message } as unknown as StreamResponse<I, O>;
  }
}

const heartbeat = {
  name: "Heartbeat",
  methodKind: "bidi_streaming",
} as unknown as DescMethodStreaming<DescMessage, DescMessage>;
const renew = { name: "RenewCertificate", methodKind: "unary" } as unknown as DescMethodUnary<
  DescMessage,
  DescMessage
>;

async function* messages(...items: string[]) {
  for (const item of items) yield { item };
}

async function drain(response: StreamResponse<DescMessage, DescMessage>): Promise<number> {
  let count = 0;
  for await (const _ of response.message) count++;
  return count;
}

describe("FaultSwitch (hollow node faults)", () => {
  it("passes traffic through and reports the first answer on each heartbeat stream", async () => {
    const acks: number[] = [];
    const faults = new FaultSwitch((atMs) => acks.push(atMs));
    const inner = new RecordingTransport();
    const transport = faults.wrap(inner);
    const response = await transport.stream(heartbeat, undefined, 0, undefined, messages("a", "b"));
    expect(await drain(response)).toBe(2);
    expect(inner.sent).toEqual([{ item: "a" }, { item: "b" }]);
    expect(acks).toHaveLength(1);
  });

  it("silence drops everything the node sends, and resume lets it through again", async () => {
    const faults = new FaultSwitch();
    const inner = new RecordingTransport();
    const transport = faults.wrap(inner);
    faults.silence();
    await drain(await transport.stream(heartbeat, undefined, 0, undefined, messages("a", "b")));
    expect(inner.sent).toEqual([]);
    faults.silence(false);
    await drain(await transport.stream(heartbeat, undefined, 0, undefined, messages("c")));
    expect(inner.sent).toEqual([{ item: "c" }]);
  });

  it("kill aborts calls in flight and fails every later call", async () => {
    const faults = new FaultSwitch();
    const inner = new RecordingTransport();
    const transport = faults.wrap(inner);
    await transport.unary(renew, undefined, 1000, undefined, {});
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const input = (async function* () {
      yield { item: "hello" };
      await held;
    })();
    const streaming = transport.stream(heartbeat, undefined, 0, undefined, input);
    await new Promise((resolve) => setImmediate(resolve));
    faults.kill();
    release();
    await streaming;
    expect(inner.signals.at(-1)?.aborted).toBe(true);
    expect(faults.killed).toBe(true);
    await expect(transport.unary(renew, undefined, 1000, undefined, {})).rejects.toThrow(/killed/);
    await expect(
      transport.stream(heartbeat, undefined, 0, undefined, messages("x")),
    ).rejects.toThrow(/killed/);
  });
});

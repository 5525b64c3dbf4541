/**
 * Fault injection for one hollow node, by wrapping the agent's transport to the
 * coordinator (AgentOptions.wrapTransport):
 *
 * - silence: every message the agent sends is dropped, but the streams and the
 *   connection stay open — a hung node or a one-way partition; the coordinator can
 *   only notice from the missing heartbeats (phi accrual).
 * - kill: every call in flight is aborted (the coordinator sees the heartbeat stream
 *   end at once: stream loss) and every later call fails, so the node never returns.
 *
 * It also reports the first response on each heartbeat stream: the coordinator answers
 * the hello only after it has marked the node Ready, so that is when the node joined.
 */
import type {
  DescMessage,
  DescMethodStreaming,
  DescMethodUnary,
  MessageInitShape,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  type StreamResponse,
  type Transport,
  type UnaryResponse,
} from "@connectrpc/connect";

export class FaultSwitch {
  private silencedFlag = false;
  private killedFlag = false;
  private readonly inFlight = new Set<AbortController>();

  constructor(
    /** Called with the time of the first response on every heartbeat stream. */
    private readonly onHeartbeatAck?: (atMs: number) => void,
  ) {}

  get silenced(): boolean {
    return this.silencedFlag;
  }

  get killed(): boolean {
    return this.killedFlag;
  }

  silence(on = true): void {
    this.silencedFlag = on;
  }

  kill(): void {
    this.killedFlag = true;
    for (const controller of this.inFlight) controller.abort();
    this.inFlight.clear();
  }

  wrap(inner: Transport): Transport {
    return new SwitchedTransport(inner, this);
  }

  /** @internal An AbortController for one call, aborted by kill() or the caller's signal. */
  link(signal: AbortSignal | undefined): AbortController {
    if (this.killedFlag) throw killedError();
    const controller = new AbortController();
    if (signal?.aborted) controller.abort(signal.reason);
    else signal?.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
    this.inFlight.add(controller);
    return controller;
  }

  /** @internal */
  release(controller: AbortController): void {
    this.inFlight.delete(controller);
  }

  /** @internal */
  noteAck(): void {
    this.onHeartbeatAck?.(Date.now());
  }
}

/** The transport's header argument (HeadersInit, which this project's lib settings do not name). */
type Header = Parameters<Transport["unary"]>[3];

function killedError(): ConnectError {
  return new ConnectError("hollow node killed: connection destroyed", Code.Unavailable);
}

class SwitchedTransport implements Transport {
  constructor(
    private readonly inner: Transport,
    private readonly faults: FaultSwitch,
  ) {}

  async unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: Header,
    input: MessageInitShape<I>,
    contextValues?: ContextValues,
  ): Promise<UnaryResponse<I, O>> {
    if (this.faults.silenced) {
      // A hung node's request never arrives; it fails at its deadline like a real one.
      await new Promise((resolve) => setTimeout(resolve, timeoutMs ?? 15_000));
      throw new ConnectError("hollow node silenced", Code.DeadlineExceeded);
    }
    const controller = this.faults.link(signal);
    try {
      return await this.inner.unary(
        method,
        controller.signal,
        timeoutMs,
        header,
        input,
        contextValues,
      );
    } finally {
      this.faults.release(controller);
    }
  }

  async stream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodStreaming<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: Header,
    input: AsyncIterable<MessageInitShape<I>>,
    contextValues?: ContextValues,
  ): Promise<StreamResponse<I, O>> {
    const controller = this.faults.link(signal);
    const faults = this.faults;
    const outgoing = (async function* () {
      for await (const message of input) {
        if (faults.killed) return;
        if (!faults.silenced) yield message;
      }
    })();
    let response: StreamResponse<I, O>;
    try {
      response = await this.inner.stream(
        method,
        controller.signal,
        timeoutMs,
        header,
        outgoing,
        contextValues,
      );
    } catch (error) {
      faults.release(controller);
      throw error;
    }
    const isHeartbeat = method.name === "Heartbeat";
    const incoming = response.message;
    const tracked = (async function* () {
      let first = true;
      try {
        for await (const message of incoming) {
          if (first && isHeartbeat) faults.noteAck();
          first = false;
          yield message;
        }
      } finally {
        faults.release(controller);
      }
    })();
    return { ...response, message: tracked };
  }
}

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
import { CloudlessError, errorCodeHeader, fromConnectError } from "../api/errors.js";
import { type ClientCredentials, loadClientConfig, resolveConfigPath } from "../client/config.js";
import { leaderHint, normalizeUrl } from "../client/endpoints.js";
import {
  type CoordinatorClients,
  createClients,
  createCoordinatorTransport,
} from "../client/transport.js";

export interface ClientContext {
  clients: CoordinatorClients;
  credentials: ClientCredentials;
  /** The coordinators this context may call, for messages ("https://a, https://b"). */
  server: string;
}

/** Loads the client config and connects to its coordinators, failing over between them. */
export async function connect(configFlag: string | undefined): Promise<ClientContext> {
  const credentials = await loadClientConfig(resolveConfigPath(configFlag));
  return {
    clients: clientsForConfig(credentials),
    credentials,
    server: credentials.servers.join(", "),
  };
}

/** API clients over every coordinator a client config lists. */
export function clientsForConfig(credentials: ClientCredentials): CoordinatorClients {
  const transport = new FailoverTransport(credentials.servers, (url) =>
    createCoordinatorTransport({
      baseUrl: url,
      clusterName: credentials.clusterName,
      caPem: credentials.caPem,
      certPem: credentials.certPem,
      keyPem: credentials.keyPem,
    }),
  );
  return createClients(transport);
}

/** Request headers as the Transport interface types them (HeadersInit is a DOM type). */
type RequestHeader = Parameters<Transport["unary"]>[3];

interface FailedAttempt {
  url: string;
  detail: string;
  /** The coordinator answered with its own code (x-cloudless-code): it runs, it could not serve. */
  answered: boolean;
}

/**
 * What each coordinator did when none answered. Kept beside the error rather than in a
 * ConnectError subclass: ConnectError's instanceof check accepts only its own name.
 */
const failedAttempts = new WeakMap<ConnectError, FailedAttempt[]>();

function allCoordinatorsFailed(attempts: FailedAttempt[]): ConnectError {
  const error = new ConnectError(
    `no coordinator answered: ${attempts.map((a) => `${a.url} (${a.detail})`).join("; ")}`,
    Code.Unavailable,
  );
  failedAttempts.set(error, attempts);
  return error;
}

/**
 * A transport over several coordinators (issue 4, item 3). A call goes to the
 * coordinator that last answered (the first one at the start) and moves on to the next
 * when one cannot be reached, times out or answers Unavailable; a follower that names
 * the leader sends the call there next. Application answers (NotFound, InvalidArgument,
 * …) are answers and end the call. Client and bidirectional streams are not retried:
 * their input can only be read once, so they stay on the coordinator that last answered.
 */
export class FailoverTransport implements Transport {
  private readonly urls: string[];
  private readonly transports = new Map<string, Transport>();
  private preferred = 0;
  /** Bound on URLs learned from leader hints. */
  private readonly maxUrls: number;

  constructor(
    urls: readonly string[],
    private readonly make: (url: string) => Transport,
  ) {
    this.urls = [...new Set(urls.map((url) => normalizeUrl(url) ?? url))];
    if (this.urls.length === 0) throw CloudlessError.invalid("the client config lists no servers");
    this.maxUrls = this.urls.length + 4;
  }

  unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: RequestHeader,
    input: MessageInitShape<I>,
    contextValues?: ContextValues,
  ): Promise<UnaryResponse<I, O>> {
    return this.withFailover(signal, (transport) =>
      transport.unary(method, signal, timeoutMs, header, input, contextValues),
    );
  }

  async stream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodStreaming<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: RequestHeader,
    input: AsyncIterable<MessageInitShape<I>>,
    contextValues?: ContextValues,
  ): Promise<StreamResponse<I, O>> {
    if (method.methodKind !== "server_streaming") {
      return this.transportFor(this.urls[this.preferred] as string).stream(
        method,
        signal,
        timeoutMs,
        header,
        input,
        contextValues,
      );
    }
    // One request message: read it once, replay it to each coordinator tried.
    const messages: MessageInitShape<I>[] = [];
    for await (const message of input) messages.push(message);
    return this.withFailover(signal, (transport) =>
      transport.stream(method, signal, timeoutMs, header, replay(messages), contextValues),
    );
  }

  private async withFailover<T>(
    signal: AbortSignal | undefined,
    call: (transport: Transport) => Promise<T>,
  ): Promise<T> {
    // Every configured URL once, starting with the one that last answered; a leader
    // named by a follower is tried next, once.
    const order = this.urls.map((_, i) => this.urls[(this.preferred + i) % this.urls.length]);
    const candidates = order as string[];
    const attempts: FailedAttempt[] = [];
    for (let i = 0; i < candidates.length; i++) {
      const url = candidates[i] as string;
      try {
        const result = await call(this.transportFor(url));
        // The next call starts where this one was answered (the leader, if one was named).
        if (!this.urls.includes(url) && this.urls.length < this.maxUrls) this.urls.push(url);
        const index = this.urls.indexOf(url);
        if (index >= 0) this.preferred = index;
        return result;
      } catch (error) {
        if (signal?.aborted || !isFailover(error)) throw error;
        const hint = leaderHint(error);
        if (
          hint?.leaderUrl &&
          !candidates.slice(0, i + 1).includes(hint.leaderUrl) &&
          candidates.length < this.maxUrls
        ) {
          const later = candidates.indexOf(hint.leaderUrl);
          if (later > i) candidates.splice(later, 1);
          candidates.splice(i + 1, 0, hint.leaderUrl);
        }
        attempts.push({
          url,
          detail: describeFailure(error),
          answered: ConnectError.from(error).metadata.has(errorCodeHeader),
        });
      }
    }
    throw allCoordinatorsFailed(attempts);
  }

  private transportFor(url: string): Transport {
    let transport = this.transports.get(url);
    if (!transport) {
      transport = this.make(url);
      this.transports.set(url, transport);
    }
    return transport;
  }
}

/**
 * Unreachable, too slow, or not able to serve: another coordinator may do better. A
 * deadline the coordinator itself reports (x-cloudless-code: an exec that ran out of
 * time) is its answer, not slowness, and is not run again elsewhere.
 */
function isFailover(error: unknown): boolean {
  const connectError = ConnectError.from(error);
  if (connectError.code === Code.Unavailable) return true;
  return connectError.code === Code.DeadlineExceeded && !connectError.metadata.has(errorCodeHeader);
}

function describeFailure(error: unknown): string {
  const connectError = ConnectError.from(error);
  return connectError.rawMessage.replace(/^\[\w+\]\s*/, "");
}

async function* replay<T>(messages: T[]): AsyncIterable<T> {
  yield* messages;
}

/** Turns an RPC failure into the one line a user sees. */
export function describeClientError(error: unknown, server?: string): CloudlessError {
  const attempts = error instanceof ConnectError ? failedAttempts.get(error) : undefined;
  if (attempts) {
    // Every coordinator answered that it cannot serve (its store lost quorum): say what
    // they said, not "cannot reach" — they are running (issue 13).
    const answers = new Set(attempts.map((a) => a.detail));
    const [answer] = answers;
    if (answer !== undefined && answers.size === 1 && attempts.every((a) => a.answered)) {
      return CloudlessError.unavailable(answer);
    }
    const [only] = attempts;
    if (attempts.length === 1 && only) {
      return CloudlessError.unavailable(
        `cannot reach the coordinator at ${only.url} (${only.detail}); is it running?`,
      );
    }
    const tried = attempts.map((a) => `${a.url}: ${a.detail}`).join("; ");
    return CloudlessError.unavailable(
      `cannot reach any coordinator (${tried}); is one of them running, and does "servers" in the client config list them?`,
    );
  }
  const normalized = fromConnectError(error);
  if (error instanceof ConnectError && normalized.code === "Unavailable" && server) {
    const detail = error.rawMessage.replace(/^\[\w+\]\s*/, "");
    return CloudlessError.unavailable(
      `cannot reach the coordinator at ${server} (${detail}); is it running?`,
    );
  }
  return normalized;
}

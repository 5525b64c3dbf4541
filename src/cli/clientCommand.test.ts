import { Code, ConnectError, createRouterTransport, type Transport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { CloudlessError, toConnectError } from "../api/errors.js";
import { TokenService } from "../api/gen/cloudless/v1/token_pb.js";
import { createClients } from "../client/transport.js";
import { describeClientError, FailoverTransport } from "./clientCommand.js";

const a = "https://10.0.0.1:7443";
const b = "https://10.0.0.2:7443";
const c = "https://10.0.0.3:7443";

/** A coordinator that answers token list with its own URL, or fails as told. */
function coordinator(url: string, calls: string[], failure?: () => Error): Transport {
  return createRouterTransport(({ service }) => {
    service(TokenService, {
      listTokens() {
        calls.push(url);
        if (failure) throw failure();
        return { tokens: [{ id: url }] };
      },
    } as never);
  });
}

function failover(behaviour: Record<string, (() => Error) | undefined>, urls = [a, b]) {
  const calls: string[] = [];
  const transport = new FailoverTransport(urls, (url) => coordinator(url, calls, behaviour[url]));
  const clients = createClients(transport);
  const answeredBy = async () => (await clients.tokens.listTokens({})).tokens[0]?.id;
  return { calls, answeredBy };
}

const refused = () => new ConnectError("connect ECONNREFUSED 10.0.0.1:7443", Code.Unavailable);

describe("NFR-A1 CLI failover over the coordinators in the client config", () => {
  it("moves to the next coordinator when one cannot be reached, and starts there next time", async () => {
    const { calls, answeredBy } = failover({ [a]: refused });
    expect(await answeredBy()).toBe(b);
    expect(await answeredBy()).toBe(b);
    expect(calls).toEqual([a, b, b]);
  });

  it("moves on after a timeout too", async () => {
    const { answeredBy } = failover({
      [a]: () => new ConnectError("the operation timed out", Code.DeadlineExceeded),
    });
    expect(await answeredBy()).toBe(b);
  });

  it("does not fail over on an application answer (NotFound, InvalidArgument)", async () => {
    const { calls, answeredBy } = failover({
      [a]: () => toConnectError(CloudlessError.notFound('token "x" not found')),
    });
    await expect(answeredBy()).rejects.toMatchObject({ code: Code.NotFound });
    expect(calls).toEqual([a]);
  });

  it("REQ-080 does not run a call again elsewhere when the coordinator itself reports a deadline (an exec that ran out of time)", async () => {
    const { calls, answeredBy } = failover({
      [a]: () =>
        toConnectError(CloudlessError.deadlineExceeded("exec did not finish within 1000 ms")),
    });
    const error = await answeredBy().catch((e: unknown) => e);
    expect(calls).toEqual([a]);
    const described = describeClientError(error, a);
    expect(described.code).toBe("DeadlineExceeded");
    expect(described.message).toBe("exec did not finish within 1000 ms");
  });

  it("follows a follower's leader hint, even to a coordinator the config does not list", async () => {
    // c is not in the config: its transport is made on demand.
    const { calls, answeredBy } = failover({
      [a]: () => toConnectError(CloudlessError.notLeader(c)),
    });
    expect(await answeredBy()).toBe(c);
    expect(calls).toEqual([a, c]);
  });

  it("names every coordinator tried in one line when none answers", async () => {
    const { answeredBy } = failover({ [a]: refused, [b]: refused });
    const error = await answeredBy().catch((e: unknown) => e);
    const described = describeClientError(error, `${a}, ${b}`);
    expect(described.code).toBe("Unavailable");
    expect(described.message).toMatch(
      /^cannot reach any coordinator \(https:\/\/10\.0\.0\.1:7443: .*ECONNREFUSED.*; https:\/\/10\.0\.0\.2:7443: .*\); is one of them running/,
    );
    expect(described.message).not.toContain("\n");
  });

  it("keeps the single-coordinator message when only one is configured", async () => {
    const { answeredBy } = failover({ [a]: refused }, [a]);
    const described = describeClientError(await answeredBy().catch((e: unknown) => e), a);
    expect(described.message).toMatch(
      /^cannot reach the coordinator at https:\/\/10\.0\.0\.1:7443 \(.*ECONNREFUSED.*\); is it running\?$/,
    );
  });

  it("REQ-012 contract: quotes what every coordinator answered when they run but cannot serve (their store lost quorum), instead of 'cannot reach'", async () => {
    const storeDown = () =>
      toConnectError(
        CloudlessError.unavailable(
          "the cluster store is unavailable (etcd: no quorum); retry when it is back",
        ),
      );
    const { calls, answeredBy } = failover({ [a]: storeDown, [b]: storeDown });
    const described = describeClientError(await answeredBy().catch((e: unknown) => e), a);
    expect(calls).toEqual([a, b]);
    expect(described.code).toBe("Unavailable");
    expect(described.message).toBe(
      "the cluster store is unavailable (etcd: no quorum); retry when it is back",
    );
    // One unreachable among them: the old message, naming each.
    const mixed = failover({ [a]: storeDown, [b]: refused });
    const either = describeClientError(await mixed.answeredBy().catch((e: unknown) => e), a);
    expect(either.message).toMatch(
      /^cannot reach any coordinator \(.*store is unavailable.*ECONNREFUSED/,
    );
  });

  it("refuses an empty server list", () => {
    expect(() => new FailoverTransport([], () => coordinator(a, []))).toThrow(/no servers/);
  });
});

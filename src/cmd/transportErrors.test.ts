import { ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { isTransportError } from "./daemonCommands.js";

describe("agent transport errors", () => {
  it("treats HTTP/2 session failures as recoverable and everything else as fatal", () => {
    expect(isTransportError(new ConnectError("PING timed out"))).toBe(true);
    const reset = Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
    expect(isTransportError(reset)).toBe(true);
    const h2 = Object.assign(new Error("stream error"), { code: "ERR_HTTP2_STREAM_ERROR" });
    expect(isTransportError(h2)).toBe(true);
    expect(isTransportError(new TypeError("cannot read properties of undefined"))).toBe(false);
    expect(isTransportError("a string")).toBe(false);
  });
});

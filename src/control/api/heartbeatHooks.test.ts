import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
} from "../../api/gen/cloudless/v1/node_pb.js";
import { HeartbeatHooks } from "./heartbeatHooks.js";

describe("REQ-080 contract: heartbeat hooks let a module join every node stream", () => {
  it("attaches every registered sink to a new stream and detaches them when it ends", () => {
    const hooks = new HeartbeatHooks();
    const attached: string[] = [];
    const detached: string[] = [];
    hooks.onStream((node, push) => {
      attached.push(node);
      push(create(HeartbeatResponseSchema, { ackSeq: 7n }));
      return () => detached.push(node);
    });
    const pushed: HeartbeatResponse[] = [];
    const detach = hooks.attach("n1", (message) => pushed.push(message));
    expect(attached).toEqual(["n1"]);
    expect(pushed.map((m) => m.ackSeq)).toEqual([7n]);
    detach();
    expect(detached).toEqual(["n1"]);
  });

  it("hands a module the request kinds it registered, with the node; other kinds are not taken; one handler per kind", () => {
    const hooks = new HeartbeatHooks();
    const seen: [string, number][] = [];
    const off = hooks.onRequest("network", (node, report) => seen.push([node, report.meshPort]));
    const network = create(HeartbeatRequestSchema, {
      kind: { case: "network", value: { meshPort: 7444 } },
    });
    expect(hooks.dispatch("n1", network.kind)).toBe(true);
    expect(seen).toEqual([["n1", 7444]]);
    expect(hooks.dispatch("n1", { case: undefined })).toBe(false);
    expect(() => hooks.onRequest("network", () => undefined)).toThrow(/already has a handler/);
    off();
    expect(hooks.dispatch("n1", network.kind)).toBe(false);
  });
});

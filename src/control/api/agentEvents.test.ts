import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { AgentEventSchema, AgentEventsSchema } from "../../api/gen/cloudless/v1/node_pb.js";
import { maxAgentEventsPerMessage, readAgentEvents } from "./agentEvents.js";

const assigned = (id: string) =>
  id === "web-1" ? { namespace: "shop", workload: "web" } : undefined;

function event(
  overrides: Partial<{ type: string; reason: string; replicaId: string; message: string }>,
) {
  return create(AgentEventSchema, {
    type: "SpecFieldsIgnored",
    reason: "UnknownSpecFields",
    replicaId: "web-1",
    message: "replica web-1 runs without spec.x",
    attributes: { fields: "spec.x", replica: "forged" },
    ...overrides,
  });
}

describe("events agents raise", () => {
  it("REQ-071 contract: the coordinator names the subject (the assigned replica's workload) and the actor (the node)", () => {
    const reading = readAgentEvents(
      "edge-1",
      create(AgentEventsSchema, { events: [event({}), event({ replicaId: "other" })] }),
      assigned,
    );
    expect(reading.refused).toEqual([]);
    expect(reading.events[0]).toMatchObject({
      subject: "workload/shop/web",
      actor: "node/edge-1",
      category: "operations",
      reason: "UnknownSpecFields",
      attributes: { fields: "spec.x", node: "edge-1", replica: "web-1" },
    });
    // A replica not assigned to the node: the event is about the node, not a workload.
    expect(reading.events[1]?.subject).toBe("node/edge-1");
    expect(reading.events[1]?.attributes?.replica).toBeUndefined();
  });

  it("REQ-071 hardening: malformed events are refused one by one with the field named; too many at once are refused together", () => {
    const reading = readAgentEvents(
      "edge-1",
      create(AgentEventsSchema, {
        events: [event({ type: "not pascal" }), event({ message: "" }), event({})],
      }),
      assigned,
    );
    expect(reading.events).toHaveLength(1);
    expect(reading.refused).toEqual([
      "type must be a PascalCase word of at most 64 chars",
      "message must have 1 to 2048 chars",
    ]);
    const flood = readAgentEvents(
      "edge-1",
      create(AgentEventsSchema, {
        events: Array.from({ length: maxAgentEventsPerMessage + 1 }, () => event({})),
      }),
      assigned,
    );
    expect(flood.events).toEqual([]);
    expect(flood.refused).toHaveLength(1);
  });
});

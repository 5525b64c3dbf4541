import { describe, expect, it } from "vitest";
import { AgentEventOutbox, unknownSpecFieldsEvent } from "./agentEvents.js";

const ref = { replicaId: "web-1", namespace: "default", workload: "web", revision: 3 };

describe("agent events", () => {
  it("REQ-071 contract: the unknown-fields event names the fields and that the agent is older than the coordinator", () => {
    const event = unknownSpecFieldsEvent(ref, ["spec.a", "spec.b"], "0.1.0");
    expect(event.reason).toBe("UnknownSpecFields");
    expect(event.replicaId).toBe("web-1");
    expect(event.message).toContain("spec.a, spec.b");
    expect(event.message).toContain("older than the coordinator");
    const many = unknownSpecFieldsEvent(
      ref,
      Array.from({ length: 25 }, (_, i) => `spec.f${i}`),
      "0.1.0",
    );
    expect(many.message).toContain("and 5 more");
  });

  it("REQ-071 contract: an event is raised once per cause while its replica stays assigned, and again after it went away", () => {
    const outbox = new AgentEventOutbox();
    const event = unknownSpecFieldsEvent(ref, ["spec.a"], "0.1.0");
    expect(outbox.raise("k", event)).toBe(true);
    outbox.endOfSet();
    expect(outbox.raise("k", event)).toBe(false);
    outbox.endOfSet();
    expect(outbox.take()).toHaveLength(1);
    outbox.endOfSet(); // a set without the replica
    expect(outbox.raise("k", event)).toBe(true);
  });

  it("REQ-071 hardening: pending events are bounded and sent in bounded messages", () => {
    const outbox = new AgentEventOutbox();
    for (let i = 0; i < 150; i++) outbox.raise(`k${i}`, unknownSpecFieldsEvent(ref, ["x"], "0"));
    expect(outbox.size).toBe(100);
    expect(outbox.dropped).toBe(50);
    const messages = outbox.take();
    expect(messages).toHaveLength(7);
    expect(outbox.size).toBe(0);
  });
});

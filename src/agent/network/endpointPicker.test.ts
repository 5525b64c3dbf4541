import { describe, expect, it } from "vitest";
import { CloudlessError } from "../../api/errors.js";
import { seededRng } from "../../lib/rng.js";
import {
  consecutiveFailuresToEject,
  EndpointPicker,
  firstEjectionMs,
  maxEjectionMs,
  maxEndpointsPerServicePort,
  type ServiceEndpoint,
} from "./endpointPicker.js";

const here = { node: "n1", zone: "z1", region: "r1" };
const t0 = 1_700_000_000_000;

function endpoint(id: string, overrides: Partial<ServiceEndpoint> = {}): ServiceEndpoint {
  return { id, node: "n9", zone: "z9", region: "r9", ready: true, weight: 1, ...overrides };
}

function picker(endpoints: ServiceEndpoint[], seed = 42): EndpointPicker {
  const p = new EndpointPicker({ locality: here, rng: seededRng(seed) });
  p.setEndpoints(endpoints);
  return p;
}

/** Counts picks per endpoint id over `count` picks at `nowMs`. */
function shares(p: EndpointPicker, count: number, nowMs = t0): Map<string, number> {
  const counts = new Map<string, number>();
  for (let i = 0; i < count; i++) {
    const id = p.pick(nowMs)?.endpoint.id ?? "none";
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

function failTimes(p: EndpointPicker, id: string, times: number, nowMs: number): void {
  for (let i = 0; i < times; i++) p.reportConnectFailure(id, nowMs);
}

describe("EndpointPicker readiness", () => {
  it("REQ-042 a not-ready endpoint gets no new connection", () => {
    const p = picker([endpoint("a", { ready: false }), endpoint("b"), endpoint("c")]);
    const counts = shares(p, 1_000);
    expect(counts.get("a")).toBeUndefined();
    expect((counts.get("b") ?? 0) + (counts.get("c") ?? 0)).toBe(1_000);
  });

  it("REQ-042 a weight-0 endpoint is drained and gets no new connection", () => {
    const p = picker([endpoint("a", { weight: 0 }), endpoint("b")]);
    expect(shares(p, 500).get("b")).toBe(500);
  });

  it("REQ-042 no ready endpoint: pick answers undefined", () => {
    expect(picker([endpoint("a", { ready: false })]).pick(t0)).toBeUndefined();
    expect(picker([]).pick(t0)).toBeUndefined();
  });

  it("REQ-042 a readiness flip in a new set takes effect on the next pick", () => {
    const p = picker([endpoint("a", { node: "n1" }), endpoint("b")]);
    expect(p.pick(t0)?.endpoint.id).toBe("a");
    p.setEndpoints([endpoint("a", { node: "n1", ready: false }), endpoint("b")]);
    expect(p.pick(t0)?.endpoint.id).toBe("b");
  });
});

describe("EndpointPicker locality", () => {
  const sameNode = endpoint("node", { node: "n1", zone: "z1", region: "r1" });
  const sameZone = endpoint("zone", { node: "n2", zone: "z1", region: "r1" });
  const sameRegion = endpoint("region", { node: "n3", zone: "z2", region: "r1" });
  const elsewhere = endpoint("far", { node: "n4", zone: "z3", region: "r2" });
  const all = [elsewhere, sameRegion, sameZone, sameNode];

  it("REQ-042 prefers the same node, then zone, then region, then anywhere", () => {
    const p = picker(all);
    expect(p.pick(t0)).toEqual({ endpoint: sameNode, tier: "node" });
    p.setEndpoints([elsewhere, sameRegion, sameZone]);
    expect(p.pick(t0)).toEqual({ endpoint: sameZone, tier: "zone" });
    p.setEndpoints([elsewhere, sameRegion]);
    expect(p.pick(t0)).toEqual({ endpoint: sameRegion, tier: "region" });
    p.setEndpoints([elsewhere]);
    expect(p.pick(t0)).toEqual({ endpoint: elsewhere, tier: "any" });
  });

  it("REQ-042 the closest tier takes every new connection while it has a ready endpoint (no partial spill)", () => {
    const p = picker([...all, endpoint("node2", { node: "n1", weight: 1 })]);
    const counts = shares(p, 2_000);
    expect((counts.get("node") ?? 0) + (counts.get("node2") ?? 0)).toBe(2_000);
  });

  it("REQ-042 spills to the next tier when the closer one has only not-ready endpoints", () => {
    const p = picker([{ ...sameNode, ready: false }, sameZone, elsewhere]);
    expect(shares(p, 200).get("zone")).toBe(200);
  });

  it("REQ-042 a zone of the same name in another region is not the same zone", () => {
    const p = picker([endpoint("twin", { node: "n5", zone: "z1", region: "r2" }), sameRegion]);
    expect(p.pick(t0)?.tier).toBe("region");
    expect(p.pick(t0)?.endpoint.id).toBe("region");
  });

  it("REQ-042 an unknown zone or region matches nothing", () => {
    const p = new EndpointPicker({
      locality: { node: "n1", zone: "", region: "" },
      rng: seededRng(1),
    });
    p.setEndpoints([endpoint("blank", { node: "n2", zone: "", region: "" })]);
    expect(p.pick(t0)?.tier).toBe("any");
  });
});

describe("EndpointPicker weights", () => {
  it("REQ-042 shares converge to weights: 1:1:2 over 10,000 seeded picks within 2 points", () => {
    const p = picker([
      endpoint("a", { weight: 1 }),
      endpoint("b", { weight: 1 }),
      endpoint("c", { weight: 2 }),
    ]);
    const counts = shares(p, 10_000);
    expect(Math.abs((counts.get("a") ?? 0) / 10_000 - 0.25)).toBeLessThan(0.02);
    expect(Math.abs((counts.get("b") ?? 0) / 10_000 - 0.25)).toBeLessThan(0.02);
    expect(Math.abs((counts.get("c") ?? 0) / 10_000 - 0.5)).toBeLessThan(0.02);
  });

  it("REQ-042 weights are products (workload × revision): 300 vs 100 gives 3:1", () => {
    const p = picker([endpoint("new", { weight: 300 }), endpoint("old", { weight: 100 })], 7);
    const counts = shares(p, 10_000);
    expect(Math.abs((counts.get("new") ?? 0) / 10_000 - 0.75)).toBeLessThan(0.02);
  });

  it("REQ-042 the same seed gives the same picks (deterministic under an injected rng)", () => {
    const endpoints = [endpoint("a"), endpoint("b"), endpoint("c", { weight: 5 })];
    const run = () => {
      const p = picker(endpoints, 99);
      return Array.from({ length: 50 }, () => p.pick(t0)?.endpoint.id);
    };
    expect(run()).toEqual(run());
    expect(new Set(run()).size).toBe(3);
  });
});

describe("EndpointPicker retry with exclude", () => {
  it("REQ-042 a retry excludes the endpoints that already failed this connect", () => {
    const p = picker([
      endpoint("local", { node: "n1" }),
      endpoint("zone", { node: "n2", zone: "z1", region: "r1" }),
      endpoint("far"),
    ]);
    const first = p.pick(t0);
    expect(first?.endpoint.id).toBe("local");
    const second = p.pick(t0, new Set(["local"]));
    expect(second?.endpoint.id).toBe("zone");
    expect(p.pick(t0, new Set(["local", "zone"]))?.endpoint.id).toBe("far");
    expect(p.pick(t0, new Set(["local", "zone", "far"]))).toBeUndefined();
  });
});

describe("EndpointPicker outlier ejection", () => {
  it("REQ-042 three consecutive connect failures eject an endpoint for 1 s, then it is back", () => {
    expect(consecutiveFailuresToEject).toBe(3);
    const p = picker([endpoint("local", { node: "n1" }), endpoint("far")]);
    failTimes(p, "local", 2, t0);
    expect(p.pick(t0)?.endpoint.id).toBe("local");
    p.reportConnectFailure("local", t0);
    expect(p.ejectedUntilMs("local", t0)).toBe(t0 + firstEjectionMs);
    expect(shares(p, 200, t0 + firstEjectionMs - 1).get("far")).toBe(200);
    expect(p.pick(t0 + firstEjectionMs)?.endpoint.id).toBe("local");
  });

  it("REQ-042 a success between failures resets the count", () => {
    const p = picker([endpoint("a"), endpoint("b")]);
    failTimes(p, "a", 2, t0);
    p.reportConnectSuccess("a");
    failTimes(p, "a", 2, t0);
    expect(p.ejectedUntilMs("a", t0)).toBeUndefined();
    p.reportConnectFailure("a", t0);
    expect(p.ejectedUntilMs("a", t0)).toBe(t0 + firstEjectionMs);
  });

  it("REQ-042 the back-off doubles per re-ejection up to 30 s and resets after a success", () => {
    const p = picker([endpoint("a"), endpoint("b")]);
    let now = t0;
    const backoffs: number[] = [];
    for (let i = 0; i < 8; i++) {
      failTimes(p, "a", 3, now);
      const until = p.ejectedUntilMs("a", now)!;
      backoffs.push(until - now);
      now = until;
    }
    expect(backoffs).toEqual([1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
    expect(maxEjectionMs).toBe(30_000);
    p.reportConnectSuccess("a");
    failTimes(p, "a", 3, now);
    expect(p.ejectedUntilMs("a", now)).toBe(now + firstEjectionMs);
  });

  it("REQ-042 failures reported while ejected (connects started before) do not extend the ejection", () => {
    const p = picker([endpoint("a"), endpoint("b")]);
    failTimes(p, "a", 3, t0);
    failTimes(p, "a", 10, t0 + 500);
    expect(p.ejectedUntilMs("a", t0 + 500)).toBe(t0 + firstEjectionMs);
    // After the back-off it takes three fresh failures again, and the next back-off is 2 s.
    failTimes(p, "a", 2, t0 + 1_000);
    expect(p.ejectedUntilMs("a", t0 + 1_000)).toBeUndefined();
    p.reportConnectFailure("a", t0 + 1_000);
    expect(p.ejectedUntilMs("a", t0 + 1_000)).toBe(t0 + 3_000);
  });

  it("REQ-042 NFR-A1 the last ready endpoint of the set is never ejected", () => {
    const p = picker([endpoint("only"), endpoint("down", { ready: false })]);
    failTimes(p, "only", 10, t0);
    expect(p.ejectedUntilMs("only", t0)).toBeUndefined();
    expect(p.pick(t0)?.endpoint.id).toBe("only");
  });

  it("REQ-042 of two failing endpoints one stays; the other is ejected once a peer is back", () => {
    const p = picker([endpoint("a"), endpoint("b")]);
    failTimes(p, "a", 3, t0);
    failTimes(p, "b", 5, t0);
    expect(p.ejectedUntilMs("a", t0)).toBe(t0 + firstEjectionMs);
    expect(p.ejectedUntilMs("b", t0)).toBeUndefined();
    expect(shares(p, 100, t0).get("b")).toBe(100);
    // "a" is back; "b" is still at its threshold, so its next failure ejects it.
    p.reportConnectFailure("b", t0 + firstEjectionMs);
    expect(p.ejectedUntilMs("b", t0 + firstEjectionMs)).toBe(t0 + 2 * firstEjectionMs);
    expect(shares(p, 100, t0 + firstEjectionMs).get("a")).toBe(100);
  });

  it("REQ-042 NFR-A1 when every ready endpoint is ejected, picking ignores ejection rather than refusing", () => {
    const p = picker([endpoint("a", { node: "n1" }), endpoint("b")]);
    failTimes(p, "a", 3, t0);
    expect(p.ejectedUntilMs("a", t0)).toBeDefined();
    // "b" turns not ready: the ejected "a" is all that is left, so it gets the connection.
    p.setEndpoints([endpoint("a", { node: "n1" }), endpoint("b", { ready: false })]);
    expect(p.ejectedUntilMs("a", t0)).toBeDefined();
    expect(p.pick(t0)?.endpoint.id).toBe("a");
  });

  it("REQ-042 NFR-A1 with no set update for 15 minutes (coordinator away) picks go on and ejections end on time", () => {
    const p = picker([endpoint("a", { node: "n1" }), endpoint("b")]);
    failTimes(p, "a", 3, t0);
    const fifteenMinutesMs = 15 * 60_000;
    for (let now = t0; now < t0 + fifteenMinutesMs; now += 60_000) {
      const expected = now < t0 + firstEjectionMs ? "b" : "a";
      expect(p.pick(now)?.endpoint.id).toBe(expected);
    }
  });

  it("REQ-042 an ejected endpoint spills its tier to the next one", () => {
    const p = picker([
      endpoint("local", { node: "n1" }),
      endpoint("zone", { node: "n2", zone: "z1", region: "r1" }),
    ]);
    failTimes(p, "local", 3, t0);
    expect(p.pick(t0)).toMatchObject({ endpoint: { id: "zone" }, tier: "zone" });
  });
});

describe("EndpointPicker endpoint set updates", () => {
  it("REQ-042 an update keeps the ejection of endpoints that stay and drops the state of gone ones", () => {
    const p = picker([endpoint("a"), endpoint("b"), endpoint("c")]);
    failTimes(p, "a", 3, t0);
    failTimes(p, "b", 2, t0);
    expect(p.trackedEndpoints).toBe(2);
    p.setEndpoints([endpoint("a"), endpoint("c"), endpoint("d")]);
    expect(p.ejectedUntilMs("a", t0)).toBe(t0 + firstEjectionMs);
    expect(p.trackedEndpoints).toBe(1);
    // "b" comes back with a clean history: two failures no longer add up to three.
    p.setEndpoints([endpoint("a"), endpoint("b"), endpoint("c")]);
    p.reportConnectFailure("b", t0);
    expect(p.ejectedUntilMs("b", t0)).toBeUndefined();
  });

  it("REQ-042 reports for ids not in the set leave no state (maps bounded by the set)", () => {
    const p = picker([endpoint("a"), endpoint("b")]);
    for (let i = 0; i < 1_000; i++) p.reportConnectFailure(`ghost-${i}`, t0);
    expect(p.trackedEndpoints).toBe(0);
    p.reportConnectFailure("a", t0);
    p.reportConnectSuccess("a");
    expect(p.trackedEndpoints).toBe(0);
  });

  it("REQ-042 a bad set is refused whole with a one-line error, and the old set stays", () => {
    const p = picker([endpoint("a", { node: "n1" })]);
    const bad: ServiceEndpoint[][] = [
      [endpoint("x"), endpoint("x")],
      [endpoint("")],
      [endpoint("x", { weight: -1 })],
      [endpoint("x", { weight: Number.NaN })],
      [endpoint("x", { weight: 2_000_000 })],
      Array.from({ length: maxEndpointsPerServicePort + 1 }, (_, i) => endpoint(`e${i}`)),
    ];
    for (const endpoints of bad) {
      expect(() => p.setEndpoints(endpoints)).toThrow(CloudlessError);
      try {
        p.setEndpoints(endpoints);
      } catch (error) {
        expect((error as CloudlessError).code).toBe("InvalidArgument");
        expect((error as Error).message).not.toContain("\n");
      }
    }
    expect(p.pick(t0)?.endpoint.id).toBe("a");
    // The limit itself is accepted.
    p.setEndpoints(Array.from({ length: maxEndpointsPerServicePort }, (_, i) => endpoint(`e${i}`)));
    expect(p.pick(t0)?.tier).toBe("any");
  });

  it("REQ-042 the picker refuses nonsensical ejection settings", () => {
    const rng = seededRng(1);
    expect(
      () => new EndpointPicker({ locality: here, rng, consecutiveFailuresToEject: 0 }),
    ).toThrow(/consecutiveFailuresToEject/);
    expect(
      () => new EndpointPicker({ locality: here, rng, firstEjectionMs: 5_000, maxEjectionMs: 1 }),
    ).toThrow(/back-off/);
  });

  it("REQ-042 the picker copies the set: a caller mutating its array changes nothing", () => {
    const endpoints = [endpoint("a")];
    const p = picker(endpoints);
    endpoints.push(endpoint("b"));
    (endpoints[0] as { ready: boolean }).ready = false;
    expect(p.pick(t0)?.endpoint.id).toBe("a");
  });
});

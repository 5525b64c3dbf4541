import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { CloudlessError } from "./errors.js";
import {
  namesCoordinator,
  parseSpiffeUri,
  parseTrustDomainUri,
  spiffeUri,
  trustDomainUri,
  validateClusterName,
  validateNodeName,
} from "./identity.js";

describe("names and SPIFFE URIs", () => {
  it("accepts DNS-1123 labels and explains the rule otherwise", () => {
    for (const name of ["a", "node-1", "0", "a".repeat(63)]) {
      expect(validateNodeName(name), name).toEqual({ ok: true });
    }
    for (const name of ["", "-a", "a-", "A", "a_b", "a.b", "a b", "a".repeat(64), "é"]) {
      const result = validateNodeName(name);
      expect(result.ok, name).toBe(false);
      if (!result.ok) {
        expect(result.reason).toContain("lowercase letters (a-z), digits (0-9) or '-'");
        expect(result.reason).toContain(JSON.stringify(name));
      }
    }
    expect(validateClusterName("prod-eu").ok).toBe(true);
    expect(validateClusterName("Prod").ok).toBe(false);
  });

  it("round-trips spiffeUri through parseSpiffeUri", () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/);
    const kind = fc.constantFrom("node" as const, "admin" as const, "coordinator" as const);
    fc.assert(
      fc.property(label, kind, label, (cluster, k, name) => {
        const parsed = parseSpiffeUri(spiffeUri(cluster, k, name));
        return parsed?.clusterName === cluster && parsed.kind === k && parsed.name === name;
      }),
    );
    expect(spiffeUri("c", "node", "n1")).toBe("spiffe://c/node/n1");
  });

  it("refuses malformed SPIFFE URIs", () => {
    for (const uri of [
      "spiffe://c/node",
      "spiffe://c/node/",
      "spiffe://c/node/n1/x",
      "spiffe://c/root/n1",
      "spiffe://C/node/n1",
      "spiffe://c/node/n1?x=1",
      "spiffe://c/node/N1",
      "https://c/node/n1",
      "spiffe://c/node/n%31",
    ]) {
      expect(parseSpiffeUri(uri), uri).toBeUndefined();
    }
    expect(() => spiffeUri("c", "node", "Bad")).toThrow(CloudlessError);
  });
});

describe("namesCoordinator", () => {
  it("NFR-S1 contract: only a coordinator URI SAN of the expected cluster passes", () => {
    const san = (...entries: string[]) => entries.join(", ");
    expect(namesCoordinator(san("DNS:localhost", "URI:spiffe://blue/coordinator/c1"), "blue")).toBe(
      true,
    );
    expect(namesCoordinator("URI:spiffe://blue/coordinator/c1", undefined)).toBe(true);
    expect(namesCoordinator("URI:spiffe://green/coordinator/c1", "blue")).toBe(false);
    expect(namesCoordinator("URI:spiffe://blue/node/c1", "blue")).toBe(false);
    expect(namesCoordinator("URI:spiffe://blue/admin/admin", undefined)).toBe(false);
    expect(namesCoordinator("URI:spiffe://blue/coordinator/c1/x", "blue")).toBe(false);
    expect(namesCoordinator("DNS:spiffe://blue/coordinator/c1", "blue")).toBe(false);
    expect(namesCoordinator("", undefined)).toBe(false);
  });
});

describe("trust domain URIs", () => {
  it("NFR-S1 contract: round-trip a cluster name and refuse anything else", () => {
    expect(parseTrustDomainUri(trustDomainUri("prod-eu"))).toBe("prod-eu");
    for (const uri of ["spiffe://Prod", "spiffe://c/node/n1", "spiffe://", "https://c"]) {
      expect(parseTrustDomainUri(uri), uri).toBeUndefined();
    }
  });
});

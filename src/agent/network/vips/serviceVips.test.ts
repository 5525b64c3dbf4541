/**
 * buildRuleset (pure) and its input checks (REQ-042): the JSON nft applies, and the
 * one-line errors that refuse a bad forward set before anything is applied.
 */
import { describe, expect, it } from "vitest";
import { buildRuleset, maxVipForwards, type VipForward } from "./serviceVips.js";

type Command = Record<string, Record<string, Record<string, unknown>>>;

function commands(forwards: readonly VipForward[], cidr = "10.96.0.0/16"): Command[] {
  return (buildRuleset("cloudless", cidr, forwards) as { nftables: Command[] }).nftables;
}

const web: VipForward = { vip: "10.96.0.20", port: 80, protocol: "tcp", toPort: 41_000 };
const dns: VipForward = { vip: "10.96.0.10", port: 53, protocol: "udp", toPort: 41_053 };

describe("buildRuleset (REQ-042)", () => {
  it("REQ-042: replaces the whole table in one transaction: add, delete, then the new table", () => {
    const [first, second, third] = commands([web]);
    expect(first).toEqual({ add: { table: { family: "ip", name: "cloudless" } } });
    expect(second).toEqual({ delete: { table: { family: "ip", name: "cloudless" } } });
    expect(third?.add?.table?.name).toBe("cloudless");
  });

  it("REQ-042: one map keyed on daddr . l4proto . dport holds every forward, sorted", () => {
    const map = commands([web, dns]).find((c) => c.add?.map)?.add?.map;
    expect(map).toMatchObject({
      name: "forwards",
      type: ["ipv4_addr", "inet_proto", "inet_service"],
      map: "inet_service",
      elem: [
        [{ concat: ["10.96.0.10", "udp", 53] }, 41_053],
        [{ concat: ["10.96.0.20", "tcp", 80] }, 41_000],
      ],
    });
    // An empty set has no elem (nft rejects an empty list).
    expect(commands([]).find((c) => c.add?.map)?.add?.map).not.toHaveProperty("elem");
  });

  it("REQ-042: DNATs to 127.0.0.1 on output (priority -100) and prerouting, and refuses the rest of the range", () => {
    const all = commands([web]);
    const chains = all.filter((c) => c.add?.chain).map((c) => c.add?.chain);
    expect(chains).toContainEqual(
      expect.objectContaining({ name: "nat_output", type: "nat", hook: "output", prio: -100 }),
    );
    expect(chains).toContainEqual(
      expect.objectContaining({
        name: "nat_prerouting",
        type: "nat",
        hook: "prerouting",
        prio: -100,
      }),
    );
    const rules = all
      .filter((c) => c.add?.rule)
      .map((c) => c.add?.rule as { chain: string; expr: unknown[] });
    const dnat = rules.find((r) => r.chain === "nat_output")?.expr.at(-1);
    expect(dnat).toMatchObject({
      dnat: { family: "ip", addr: "127.0.0.1", port: { map: { data: "@forwards" } } },
    });
    const refusals = rules.filter((r) => r.chain === "filter_output").map((r) => r.expr.at(-1));
    expect(refusals).toEqual([
      { reject: { type: "tcp reset" } },
      { reject: { type: "icmp", expr: "port-unreachable" } },
    ]);
    expect(JSON.stringify(rules.find((r) => r.chain === "filter_output"))).toContain(
      '"addr":"10.96.0.0","len":16',
    );
  });

  it("REQ-042: the same set in another order yields the same text (apply skips it)", () => {
    expect(JSON.stringify(commands([web, dns]))).toBe(JSON.stringify(commands([dns, web])));
  });

  it("REQ-042: refuses a bad forward set whole with a one-line error", () => {
    const bad: [VipForward[], RegExp][] = [
      [[{ ...web, vip: "10.96.0" }], /VIP "10.96.0" is not an IPv4 address/],
      [[{ ...web, vip: "fd00::1" }], /is not an IPv4 address/],
      [[{ ...web, vip: "10.97.0.1" }], /VIP 10.97.0.1 is outside the service range 10.96.0.0\/16/],
      [[{ ...web, port: 0 }], /port 0 is not a port 1-65535/],
      [[{ ...web, port: 65_536 }], /port 65536 is not a port 1-65535/],
      [[{ ...web, toPort: 1.5 }], /target port 1.5 is not a port/],
      [[{ ...web, protocol: "sctp" as "tcp" }], /protocol "sctp" is not tcp or udp/],
      [[web, { ...web, toPort: 1 }], /forwarded twice/],
      [
        Array.from({ length: maxVipForwards + 1 }, (_, i) => ({ ...web, port: (i % 60_000) + 1 })),
        /exceed the limit of 100000/,
      ],
    ];
    for (const [forwards, message] of bad) {
      expect(() => buildRuleset("cloudless", "10.96.0.0/16", forwards)).toThrow(message);
      try {
        buildRuleset("cloudless", "10.96.0.0/16", forwards);
      } catch (err) {
        expect((err as Error).message).not.toContain("\n");
      }
    }
    expect(() => buildRuleset("cloudless", "10.96.0.1/16", [])).toThrow(
      /has host bits set; use 10.96.0.0\/16/,
    );
    expect(() => buildRuleset("cloudless", "10.96.0.0/33", [])).toThrow(/not an IPv4 range/);
    expect(() => buildRuleset("Cloud-less", "10.96.0.0/16", [])).toThrow(/table name/);
  });
});

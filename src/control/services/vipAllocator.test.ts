import { describe, expect, it } from "vitest";
import { dnsAddressOf, parseServiceCidr, VipAllocator } from "./vipAllocator.js";

describe("REQ-041 service CIDR and VIP allocator", () => {
  it("parses and normalises an IPv4 range; the DNS address is base + 10", () => {
    const cidr = parseServiceCidr("10.43.0.0/16");
    expect(cidr).toMatchObject({ text: "10.43.0.0/16", prefix: 16, size: 65536 });
    expect(dnsAddressOf(cidr)).toBe("10.43.0.10");
  });

  it.each([
    ["10.43.0.0", "expected an IPv4 range"],
    ["fd00::/64", "expected an IPv4 range"],
    ["10.43.0.0/8", "prefix /8 is out of range"],
    ["10.43.0.0/30", "prefix /30 is out of range"],
    ["10.300.0.0/16", "expected an IPv4 range"],
    ["10.43.0.5/16", "did you mean 10.43.0.0/16?"],
  ])("refuses %s with a one-line reason", (text, reason) => {
    expect(() => parseServiceCidr(text)).toThrow(reason);
    try {
      parseServiceCidr(text);
    } catch (error) {
      expect(String((error as Error).message)).not.toContain("\n");
    }
  });

  it("never hands out the network address, .1, the DNS address or the broadcast; full → undefined", () => {
    const allocator = new VipAllocator(parseServiceCidr("10.43.0.0/28"));
    const given: string[] = [];
    for (let i = 0; i < 20; i++) {
      const vip = allocator.allocate(`default/s${i}`);
      if (vip) given.push(vip);
    }
    expect(given).toHaveLength(12);
    expect(given).not.toContain("10.43.0.0");
    expect(given).not.toContain("10.43.0.1");
    expect(given).not.toContain("10.43.0.10");
    expect(given).not.toContain("10.43.0.15");
    expect(new Set(given).size).toBe(12);
    expect(allocator.allocate("default/one-more")).toBeUndefined();
  });

  it("is stable: a service keeps its VIP, a restored VIP is kept, a released one is reused last", () => {
    const cidr = parseServiceCidr("10.43.0.0/16");
    const first = new VipAllocator(cidr);
    const web = first.allocate("default/web");
    expect(first.allocate("default/web")).toBe(web);
    // A new leader restores what the store holds, then allocates around it.
    const next = new VipAllocator(cidr);
    expect(next.reserve("default/web", web ?? "")).toBe(true);
    expect(next.vipOf("default/web")).toBe(web);
    expect(next.allocate("default/api")).not.toBe(web);
    expect(next.reserve("default/other", web ?? "")).toBe(false);
    expect(next.reserve("default/x", "10.44.0.2")).toBe(false);
    expect(next.reserve("default/x", "10.43.0.10")).toBe(false);
    const api = next.vipOf("default/api");
    next.release("default/api");
    expect(next.allocate("default/db")).not.toBe(api);
  });
});

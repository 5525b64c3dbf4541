import { describe, expect, it } from "vitest";
import { silentLogger } from "../../observe/logger.js";
import { type NetworkFlags, parseNetworkFlags, vipsFor } from "./networkComponents.js";
import type { VipProgrammer } from "./networkTypes.js";

const defaults: NetworkFlags = {
  meshPort: "7444",
  meshHost: "0.0.0.0",
  advertiseAddress: [],
  relay: false,
  serviceVips: "auto",
  dnsPort: "10053",
};

describe("parseNetworkFlags", () => {
  it("takes the defaults and valid values", () => {
    expect(parseNetworkFlags(defaults)).toEqual({
      meshPort: 7444,
      meshHost: "0.0.0.0",
      advertiseAddresses: [],
      relay: false,
      serviceVips: "auto",
      dnsPort: 10_053,
    });
    expect(
      parseNetworkFlags({
        ...defaults,
        meshPort: "0",
        advertiseAddress: ["203.0.113.5", "2001:db8::1", "203.0.113.5"],
        relay: true,
        serviceVips: "off",
      }),
    ).toMatchObject({
      meshPort: 0,
      advertiseAddresses: ["203.0.113.5", "2001:db8::1"],
      relay: true,
    });
  });

  it.each([
    [{ meshPort: "70000" }, /^--mesh-port 70000: expected a port number from 0 to 65535/],
    [{ meshPort: "-1" }, /^--mesh-port -1: expected a port number/],
    [{ meshPort: "12ab" }, /^--mesh-port 12ab: expected a port number/],
    [{ dnsPort: "65536" }, /^--dns-port 65536: expected a port number/],
    [{ meshHost: "example.com" }, /^--mesh-host example.com: expected an IP address/],
    [{ advertiseAddress: ["not-an-ip"] }, /^--advertise-address not-an-ip: expected an IP address/],
    [
      { advertiseAddress: ["0.0.0.0"] },
      /^--advertise-address 0.0.0.0: an unspecified address cannot be dialled/,
    ],
    [
      { advertiseAddress: Array.from({ length: 17 }, (_, i) => `10.0.0.${i + 1}`) },
      /^--advertise-address given 17 times; at most 16/,
    ],
    [{ serviceVips: "yes" }, /^--service-vips yes: expected auto, on or off$/],
  ])("refuses %j with a one-line error", (override, message) => {
    const error = (() => {
      try {
        parseNetworkFlags({ ...defaults, ...override });
      } catch (caught) {
        return caught as Error;
      }
      throw new Error("accepted");
    })();
    expect(error.message).toMatch(message);
    expect(error.message).not.toContain("\n");
  });
});

describe("vipsFor", () => {
  const programmer: VipProgrammer = { apply: () => undefined, remove: () => undefined };
  const available = { unavailableReason: () => undefined, create: () => programmer };
  const unavailable = { unavailableReason: () => "nft is not installed", create: () => programmer };

  it("off: none; auto: one when available, none when not; on: one, or an error naming why", async () => {
    expect(await vipsFor("off", { vips: available }, silentLogger)).toBeUndefined();
    expect(await vipsFor("auto", { vips: available }, silentLogger)).toBe(programmer);
    expect(await vipsFor("auto", { vips: unavailable }, silentLogger)).toBeUndefined();
    expect(await vipsFor("auto", {}, silentLogger)).toBeUndefined();
    expect(await vipsFor("on", { vips: available }, silentLogger)).toBe(programmer);
    await expect(vipsFor("on", { vips: unavailable }, silentLogger)).rejects.toThrow(
      /^--service-vips on: nft is not installed; fix that or start with --service-vips auto or off$/,
    );
  });
});

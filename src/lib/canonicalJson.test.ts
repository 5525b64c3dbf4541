import { describe, expect, it } from "vitest";
import { canonicalJson } from "./canonicalJson.js";

describe("canonicalJson", () => {
  it("REQ-081 contract: sorts keys at every level, drops undefined members, no whitespace", () => {
    const value = { b: [{ z: 1, a: null }, "x"], a: { d: true, c: undefined }, é: -0.5 };
    expect(canonicalJson(value)).toBe('{"a":{"d":true},"b":[{"a":null,"z":1},"x"],"é":-0.5}');
  });

  it("REQ-081 contract: equal values give equal text whatever their key order", () => {
    const one = { spec: { env: { B: "2", A: "1" }, image: "i" }, kind: "Workload" };
    const other = { kind: "Workload", spec: { image: "i", env: { A: "1", B: "2" } } };
    expect(canonicalJson(one)).toBe(canonicalJson(other));
  });

  it("REQ-081 contract: a fixed vector keeps the text stored hashes were computed with (index keys first)", () => {
    // Written by the three copies this module replaced (parse.ts, audit.ts, the replica
    // supervisor) before they were merged: array-index keys come first in numeric order.
    const value = {
      labels: { "10": "ten", "2": "two", "1a": "one-a", Zed: "upper", app: "web", "x.y/z": "ä€😀" },
      env: { B: "2", A: 'é\u0001"q"', _9: "nine" },
    };
    const text =
      '{"env":{"A":"é\\u0001\\"q\\"","B":"2","_9":"nine"},' +
      '"labels":{"2":"two","10":"ten","1a":"one-a","Zed":"upper","app":"web","x.y/z":"ä€😀"}}';
    expect(canonicalJson(value)).toBe(text);
  });
});

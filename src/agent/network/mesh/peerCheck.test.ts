import { X509Certificate } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import {
  meshPeer,
  type TestCluster,
  testCluster,
} from "../../../../test/helpers/meshCertificates.js";
import type { MeshPeer } from "../../../api/gen/cloudless/v1/service_pb.js";
import { checkNodeCertificate, MAX_CACHED_PEER_IDENTITIES } from "./peerCheck.js";

function der(pem: string): Buffer {
  return new X509Certificate(pem).raw;
}

describe("mesh peer check with parsed identities kept (REQ-060)", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await testCluster("test");
  });

  it("REQ-060: a certificate seen before is checked against the members again: accepted while a member, refused once deleted, refused for another cluster name", async () => {
    const a = der((await cluster.issue("node", "a")).certPem);
    const members = new Map<string, MeshPeer>([["a", meshPeer("a")]]);
    expect(checkNodeCertificate(a, "test", members)).toEqual({ ok: true, node: "a" });
    expect(checkNodeCertificate(a, "test", members)).toEqual({ ok: true, node: "a" });
    expect(checkNodeCertificate(a, "test", new Map())).toEqual({
      ok: false,
      reason: "node a is not a member",
    });
    // Re-enrolled after this certificate was issued: an earlier incarnation.
    const reenrolled = new Map([["a", meshPeer("a", { enrolledAtMs: Date.now() + 3_600_000 })]]);
    expect(checkNodeCertificate(a, "test", reenrolled).ok).toBe(false);
    expect(checkNodeCertificate(a, "other", members)).toEqual({
      ok: false,
      reason: "the certificate carries no identity of cluster other",
    });
  });

  it("REQ-060: two certificates are two identities, and an admin certificate stays refused when seen again", async () => {
    const a = der((await cluster.issue("node", "a")).certPem);
    const b = der((await cluster.issue("node", "b")).certPem);
    const admin = der((await cluster.issue("admin", "alice")).certPem);
    const members = new Map([
      ["a", meshPeer("a")],
      ["b", meshPeer("b")],
    ]);
    expect(checkNodeCertificate(a, "test", members, "b").ok).toBe(false);
    expect(checkNodeCertificate(b, "test", members, "b")).toEqual({ ok: true, node: "b" });
    for (let i = 0; i < 2; i++) {
      expect(checkNodeCertificate(admin, "test", members)).toEqual({
        ok: false,
        reason: "a admin certificate is not a mesh peer",
      });
    }
  });

  it("REQ-060: more certificates than the cache holds are all still judged right (the oldest entries go)", async () => {
    const a = der((await cluster.issue("node", "a")).certPem);
    const members = new Map([["a", meshPeer("a")]]);
    expect(checkNodeCertificate(a, "test", members).ok).toBe(true);
    // Distinct DER under the same CA is costly to mint by the thousand; distinct cluster
    // names give distinct cache keys for the same bytes, which fills the cache as well.
    for (let i = 0; i <= MAX_CACHED_PEER_IDENTITIES; i++) {
      expect(checkNodeCertificate(a, `c${i}`, members).ok).toBe(false);
    }
    expect(checkNodeCertificate(a, "test", members)).toEqual({ ok: true, node: "a" });
  });
});

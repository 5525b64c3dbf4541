import { randomBytes } from "node:crypto";
import * as net from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type EtcdCluster, etcdUnavailableReason, startEtcd } from "../../../test/helpers/etcd.js";
import { bytePrefixEnd, normalizeNamespace } from "./etcdKeyspace.js";
import { type EtcdStore, openEtcdStore, parseEtcdStoreUrl } from "./etcdStore.js";
import { type Store, StoreError, type WatchEnd } from "./store.js";
import { runStoreContract, type StoreFixture } from "./storeContract.js";

const etcdMissing = await etcdUnavailableReason();
if (etcdMissing) console.warn(`skipping etcd store tests: ${etcdMissing}`);

/** A namespace no other test uses, so tests sharing one etcd never see each other. */
function freshPrefix(): string {
  return `/cloudless-test/${randomBytes(6).toString("hex")}`;
}

async function etcdFixture(cluster: EtcdCluster): Promise<StoreFixture> {
  const prefix = freshPrefix();
  const open = () => openEtcdStore({ endpoints: cluster.endpoints, prefix });
  const opened: Store[] = [await open()];
  return {
    store: opened[0] as Store,
    // Reopening is a new client on the same etcd and namespace; the data never went away.
    reopen: async () => {
      const store = await open();
      opened.push(store);
      return store;
    },
    cleanup: async () => {
      for (const store of opened) await store.close();
    },
  };
}

async function storeError(action: Promise<unknown>): Promise<StoreError> {
  try {
    await action;
  } catch (err) {
    expect(err).toBeInstanceOf(StoreError);
    return err as StoreError;
  }
  throw new Error("expected the call to fail with a StoreError");
}

async function until(condition: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  await vi.waitFor(
    () => {
      if (!condition()) throw new Error(`timed out waiting for ${what}`);
    },
    { timeout: timeoutMs, interval: 10 },
  );
}

/**
 * A watch that, like a real consumer, watches again from the last revision it saw + 1
 * whenever its watch ends as "closed", possibly through another store.
 */
function resumingWatch(first: Store, prefix: string, from: number, resumeOn: Store) {
  const revisions: number[] = [];
  const ends: WatchEnd[] = [];
  let stopped = false;
  let cancel: () => void = () => undefined;
  const open = (store: Store, fromRevision: number) => {
    const watch = store.watch(
      prefix,
      { fromRevision },
      {
        onEvents: (_events, revision) => revisions.push(revision),
        onEnd: (end) => {
          ends.push(end);
          if (!stopped && end.reason === "closed")
            open(resumeOn, (revisions.at(-1) ?? from - 1) + 1);
        },
      },
    );
    cancel = () => watch.cancel();
  };
  open(first, from);
  return {
    revisions,
    ends,
    stop() {
      stopped = true;
      cancel();
    },
  };
}

describe("etcd store: pure helpers", () => {
  it("REQ-012 parses etcd:// store URLs and refuses malformed ones", () => {
    expect(parseEtcdStoreUrl("etcd://h1:2379,h2:2379,10.0.0.3:2379")).toEqual({
      endpoints: ["h1:2379", "h2:2379", "10.0.0.3:2379"],
    });
    expect(parseEtcdStoreUrl("etcd://h1:2379/prod")).toEqual({
      endpoints: ["h1:2379"],
      prefix: "/prod",
    });
    for (const bad of ["etcd://", "http://h1:2379", "etcd://h1", "etcd://h1:2379,,h2:1"]) {
      expect(() => parseEtcdStoreUrl(bad), bad).toThrow(/etcd:\/\/host:port/);
    }
  });

  it("REQ-012 namespaces end in one slash so sibling clusters never overlap", () => {
    expect(normalizeNamespace("/cloudless")).toBe("/cloudless/");
    expect(normalizeNamespace("/cloudless/")).toBe("/cloudless/");
    expect(normalizeNamespace("")).toBe("");
    expect(bytePrefixEnd(Buffer.from("/a/"))).toEqual(Buffer.from("/a0"));
    expect(bytePrefixEnd(Buffer.from([0x61, 0xff]))).toEqual(Buffer.from([0x62]));
    expect(bytePrefixEnd(Buffer.alloc(0))).toEqual(Buffer.from([0]));
  });
});

describe("etcd store: unreachable etcd", () => {
  it("REQ-012 a refused endpoint fails the open with unavailable, naming it, within the dial deadline", async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as net.AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const error = await storeError(
      openEtcdStore({ endpoints: [`127.0.0.1:${port}`], dialTimeoutMs: 2_000 }),
    );
    expect(error.kind).toBe("unavailable");
    expect(error.message).toContain(`127.0.0.1:${port}`);
    expect(error.message).toMatch(/no member answered/);
  });

  it("REQ-012 an endpoint that accepts but never answers fails the open at its deadline", async () => {
    const sockets = new Set<net.Socket>();
    const server = net.createServer((socket) => {
      sockets.add(socket); // swallow the HTTP/2 preface, never answer
      socket.on("error", () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as net.AddressInfo;
    try {
      const error = await storeError(
        openEtcdStore({ endpoints: [`127.0.0.1:${port}`], dialTimeoutMs: 1_000 }),
      );
      // The configured deadline is what ended the attempt (not the 5 s default), as the
      // message says; no wall-clock assertion.
      expect(error.message).toContain("1000 ms");
      expect(error.kind).toBe("unavailable");
      expect(error.message).toContain(`127.0.0.1:${port}`);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe.skipIf(etcdMissing)("etcd store, 1 member", () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    cluster = await startEtcd({ members: 1 });
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  runStoreContract("etcd (1 member)", () => etcdFixture(cluster));

  it("REQ-012 stores under different namespaces of one etcd do not see each other", async () => {
    const base = freshPrefix();
    const a = await openEtcdStore({ endpoints: cluster.endpoints, prefix: `${base}/a` });
    const b = await openEtcdStore({ endpoints: cluster.endpoints, prefix: `${base}/a2` });
    try {
      await a.put("/k", "from-a");
      await b.put("/k", "from-b");
      expect((await a.range("")).kvs.map((kv) => [kv.key, kv.value])).toEqual([["/k", "from-a"]]);
      expect((await b.get("/k"))?.value).toBe("from-b");
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("REQ-012 lease TTLs are rounded up to whole seconds, never below what was asked", async () => {
    const store = await openEtcdStore({ endpoints: cluster.endpoints, prefix: freshPrefix() });
    try {
      const short = await store.grantLease(1);
      const odd = await store.grantLease(1_001);
      expect(short.ttlMs).toBe(1_000);
      expect(odd.ttlMs).toBe(2_000);
      await store.revokeLease(short.id);
      await store.revokeLease(odd.id);
    } finally {
      await store.close();
    }
  });
});

describe.skipIf(etcdMissing)("etcd store, 3 members", () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    cluster = await startEtcd({ members: 3 });
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  runStoreContract("etcd (3 members)", () => etcdFixture(cluster));

  it("REQ-012 with one member killed, puts and watches keep going and no watch loses an event", async () => {
    const prefix = freshPrefix();
    const victim = 0;
    const store = await openEtcdStore({
      endpoints: cluster.endpoints,
      prefix,
      requestTimeoutMs: 2_000,
    });
    // Pinned to the member that will die, so one watch is certainly on it.
    const pinned = await openEtcdStore({
      endpoints: [cluster.endpoints[victim] as string],
      prefix,
      requestTimeoutMs: 1_500,
    });
    const watchers: ReturnType<typeof resumingWatch>[] = [];
    try {
      const from = (await store.currentRevision()) + 1;
      const onVictim = resumingWatch(pinned, "/w/", from, store);
      watchers.push(onVictim);
      for (let i = 0; i < 4; i++) watchers.push(resumingWatch(store, "/w/", from, store));
      const written: number[] = [];
      for (let i = 0; i < 10; i++) written.push(await store.put(`/w/k${i % 3}`, `before-${i}`));
      await until(
        () => watchers.every((w) => w.revisions.at(-1) === written.at(-1)),
        "every watch to see the writes before the kill",
      );

      await cluster.killMember(victim);
      // A write in flight while the leader dies may time out (etcd drops its proposal, or
      // applies it late): the caller retries, as controllers do. Every write succeeds.
      const deadline = Date.now() + 20_000;
      const putRetrying = async (key: string, value: string): Promise<number> => {
        for (;;) {
          try {
            return await store.put(key, value);
          } catch (err) {
            if (!(err instanceof StoreError && err.kind === "unavailable")) throw err;
            if (Date.now() > deadline) throw err;
          }
        }
      };
      for (let i = 0; i < 10; i++) written.push(await putRetrying(`/w/k${i % 3}`, `after-${i}`));
      const last = written.at(-1) ?? 0;

      // The history read again from the start is what every watch must have seen.
      const reference = resumingWatch(store, "/w/", from, store);
      watchers.push(reference);
      await until(
        () => watchers.every((w) => (w.revisions.at(-1) ?? 0) >= last),
        "every watch (resumed where needed) to see the writes after the kill",
      );
      const upToLast = (revisions: number[]) => revisions.filter((r) => r <= last);
      expect(upToLast(reference.revisions)).toEqual(expect.arrayContaining(written));
      for (const watcher of watchers) {
        expect(upToLast(watcher.revisions)).toEqual(upToLast(reference.revisions));
        expect(watcher.ends.every((e) => e.reason === "closed")).toBe(true);
      }
      // The watch on the dead member ended as "closed" and was resumed elsewhere.
      expect(onVictim.ends.map((e) => e.reason)).toEqual(["closed"]);
      expect(onVictim.ends[0]?.message).toMatch(/watch again with fromRevision \d+/);

      // A store whose only member is gone says so, within its deadline.
      const error = await storeError(pinned.get("/w/k0"));
      expect(error.kind).toBe("unavailable");
      expect(error.message).toContain(cluster.endpoints[victim]);
    } finally {
      for (const watcher of watchers) watcher.stop();
      await pinned.close();
      await store.close();
      await cluster.restartMember(victim);
    }
    // The restarted member caught up and serves the latest data.
    const rejoined = await openEtcdStore({
      endpoints: [cluster.endpoints[victim] as string],
      prefix,
    });
    try {
      expect((await rejoined.get("/w/k0"))?.value).toBe("after-9");
    } finally {
      await rejoined.close();
    }
  });

  it("REQ-012 without a quorum calls fail as unavailable within the deadline and watches end as closed; the store recovers", async () => {
    const store: EtcdStore = await openEtcdStore({
      endpoints: cluster.endpoints,
      prefix: freshPrefix(),
      requestTimeoutMs: 1_500,
    });
    // A watch on the member that survives, alone, without a leader.
    const survivor = await openEtcdStore({
      endpoints: [cluster.endpoints[0] as string],
      prefix: store.prefix,
    });
    try {
      await store.put("/q", "1");
      const ends: WatchEnd[] = [];
      let seen = 0;
      survivor.watch(
        "/",
        {},
        { onEvents: (_events, revision) => (seen = revision), onEnd: (end) => ends.push(end) },
      );
      const watched = await store.put("/q", "watched");
      await until(() => seen === watched, "the watch on the survivor to be live");
      await cluster.killMember(1);
      await cluster.killMember(2);
      const error = await storeError(store.put("/q", "2"));
      expect(error.kind).toBe("unavailable");
      expect(error.message).toContain(cluster.endpoints.join(","));
      // The survivor's watch would never see another event: it is ended, not left hanging.
      await until(() => ends.length === 1, "the leaderless member to end the watch", 15_000);
      expect(ends[0]?.reason).toBe("closed");
      expect(ends[0]?.message).toMatch(/no leader.*watch again with fromRevision \d+/);
    } finally {
      await survivor.close();
      await Promise.all([cluster.restartMember(1), cluster.restartMember(2)]);
    }
    try {
      await vi.waitFor(async () => expect(await store.put("/q", "3")).toBeGreaterThan(0), {
        timeout: 15_000,
        interval: 50,
      });
      expect((await store.get("/q"))?.value).toBe("3");
    } finally {
      await store.close();
    }
  });
});

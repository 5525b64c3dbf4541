import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { listeningInodes, parseListeningSockets } from "./listeningSockets.js";

const header =
  "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
const listen8080 =
  "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 45980 1 0000000000000000 100 0 0 10 0";
const listen443Loopback =
  "   1: 0100007F:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 24756 1 0000000000000000 100 0 0 10 0";
const established =
  "   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 51234 1 0000000000000000 20 4 30 10 -1";
const listen6 =
  "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77001 1 0000000000000000 100 0 0 10 0";

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

describe("listening sockets from /proc/net/tcp", () => {
  it("REQ-032 parses listeners with their port and inode, and stops at the first socket that is not listening", () => {
    const parsed = parseListeningSockets(
      [header, listen8080, listen443Loopback, established, listen8080].join("\n"),
    );
    expect(parsed).toEqual({
      sockets: [
        { port: 8080, inode: 45980 },
        { port: 443, inode: 24756 },
      ],
      pastListeners: true,
    });
    expect(parseListeningSockets(`${header}\n${listen6}\n`)).toEqual({
      sockets: [{ port: 8080, inode: 77001 }],
      pastListeners: false,
    });
  });

  it("REQ-032 finds the IPv4 and IPv6 listeners of one port", async () => {
    const procNet = await mkdtemp(path.join(tmpdir(), "cloudless-procnet-"));
    dirs.push(procNet);
    await mkdir(procNet, { recursive: true });
    await writeFile(path.join(procNet, "tcp"), [header, listen8080, listen443Loopback].join("\n"));
    await writeFile(path.join(procNet, "tcp6"), [header, listen6].join("\n"));
    expect(await listeningInodes(8080, procNet)).toEqual([45980, 77001]);
    expect(await listeningInodes(9090, procNet)).toEqual([]);
  });

  it("REQ-032 sees a real listener of this process in the kernel's table", async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const inodes = await listeningInodes(port);
      expect(inodes).toHaveLength(1);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

import { readdir, readFile } from "node:fs/promises";
import { findLabLeaks } from "../helpers/netlab.js";

/**
 * Runs after the whole chaos suite (a vitest globalSetup teardown): the suite must leave
 * no lab namespace, bridge, veth, nftables table, and no Cloudless or etcd process it
 * started. A leak fails the run (issue 4: "the suite leaves nothing behind", asserted).
 */
export async function setup(): Promise<void> {}

export async function teardown(): Promise<void> {
  const leaks = await findLabLeaks();
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const argv = (await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => ""))
      .split("\0")
      .filter(Boolean);
    const line = argv.join(" ");
    const cloudless = /bin\/cloudless (coordinator|agent|up)\b/.test(line);
    const etcd = argv[0]?.endsWith("etcd") === true && line.includes("cloudless-etcd-");
    const replica = line.includes("process.env.PORT");
    if (cloudless || etcd || replica) leaks.push(`process ${entry}: ${line.slice(0, 200)}`);
  }
  console.log(
    `chaos leak check: ${leaks.length === 0 ? "no namespace, interface, fault table or process left behind" : `${leaks.length} LEFT BEHIND`}`,
  );
  if (leaks.length > 0) {
    process.exitCode = 1;
    throw new Error(`the chaos suite left ${leaks.length} things behind:\n${leaks.join("\n")}`);
  }
}

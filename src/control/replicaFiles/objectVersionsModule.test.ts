import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { waitFor } from "../../../test/helpers/processes.js";
import type { HeartbeatResponse } from "../../api/gen/cloudless/v1/node_pb.js";
import { ManualClock } from "../../lib/clock.js";
import { silentLogger } from "../../observe/logger.js";
import { HeartbeatHooks } from "../api/heartbeatHooks.js";
import type { CoordinatorCore, ModuleDefinition } from "../modules/module.js";
import { startModules } from "../modules/moduleHost.js";
import { heartbeatHooksKey } from "../nodes/nodesModule.js";
import { openSqliteStore } from "../store/sqliteStore.js";
import { configKeyPrefix, objectVersionsModule } from "./objectVersionsModule.js";

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** What a node stream received: kind/namespace/name@version per announced object. */
function announced(messages: HeartbeatResponse[]): string[] {
  return messages.flatMap((message) =>
    (message.objectVersions?.objects ?? []).map(
      (object) => `${object.kind}/${object.namespace}/${object.name}@${object.version}`,
    ),
  );
}

describe("object versions down the heartbeat stream (REQ-063, ADR 0055)", () => {
  it("REQ-063 NFR-S1 a new stream gets every secret and config version, then each change; never a value", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "cloudless-object-versions-"));
    const store = await openSqliteStore({
      path: path.join(dir, "store.db"),
      clock: new ManualClock(),
    });
    cleanups.push(async () => {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    });
    const record = (namespace: string, name: string, version: number) =>
      JSON.stringify({ namespace, name, version, sealed: "SEALED-VALUE-NOT-SENT" });
    await store.put("/secrets/default/db", record("default", "db", 1));
    await store.put(`${configKeyPrefix}prod/app`, record("prod", "app", 4));
    const hooks = new HeartbeatHooks();
    const provider: ModuleDefinition = {
      name: "hooks",
      start(context) {
        context.provide(heartbeatHooksKey, hooks);
        return {};
      },
    };
    const host = await startModules([provider, objectVersionsModule], {
      store,
      logger: silentLogger,
    } as unknown as CoordinatorCore);
    cleanups.push(() => host.stop());

    const received: HeartbeatResponse[] = [];
    const detach = hooks.attach("node-1", (message) => received.push(message));
    cleanups.push(async () => detach());
    await waitFor("the whole set on the new stream", async () => announced(received).length === 2);
    expect(announced(received).sort()).toEqual(["config/prod/app@4", "secret/default/db@1"]);

    await store.put("/secrets/default/db", record("default", "db", 2));
    await waitFor("the change", async () => announced(received).includes("secret/default/db@2"));
    expect(announced(received)).toHaveLength(3);
    expect(
      JSON.stringify(received, (_k, v) => (typeof v === "bigint" ? String(v) : v)),
    ).not.toContain("SEALED-VALUE-NOT-SENT");
  });
});

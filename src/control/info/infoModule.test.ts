import { afterEach, describe, expect, it } from "vitest";
import { type InProcessApi, startInProcessApi } from "../api/testing/inProcessApi.js";
import { coordinatorModules } from "../modules/index.js";

let api: InProcessApi | undefined;
afterEach(async () => {
  await api?.close();
});

describe("the info module", () => {
  it("REQ-070 cloudless_coordinator_info names the cluster, the coordinator and the store; it is gone once stopped", async () => {
    api = await startInProcessApi();
    const { registry } = api.core.metrics;
    expect(await registry.getSingleMetricAsString("cloudless_coordinator_info")).toContain(
      'cloudless_coordinator_info{cluster="test",coordinator="coordinator-test",store="sqlite"} 1',
    );
    await api.close();
    api = undefined;
    expect(registry.getSingleMetric("cloudless_coordinator_info")).toBeUndefined();
  });

  it("REQ-070 the coordinator serves it: the module is in the module list", () => {
    expect(coordinatorModules.map((module) => module.name)).toContain("info");
  });
});

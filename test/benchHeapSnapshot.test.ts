import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { writeHeapSnapshot } from "node:v8";
import { afterEach, describe, expect, it } from "vitest";
import { summarizeHeapSnapshot } from "../bench/lib/heapSnapshot.js";

/** Objects with a constructor name nothing else in the process uses. */
class HeapSummaryMarker {
  constructor(readonly payload: number[]) {}
}

describe("benchmark heap snapshot summary", () => {
  let dir = "";
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("counts a real snapshot's objects by constructor, streamed line by line", async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cloudless-heap-"));
    const kept = Array.from({ length: 5_000 }, (_, i) => new HeapSummaryMarker([i, i + 1]));
    const file = writeHeapSnapshot(path.join(dir, "test.heapsnapshot"));
    const summary = await summarizeHeapSnapshot(file, 1_000);
    expect(kept).toHaveLength(5_000);
    const marker = summary.top.find((entry) => entry.name === "HeapSummaryMarker");
    expect(marker?.count).toBe(5_000);
    expect(summary.nodes).toBeGreaterThan(5_000);
    expect(summary.totalMiB).toBeGreaterThan(1);
    // Kinds are grouped, not listed string by string.
    expect(summary.top.some((entry) => entry.name === "(string)")).toBe(true);
  });
});

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { writeHeapSnapshot } from "node:v8";
import { afterEach, describe, expect, it } from "vitest";
import { readSnapshotParts, summarizeHeapSnapshot } from "../bench/lib/heapSnapshot.js";

/** Objects with a constructor name nothing else in the process uses. */
class HeapSummaryMarker {
  constructor(readonly payload: number[]) {}
}

describe("benchmark heap snapshot summary", () => {
  let dir = "";
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("counts a real snapshot's objects by constructor, streamed rather than parsed whole", async () => {
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

  /**
   * The same three nodes as V8 in Node 20 writes them (a line per node and per string,
   * a trace_node_id field) and as Node 24 does (each array on one line, no
   * trace_node_id), cut into chunks of every size from 1 to 13 characters.
   */
  it.each([
    [
      "Node 20",
      ["type", "name", "id", "self_size", "edge_count", "trace_node_id", "detachedness"],
      (nodes: number[][], strings: string[], header: string) =>
        `${header},\n"nodes":[${nodes.map((n) => n.join(",")).join("\n,")}],\n"edges":[1,2,3\n,4,5,6],\n"trace_tree":[[1,[2]]],\n"locations":[],\n"strings":[${strings.map((t) => JSON.stringify(t)).join(",\n")}]}`,
    ],
    [
      "Node 24",
      ["type", "name", "id", "self_size", "edge_count", "detachedness"],
      (nodes: number[][], strings: string[], header: string) =>
        `${header},\n"nodes":[${nodes.map((n) => n.join(",")).join(",")}],\n"edges":[1,2,3,4,5,6],\n"trace_tree":[],\n"locations":[],\n"strings":[${strings.map((t) => JSON.stringify(t)).join(",")}]}\n`,
    ],
  ])(
    "reads the %s layout from the snapshot's own field list, whatever its lines and chunks",
    async (_node, fields, write) => {
      const meta = {
        node_fields: fields,
        node_types: [
          ["hidden", "array", "string", "object"],
          "string",
          "number",
          "number",
          "number",
        ],
      };
      const header = `{"snapshot":{"meta":${JSON.stringify(meta)},"node_count":3,"note":"a } and a ] in a string"}`;
      const strings = ["", 'Quoted "name" \\ [x]', "Plain", "é ✓"];
      // type, name, id, self_size, then zeros for the remaining fields.
      const node = (type: number, name: number, size: number) => [
        ...[type, name, 1, size],
        ...Array.from({ length: fields.length - 4 }, () => 0),
      ];
      const text = write([node(3, 1, 40), node(3, 2, 24), node(2, 3, 16)], strings, header);
      for (let size = 1; size <= 13; size++) {
        const chunks = (async function* () {
          for (let at = 0; at < text.length; at += size) yield text.slice(at, at + size);
        })();
        const parts = await readSnapshotParts(chunks);
        expect(parts.meta?.node_fields, `chunks of ${size}`).toEqual(fields);
        expect(parts.nodes, `chunks of ${size}`).toEqual([
          ...node(3, 1, 40),
          ...node(3, 2, 24),
          ...node(2, 3, 16),
        ]);
        expect(parts.strings, `chunks of ${size}`).toEqual(strings);
      }
    },
  );
});

/**
 * Reads a V8 .heapsnapshot (node --heapsnapshot-signal) and says what the live heap is
 * made of: self size and count by constructor (objects), or by kind (strings, arrays,
 * code, closures…), like the Summary view of Chrome's memory tool.
 *
 * The file is JSON, but too big to parse whole (a snapshot of a large heap is longer
 * than the longest string V8 can hold), and its line breaks differ between V8 versions
 * (Node 20 writes a line per node and per string, Node 24 each array on one line). So
 * it is read as a stream of characters, whatever the lines: the `snapshot` header is
 * parsed as JSON, the `nodes` numbers and the `strings` are collected, everything else
 * is skipped. What a node's numbers mean comes from the header's own description
 * (`meta.node_fields`, `meta.node_types`), not from fixed offsets: V8 adds and drops
 * fields (Node 24 has no `trace_node_id`).
 */
import { createReadStream } from "node:fs";

export interface HeapEntry {
  name: string;
  count: number;
  selfMiB: number;
}

export interface HeapSummary {
  file: string;
  nodes: number;
  totalMiB: number;
  top: HeapEntry[];
}

interface Meta {
  node_fields: string[];
  node_types: [string[], ...unknown[]];
}

/** Kinds whose nodes are grouped under one name rather than by their own name. */
const groupedKinds: Record<string, string> = {
  string: "(string)",
  "concatenated string": "(string)",
  "sliced string": "(string)",
  code: "(compiled code)",
  closure: "(closure)",
  number: "(number)",
  hidden: "(system)",
  "object shape": "(object shape)",
  symbol: "(symbol)",
  bigint: "(bigint)",
  regexp: "(regexp)",
};

/** The parts of a snapshot the summary needs. */
export interface SnapshotParts {
  meta: Meta | undefined;
  nodes: number[];
  strings: string[];
}

export async function summarizeHeapSnapshot(file: string, topN = 25): Promise<HeapSummary> {
  const {
    meta,
    nodes: numbers,
    strings,
  } = await readSnapshotParts(createReadStream(file, { encoding: "utf8", highWaterMark: 1 << 20 }));
  if (!meta) throw new Error(`${file}: not a V8 heap snapshot (no snapshot.meta header)`);
  const fields = meta.node_fields.length;
  const typeField = meta.node_fields.indexOf("type");
  const nameField = meta.node_fields.indexOf("name");
  const sizeField = meta.node_fields.indexOf("self_size");
  if (fields === 0 || typeField < 0 || nameField < 0 || sizeField < 0) {
    throw new Error(
      `${file}: snapshot nodes lack type, name or self_size (fields: ${meta.node_fields.join(", ")})`,
    );
  }
  const types = meta.node_types[0];
  const groups = new Map<string, { count: number; bytes: number }>();
  let totalBytes = 0;
  for (let i = 0; i + fields <= numbers.length; i += fields) {
    const kind = types[numbers[i + typeField] as number] ?? "unknown";
    const bytes = numbers[i + sizeField] as number;
    const name =
      groupedKinds[kind] ??
      (kind === "object" || kind === "native"
        ? (strings[numbers[i + nameField] as number] ?? "(unknown)")
        : `(${kind})`);
    const group = groups.get(name) ?? { count: 0, bytes: 0 };
    group.count++;
    group.bytes += bytes;
    groups.set(name, group);
    totalBytes += bytes;
  }
  const mib = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;
  return {
    file,
    nodes: Math.floor(numbers.length / fields),
    totalMiB: mib(totalBytes),
    top: [...groups]
      .sort((a, b) => b[1].bytes - a[1].bytes)
      .slice(0, topN)
      .map(([name, g]) => ({ name: name.slice(0, 80), count: g.count, selfMiB: mib(g.bytes) })),
  };
}

type State =
  /** Before a top-level key, or between the previous value and the next key. */
  | "key"
  | "keyString"
  | "colon"
  | "value"
  /** The `snapshot` object: captured whole, then parsed as JSON. */
  | "header"
  /** The `nodes` array of unsigned integers. */
  | "numbers"
  /** The `strings` array: between two strings, or inside one. */
  | "strings"
  | "stringsItem"
  /** Any other value: skipped, counting brackets outside strings. */
  | "skip"
  | "done";

/**
 * Collects `snapshot.meta`, `nodes` and `strings` from the characters of a heap
 * snapshot, in whatever chunks and lines they come. Exported for its tests.
 */
export async function readSnapshotParts(chunks: AsyncIterable<string>): Promise<SnapshotParts> {
  const parts: SnapshotParts = { meta: undefined, nodes: [], strings: [] };
  let state: State = "key";
  let started = false;
  let key = "";
  /** Text of the value being captured (the header, a key, one string). */
  let captured = "";
  let depth = 0;
  let inString = false;
  let escaped = false;
  let number = -1;

  for await (const chunk of chunks) {
    let segmentStart = 0;
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk.charCodeAt(i);
      switch (state) {
        case "key":
          if (c === 0x7b /* { */ && !started) started = true;
          else if (c === 0x22 /* " */) {
            state = "keyString";
            key = "";
            segmentStart = i + 1;
          } else if (c === 0x7d /* } */) state = "done";
          break;
        case "keyString":
          if (c === 0x22) {
            key += chunk.slice(segmentStart, i);
            state = "colon";
          }
          break;
        case "colon":
          if (c === 0x3a /* : */) state = "value";
          break;
        case "value":
          if (isSpace(c)) break;
          depth = 1;
          inString = false;
          escaped = false;
          if (key === "snapshot" && c === 0x7b) {
            state = "header";
            captured = "";
            segmentStart = i;
          } else if (key === "nodes" && c === 0x5b /* [ */) {
            state = "numbers";
            number = -1;
          } else if (key === "strings" && c === 0x5b) {
            state = "strings";
          } else {
            state = "skip";
            // A scalar value ends at the next ',' or '}' at this level.
            if (c !== 0x5b && c !== 0x7b) depth = 0;
            if (c === 0x22) inString = true;
          }
          break;
        case "header": {
          const closed = skipCharacter(c);
          if (closed) {
            captured += chunk.slice(segmentStart, i + 1);
            parts.meta = (JSON.parse(captured) as { meta: Meta }).meta;
            state = "key";
          }
          break;
        }
        case "numbers":
          if (c >= 0x30 && c <= 0x39) number = (number < 0 ? 0 : number * 10) + (c - 0x30);
          else {
            if (number >= 0) parts.nodes.push(number);
            number = -1;
            if (c === 0x5d /* ] */) state = "key";
          }
          break;
        case "strings":
          if (c === 0x22) {
            state = "stringsItem";
            captured = "";
            escaped = false;
            segmentStart = i;
          } else if (c === 0x5d) state = "key";
          break;
        case "stringsItem":
          if (escaped) escaped = false;
          else if (c === 0x5c /* \ */) escaped = true;
          else if (c === 0x22) {
            captured += chunk.slice(segmentStart, i + 1);
            parts.strings.push(parseString(captured));
            state = "strings";
          }
          break;
        case "skip":
          if (depth === 0 && !inString && (c === 0x2c /* , */ || c === 0x7d)) {
            state = c === 0x7d ? "done" : "key";
          } else if (skipCharacter(c) && depth === 0) state = "key";
          break;
        case "done":
          break;
      }
    }
    // A value that goes on in the next chunk keeps what this one held of it.
    if (state === "header" || state === "stringsItem") captured += chunk.slice(segmentStart);
    else if (state === "keyString") key += chunk.slice(segmentStart);
  }
  return parts;

  /** Tracks strings and brackets in a skipped or captured value; true when it closes. */
  function skipCharacter(c: number): boolean {
    if (inString) {
      if (escaped) escaped = false;
      else if (c === 0x5c) escaped = true;
      else if (c === 0x22) inString = false;
      return false;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) depth++;
    else if (c === 0x5d || c === 0x7d) {
      depth--;
      return depth === 0;
    }
    return false;
  }
}

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

function parseString(literal: string): string {
  try {
    return JSON.parse(literal) as string;
  } catch {
    return "(unreadable)";
  }
}

/**
 * Reads a V8 .heapsnapshot (node --heapsnapshot-signal) and says what the live heap is
 * made of: self size and count by constructor (objects), or by kind (strings, arrays,
 * code, closures…), like the Summary view of Chrome's memory tool. Streamed line by line:
 * a snapshot of a large heap is longer than the longest string V8 can hold.
 */
import { createReadStream } from "node:fs";
import { createInterface } from "node:readline";

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

export async function summarizeHeapSnapshot(file: string, topN = 25): Promise<HeapSummary> {
  let meta: Meta | undefined;
  let section: "header" | "nodes" | "strings" | "other" = "header";
  let header = "";
  const numbers: number[] = [];
  const strings: string[] = [];
  const lines = createInterface({ input: createReadStream(file, "utf8"), crlfDelay: Infinity });
  for await (const line of lines) {
    if (section === "header") {
      header += line;
      if (!line.endsWith("},")) continue;
      meta = (JSON.parse(`${header.slice(0, -1)}}`) as { snapshot: { meta: Meta } }).snapshot.meta;
      section = "other";
      continue;
    }
    if (line.startsWith('"nodes":[')) {
      section = "nodes";
      pushNumbers(numbers, line.slice('"nodes":['.length));
      continue;
    }
    if (line.startsWith('"strings":[')) {
      section = "strings";
      strings.push(parseStringLine(line.slice('"strings":['.length)));
      continue;
    }
    // Another array begins ("edges", "locations"…); strings come last and are lines
    // that begin with a quote themselves.
    if (section !== "strings" && line.startsWith('"')) {
      section = "other";
      continue;
    }
    if (section === "nodes") pushNumbers(numbers, line);
    else if (section === "strings") strings.push(parseStringLine(line));
  }
  if (!meta) throw new Error(`${file}: not a V8 heap snapshot (no header)`);
  const fields = meta.node_fields.length;
  const typeField = meta.node_fields.indexOf("type");
  const nameField = meta.node_fields.indexOf("name");
  const sizeField = meta.node_fields.indexOf("self_size");
  const types = meta.node_types[0];
  const groups = new Map<string, { count: number; bytes: number }>();
  let totalBytes = 0;
  for (let i = 0; i + fields <= numbers.length; i += fields) {
    const kind = types[numbers[i + typeField]!] ?? "unknown";
    const bytes = numbers[i + sizeField]!;
    const name =
      groupedKinds[kind] ??
      (kind === "object" || kind === "native"
        ? (strings[numbers[i + nameField]!] ?? "(unknown)")
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

function pushNumbers(into: number[], text: string): void {
  for (const part of text.split(",")) {
    const trimmed = part.replace("]", "").trim();
    if (trimmed !== "") into.push(Number(trimmed));
  }
}

/** One string of the `strings` array: a JSON string, with a leading or trailing comma. */
function parseStringLine(line: string): string {
  let text = line.trim();
  if (text.startsWith(",")) text = text.slice(1);
  if (text.endsWith("]}")) text = text.slice(0, -2);
  if (text.endsWith(",")) text = text.slice(0, -1);
  try {
    return JSON.parse(text) as string;
  } catch {
    return "(unreadable)";
  }
}

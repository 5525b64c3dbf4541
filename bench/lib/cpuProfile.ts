/**
 * Reads a V8 .cpuprofile (node --cpu-prof) and says where the time went: self time by
 * function, inclusive time by function (each function counted once per sample), and
 * self time by package or area. Good enough to point at a hot spot, not a profiler UI.
 */
import { readFile } from "node:fs/promises";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileEntry {
  name: string;
  ms: number;
  percent: number;
}

export interface WindowSummary {
  totalMs: number;
  idlePercent: number;
  topSelf: ProfileEntry[];
  topInclusive: ProfileEntry[];
  byArea: ProfileEntry[];
}

export interface ProfileSummary extends WindowSummary {
  file: string;
  /** The same, per named wall-clock window (benchmark phases). */
  windows?: Record<string, WindowSummary>;
}

export interface ProfileWindow {
  name: string;
  startMs: number;
  endMs: number;
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) return url.slice(nm + "node_modules/".length);
  const dist = url.lastIndexOf("/dist/");
  if (dist >= 0) return url.slice(dist + 1);
  return url.replace(/^file:\/\//, "");
}

function label(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  const name = functionName || "(anonymous)";
  return url ? `${name} ${shortUrl(url)}:${lineNumber + 1}` : name;
}

function area(node: ProfileNode): string {
  const { url, functionName } = node.callFrame;
  if (!url) {
    if (functionName === "(idle)") return "(idle)";
    if (functionName === "(garbage collector)") return "(garbage collector)";
    if (functionName === "(program)") return "(program)";
    return "(native)";
  }
  if (url.startsWith("node:")) return `node:${url.slice(5).split("/")[0]}`;
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) {
    const rest = url.slice(nm + "node_modules/".length).split("/");
    return rest[0]!.startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  const dist = url.lastIndexOf("/dist/");
  if (dist >= 0) {
    const parts = url.slice(dist + 6).split("/");
    return `cloudless:${parts.slice(0, Math.min(2, parts.length - 1)).join("/") || parts[0]}`;
  }
  return "other";
}

class Accumulator {
  readonly self = new Map<string, number>();
  readonly inclusive = new Map<string, number>();
  readonly areas = new Map<string, number>();
  totalUs = 0;
  idleUs = 0;

  add(
    node: ProfileNode,
    deltaUs: number,
    byId: Map<number, ProfileNode>,
    parent: Map<number, number>,
  ) {
    this.totalUs += deltaUs;
    if (node.callFrame.functionName === "(idle)") {
      this.idleUs += deltaUs;
      return;
    }
    const name = label(node);
    this.self.set(name, (this.self.get(name) ?? 0) + deltaUs);
    const nodeArea = area(node);
    this.areas.set(nodeArea, (this.areas.get(nodeArea) ?? 0) + deltaUs);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const frame = byId.get(id)!;
      if (!frame.callFrame.url) continue;
      const frameName = label(frame);
      if (seen.has(frameName)) continue;
      seen.add(frameName);
      this.inclusive.set(frameName, (this.inclusive.get(frameName) ?? 0) + deltaUs);
    }
  }

  summary(top: number): WindowSummary {
    const busyUs = Math.max(1, this.totalUs - this.idleUs);
    const entries = (map: Map<string, number>, count: number): ProfileEntry[] =>
      [...map]
        .sort((a, b) => b[1] - a[1])
        .slice(0, count)
        .map(([name, us]) => ({
          name,
          ms: Math.round(us / 1000),
          percent: Math.round((1000 * us) / busyUs) / 10,
        }));
    return {
      totalMs: Math.round(this.totalUs / 1000),
      idlePercent: Math.round((1000 * this.idleUs) / Math.max(1, this.totalUs)) / 10,
      topSelf: entries(this.self, top),
      topInclusive: entries(this.inclusive, top),
      byArea: entries(this.areas, 15),
    };
  }
}

/**
 * Summarises a profile. With windows and the wall-clock time the profile ended (the
 * process exit), each sample is also credited to the window it falls in.
 */
export async function summarizeProfile(
  file: string,
  options: { top?: number; windows?: ProfileWindow[]; endWallMs?: number } = {},
): Promise<ProfileSummary> {
  const top = options.top ?? 20;
  const profile = JSON.parse(await readFile(file, "utf8")) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const whole = new Accumulator();
  const windows = new Map<string, Accumulator>();
  const canWindow = options.windows !== undefined && options.endWallMs !== undefined;
  let atUs = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    atUs += profile.timeDeltas[i] ?? 0;
    const deltaUs = profile.timeDeltas[i + 1] ?? 0;
    const node = byId.get(profile.samples[i]!);
    if (!node) continue;
    whole.add(node, deltaUs, byId, parent);
    if (canWindow) {
      const wallMs = options.endWallMs! - (profile.endTime - atUs) / 1000;
      const window = options.windows!.find((w) => wallMs >= w.startMs && wallMs < w.endMs);
      if (window) {
        let accumulator = windows.get(window.name);
        if (!accumulator) {
          accumulator = new Accumulator();
          windows.set(window.name, accumulator);
        }
        accumulator.add(node, deltaUs, byId, parent);
      }
    }
  }
  return {
    file,
    ...whole.summary(top),
    ...(windows.size > 0
      ? {
          windows: Object.fromEntries(
            [...windows].map(([name, accumulator]) => [name, accumulator.summary(top)]),
          ),
        }
      : {}),
  };
}

/**
 * Scrapes the coordinator's Prometheus endpoint (mTLS, admin certificate) and turns two
 * scrapes into a phase summary: memory breakdown, event-loop lag, and where request and
 * store time went. Each scrape costs the coordinator a full read of its replicas (the
 * replicas-by-phase gauge), so the benchmark scrapes only at phase boundaries.
 */
import { request } from "node:https";
import type { ClientCredentials } from "../../src/client/config.js";

export type Series = Map<string, number>;

export function scrapeMetrics(url: string, credentials: ClientCredentials): Promise<Series> {
  return new Promise((resolve, reject) => {
    const req = request(
      new URL("/metrics", url),
      {
        ca: credentials.caPem,
        cert: credentials.certPem,
        key: credentials.keyPem,
        timeout: 60_000,
        // The coordinator's certificate names a SPIFFE id, not necessarily this host.
        checkServerIdentity: () => undefined,
      },
      (response) => {
        let body = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => {
          body += chunk;
        });
        response.on("end", () => {
          if (response.statusCode !== 200) {
            reject(new Error(`/metrics answered ${response.statusCode}`));
            return;
          }
          resolve(parseMetrics(body));
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("/metrics timed out")));
    req.on("error", reject);
    req.end();
  });
}

export function parseMetrics(text: string): Series {
  const series: Series = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    const value = Number(line.slice(space + 1));
    if (Number.isFinite(value)) series.set(line.slice(0, space), value);
  }
  return series;
}

function delta(before: Series | undefined, after: Series, key: string): number {
  return (after.get(key) ?? 0) - (before?.get(key) ?? 0);
}

/** Sums of `<name>_sum` and `_count` by one label, as deltas between two scrapes. */
function byLabel(
  before: Series | undefined,
  after: Series,
  name: string,
  label: string,
  top = 8,
): { [key: string]: { seconds: number; count: number } } {
  const result = new Map<string, { seconds: number; count: number }>();
  const pattern = new RegExp(`^${name}_(sum|count)\\{(.*)\\}$`);
  for (const key of after.keys()) {
    const match = pattern.exec(key);
    if (!match) continue;
    const labelValue = new RegExp(`${label}="([^"]*)"`).exec(match[2]!)?.[1] ?? "";
    const entry = result.get(labelValue) ?? { seconds: 0, count: 0 };
    const d = delta(before, after, key);
    if (match[1] === "sum") entry.seconds += d;
    else entry.count += d;
    result.set(labelValue, entry);
  }
  return Object.fromEntries(
    [...result]
      .filter(([, v]) => v.count > 0)
      .sort((a, b) => b[1].seconds - a[1].seconds)
      .slice(0, top)
      .map(([k, v]) => [k, { seconds: Math.round(v.seconds * 100) / 100, count: v.count }]),
  );
}

const mib = (bytes: number | undefined) =>
  bytes === undefined ? undefined : Math.round(bytes / 2 ** 20);
const ms = (seconds: number | undefined) =>
  seconds === undefined ? undefined : Math.round(seconds * 10_000) / 10;

/** What happened in the coordinator between two scrapes (after a phase, vs. before it). */
export function summarizeScrapes(before: Series | undefined, after: Series) {
  const p = "cloudless_";
  const heapSpaces: Record<string, number> = {};
  for (const [key, value] of after) {
    const match = /^cloudless_nodejs_heap_space_size_used_bytes\{space="([^"]+)"\}$/.exec(key);
    if (match && value > 4 * 2 ** 20) heapSpaces[match[1]!] = mib(value)!;
  }
  return {
    memoryMiB: {
      rss: mib(after.get(`${p}process_resident_memory_bytes`)),
      heapUsed: mib(after.get(`${p}nodejs_heap_size_used_bytes`)),
      heapTotal: mib(after.get(`${p}nodejs_heap_size_total_bytes`)),
      external: mib(after.get(`${p}nodejs_external_memory_bytes`)),
      heapSpaces,
    },
    /** Since the previous scrape (prom-client resets the lag histogram on each collect). */
    eventLoopLagMs: {
      p50: ms(after.get(`${p}nodejs_eventloop_lag_p50_seconds`)),
      p99: ms(after.get(`${p}nodejs_eventloop_lag_p99_seconds`)),
      max: ms(after.get(`${p}nodejs_eventloop_lag_max_seconds`)),
    },
    gcSeconds:
      Math.round(
        [...after.keys()]
          .filter((k) => k.startsWith(`${p}nodejs_gc_duration_seconds_sum`))
          .reduce((sum, k) => sum + delta(before, after, k), 0) * 100,
      ) / 100,
    heartbeatsReceived: delta(before, after, `${p}heartbeats_received_total`),
    storeSeconds: byLabel(before, after, `${p}store_operation_duration_seconds`, "operation"),
    apiSeconds: byLabel(before, after, `${p}api_request_duration_seconds`, "method"),
    schedulerDecisions: {
      seconds:
        Math.round(delta(before, after, `${p}scheduler_decision_duration_seconds_sum`) * 100) / 100,
      count: delta(before, after, `${p}scheduler_decision_duration_seconds_count`),
    },
  };
}

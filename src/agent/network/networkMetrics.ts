/**
 * The agent's service-networking metrics (issue 14): per service port and endpoint,
 * connections, bytes, connect failures and ejections; per mesh peer, path and RTT; DNS
 * queries and answers. Endpoint and peer labels are replica ids and node names, against
 * the registry's usual rule, because an operator asks exactly "which endpoint fails";
 * they stay bounded because the series of an endpoint, service or peer that left are
 * removed (`retainEndpoints`, and the peer gauges are rebuilt at every scrape).
 */
import { Counter, Gauge, type Registry } from "prom-client";
import type { DnsStats } from "./networkTypes.js";

const prefix = "cloudless_agent_";

export interface EndpointLabels {
  namespace: string;
  service: string;
  port: string;
  endpoint: string;
}

type EndpointLabel = keyof EndpointLabels;
const endpointLabelNames: EndpointLabel[] = ["namespace", "service", "port", "endpoint"];

export interface PeerGaugeRow {
  node: string;
  path: string;
  rttMs: number;
}

export interface NetworkMetricsSources {
  peers(): PeerGaugeRow[];
  dns(): DnsStats | undefined;
}

export class NetworkMetrics {
  readonly connections: Counter<EndpointLabel>;
  readonly bytes: Counter<EndpointLabel | "direction">;
  readonly connectFailures: Counter<EndpointLabel>;
  readonly ejections: Counter<EndpointLabel>;
  readonly refused: Counter<"namespace" | "service" | "port" | "reason">;
  readonly peerPath: Gauge<"peer" | "path">;
  readonly peerRtt: Gauge<"peer">;
  private readonly dnsQueries: Counter<string>;
  private readonly dnsAnswers: Counter<string>;
  /** Label sets with series, so those of removed endpoints can be dropped. */
  private readonly endpointSeries = new Map<string, EndpointLabels>();
  private readonly serviceSeries = new Map<
    string,
    { namespace: string; service: string; port: string }
  >();
  private sources: NetworkMetricsSources | undefined;
  private dnsCounted: DnsStats = { queries: 0, answers: 0 };

  constructor(registry: Registry) {
    const registers = [registry];
    const self = this;
    this.connections = new Counter({
      name: `${prefix}proxy_connections_total`,
      help: "Connections the node's service proxy sent to an endpoint, by service port and endpoint (replica id).",
      labelNames: endpointLabelNames,
      registers,
    });
    this.bytes = new Counter({
      name: `${prefix}proxy_bytes_total`,
      help: "Bytes the service proxy carried, by service port, endpoint and direction (to_endpoint, from_endpoint); counted when a connection closes.",
      labelNames: [...endpointLabelNames, "direction"],
      registers,
    });
    this.connectFailures = new Counter({
      name: `${prefix}proxy_connect_failures_total`,
      help: "Connects from the service proxy to an endpoint that failed (refused, timed out, mesh dial failed), by service port and endpoint.",
      labelNames: endpointLabelNames,
      registers,
    });
    this.ejections = new Counter({
      name: `${prefix}proxy_ejections_total`,
      help: "Times an endpoint was ejected by outlier detection (consecutive connect failures), by service port and endpoint.",
      labelNames: endpointLabelNames,
      registers,
    });
    this.refused = new Counter({
      name: `${prefix}proxy_refused_connections_total`,
      help: "Client connections the service proxy reset, by service port and reason: NoEndpoint (none ready, or every attempt failed) or TooManyConnections.",
      labelNames: ["namespace", "service", "port", "reason"],
      registers,
    });
    this.peerPath = new Gauge({
      name: `${prefix}mesh_peer_path`,
      help: "1 for the mesh path this node uses to each peer now (direct, relayed, unreachable).",
      labelNames: ["peer", "path"],
      registers,
      collect() {
        const rows = self.sources?.peers() ?? [];
        this.reset();
        for (const row of rows) this.set({ peer: row.node, path: row.path }, 1);
      },
    });
    this.peerRtt = new Gauge({
      name: `${prefix}mesh_peer_rtt_seconds`,
      help: "Round-trip time to each mesh peer as the mesh last measured it.",
      labelNames: ["peer"],
      registers,
      collect() {
        const rows = self.sources?.peers() ?? [];
        this.reset();
        for (const row of rows) this.set({ peer: row.node }, row.rttMs / 1000);
      },
    });
    this.dnsQueries = new Counter({
      name: `${prefix}dns_queries_total`,
      help: "DNS queries the agent's name server received (UDP and TCP).",
      registers,
      collect() {
        self.catchUpDns();
      },
    });
    this.dnsAnswers = new Counter({
      name: `${prefix}dns_answers_total`,
      help: "DNS queries the agent's name server answered with records.",
      registers,
      collect() {
        self.catchUpDns();
      },
    });
  }

  /** Where the scrape-time gauges read from (the network module sets it once). */
  setSources(sources: NetworkMetricsSources): void {
    this.sources = sources;
  }

  /** Notes that `labels` has series (called before the first increment). */
  touchEndpoint(labels: EndpointLabels): void {
    this.endpointSeries.set(endpointKey(labels), labels);
    const service = { namespace: labels.namespace, service: labels.service, port: labels.port };
    this.serviceSeries.set(serviceKey(service), service);
  }

  touchServicePort(service: { namespace: string; service: string; port: string }): void {
    this.serviceSeries.set(serviceKey(service), service);
  }

  /**
   * Drops the series of every endpoint and service port not in `keep`, so the label sets
   * stay bounded by what the node routes to now.
   */
  retainEndpoints(
    keep: readonly EndpointLabels[],
    keepServices: readonly { namespace: string; service: string; port: string }[],
  ): void {
    const keys = new Set(keep.map(endpointKey));
    for (const [key, labels] of this.endpointSeries) {
      if (keys.has(key)) continue;
      this.endpointSeries.delete(key);
      this.connections.remove(labels);
      this.connectFailures.remove(labels);
      this.ejections.remove(labels);
      for (const direction of directions) this.bytes.remove({ ...labels, direction });
    }
    const serviceKeys = new Set(keepServices.map(serviceKey));
    for (const [key, labels] of this.serviceSeries) {
      if (serviceKeys.has(key)) continue;
      this.serviceSeries.delete(key);
      for (const reason of refusalReasons) this.refused.remove({ ...labels, reason });
    }
  }

  /** How many endpoint label sets have series (tests: bounded by the set). */
  get endpointSeriesCount(): number {
    return this.endpointSeries.size;
  }

  private catchUpDns(): void {
    const stats = this.sources?.dns();
    if (!stats) return;
    // The server's counts restart with it; a smaller count is a new server, counted anew.
    const queries =
      stats.queries >= this.dnsCounted.queries
        ? stats.queries - this.dnsCounted.queries
        : stats.queries;
    const answers =
      stats.answers >= this.dnsCounted.answers
        ? stats.answers - this.dnsCounted.answers
        : stats.answers;
    if (queries > 0) this.dnsQueries.inc(queries);
    if (answers > 0) this.dnsAnswers.inc(answers);
    this.dnsCounted = { queries: stats.queries, answers: stats.answers };
  }
}

export const directions = ["to_endpoint", "from_endpoint"] as const;
export const refusalReasons = ["NoEndpoint", "TooManyConnections"] as const;

function endpointKey(labels: EndpointLabels): string {
  return `${labels.namespace}\u0000${labels.service}\u0000${labels.port}\u0000${labels.endpoint}`;
}

function serviceKey(labels: { namespace: string; service: string; port: string }): string {
  return `${labels.namespace}\u0000${labels.service}\u0000${labels.port}`;
}

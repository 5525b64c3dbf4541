/**
 * What the agent's network module needs from the mesh, the VIP programmer and the DNS
 * server (issue 14, ADR 0046), as narrow interfaces. The real classes (mesh/meshNode.ts,
 * vips/serviceVips.ts, dns/dnsServer.ts) satisfy them structurally; tests use small
 * fakes. Keeping them here lets the proxy and the module be built and tested without
 * nftables, a second agent or a resolver.
 */
import type { Duplex } from "node:stream";
import type { MeshPeer, PeerPath, Service } from "../../api/gen/cloudless/v1/service_pb.js";

/** What a mesh connection is for: one service port of one replica on the remote node. */
export interface MeshTarget {
  namespace: string;
  service: string;
  /** The service port's name. */
  port: string;
  replicaId: string;
}

export interface MeshDialOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** W3C trace context of the proxied connection, continued by the remote agent. */
  traceparent?: string;
}

/** Opens flows to replicas on other nodes (the proxy's only use of the mesh). */
export interface MeshDialer {
  /** A byte stream to `target` on `node`; rejects when the peer or replica cannot be reached. */
  dial(node: string, target: MeshTarget, options?: MeshDialOptions): Promise<Duplex>;
}

/** The mesh as the network module runs it. */
export interface MeshRuntime extends MeshDialer {
  start(): Promise<{ port: number }>;
  setPeers(peers: MeshPeer[], coordinatorRelays: string[]): void;
  peers(): PeerPath[];
  stop(): Promise<void>;
}

/** What the module gives the mesh it creates. */
export interface MeshHooks {
  /** The host port on 127.0.0.1 of `target` when it is a replica on this node, else undefined. */
  resolveLocal(target: MeshTarget): number | undefined;
  onPathChange(peer: string, from: string, to: string, via: string): void;
}

/** One VIP:port the kernel sends to a local listener (nftables DNAT). */
export interface VipForward {
  vip: string;
  port: number;
  protocol: "tcp" | "udp";
  /** The listener's port on 127.0.0.1. */
  toPort: number;
}

/** Programs the node's VIP table (ServiceVips). */
export interface VipProgrammer {
  /** Replaces the whole set of forwards; `serviceCidr` is the cluster's range (from the snapshot). */
  apply(forwards: VipForward[], serviceCidr: string): Promise<void> | void;
  /** Removes the table (nothing of it stays). */
  remove(): Promise<void> | void;
}

/** What the DNS server counts; the module exports it as metrics. */
export interface DnsStats {
  queries: number;
  answers: number;
}

/** The agent's name server (DnsServer). */
export interface ServiceDirectory {
  setServices(domain: string, services: Service[]): void;
  start(): Promise<{ port: number }> | { port: number };
  stop(): Promise<void> | void;
  stats(): DnsStats;
}

/** DNS settings a container engine writes into a container's resolv.conf. */
export interface ContainerDns {
  servers: string[];
  search: string[];
  options: string[];
}

/** What a replica gets from service networking when it starts (replica wiring). */
export interface ReplicaNetworking {
  /** CLOUDLESS_SERVICE_<NAME>_HOST / _PORT / _PORT_<PORTNAME>. */
  env: Record<string, string>;
  /** Container replicas, when VIPs are on. */
  dns?: ContainerDns;
}

/**
 * Virtual IPs of services (REQ-041) from the cluster's service range (`--service-cidr`).
 * Pure: the caller restores what the store holds with `reserve` and writes what
 * `allocate` hands out. Never hands out the network address, `.1` (kept for a gateway,
 * as Kubernetes keeps the first address for its API service), the DNS address
 * (base + 10, where agents answer DNS) or the broadcast address.
 */

export interface ServiceCidr {
  /** As given, normalised: "10.43.0.0/16". */
  text: string;
  /** The network address as an unsigned 32-bit integer. */
  base: number;
  prefix: number;
  /** Addresses in the range, network and broadcast included. */
  size: number;
}

/** The widest and narrowest ranges accepted: /12 is a million addresses, /28 sixteen. */
export const serviceCidrPrefixMin = 12;
export const serviceCidrPrefixMax = 28;
/** The offset of the agents' DNS address in the range (10.43.0.10 in 10.43.0.0/16). */
export const dnsAddressOffset = 10;

/** Parses an IPv4 CIDR for services; throws an Error with a one-line reason. */
export function parseServiceCidr(text: string): ServiceCidr {
  const hint = `expected an IPv4 range such as 10.43.0.0/16 with a prefix from /${serviceCidrPrefixMin} to /${serviceCidrPrefixMax}`;
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(text.trim());
  if (!match) throw new Error(`service CIDR "${text}": ${hint}`);
  const octets = match.slice(1, 5).map(Number);
  const prefix = Number(match[5]);
  if (octets.some((octet) => octet > 255)) throw new Error(`service CIDR "${text}": ${hint}`);
  if (prefix < serviceCidrPrefixMin || prefix > serviceCidrPrefixMax) {
    throw new Error(`service CIDR "${text}": prefix /${prefix} is out of range; ${hint}`);
  }
  const address = ipv4ToInt(octets);
  const size = 2 ** (32 - prefix);
  const base = address - (address % size);
  if (base !== address) {
    throw new Error(
      `service CIDR "${text}": host bits are set; did you mean ${intToIpv4(base)}/${prefix}?`,
    );
  }
  return { text: `${intToIpv4(base)}/${prefix}`, base, prefix, size };
}

export function dnsAddressOf(cidr: ServiceCidr): string {
  return intToIpv4(cidr.base + dnsAddressOffset);
}

function ipv4ToInt(octets: number[]): number {
  return octets.reduce((value, octet) => value * 256 + octet, 0);
}

export function intToIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join(".");
}

function parseIpv4(text: string): number | undefined {
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!match) return undefined;
  const octets = match.slice(1, 5).map(Number);
  return octets.some((o) => o > 255) ? undefined : ipv4ToInt(octets);
}

export class VipAllocator {
  /** Offset in the range → the service ("namespace/name") holding it. */
  private readonly byOffset = new Map<number, string>();
  private readonly byService = new Map<string, number>();
  /**
   * Where the next search starts: after the last address handed out, so a released VIP
   * is reused last (a client's cached DNS answer then rarely reaches another service).
   */
  private cursor = 0;

  constructor(readonly cidr: ServiceCidr) {}

  /** Addresses a service may get: the range less network, .1, DNS and broadcast. */
  get capacity(): number {
    return this.cidr.size - 4;
  }

  get used(): number {
    return this.byService.size;
  }

  private usable(offset: number): boolean {
    return offset > 1 && offset < this.cidr.size - 1 && offset !== dnsAddressOffset && offset >= 0;
  }

  /**
   * Restores a stored VIP. False when it is not a usable address of this range (the
   * range changed) or another service holds it: the caller then allocates anew.
   */
  reserve(service: string, vip: string): boolean {
    const address = parseIpv4(vip);
    if (address === undefined) return false;
    const offset = address - this.cidr.base;
    if (!this.usable(offset)) return false;
    const holder = this.byOffset.get(offset);
    if (holder !== undefined && holder !== service) return false;
    this.releaseService(service);
    this.byOffset.set(offset, service);
    this.byService.set(service, offset);
    return true;
  }

  /** The service's VIP: the one it holds, else a free one; undefined when the range is full. */
  allocate(service: string): string | undefined {
    const held = this.byService.get(service);
    if (held !== undefined) return intToIpv4(this.cidr.base + held);
    if (this.used >= this.capacity) return undefined;
    // Bounded: at most one pass over the range, which has a free usable address.
    for (let step = 0; step < this.cidr.size; step++) {
      const offset = (this.cursor + step) % this.cidr.size;
      if (!this.usable(offset) || this.byOffset.has(offset)) continue;
      this.byOffset.set(offset, service);
      this.byService.set(service, offset);
      this.cursor = (offset + 1) % this.cidr.size;
      return intToIpv4(this.cidr.base + offset);
    }
    return undefined;
  }

  vipOf(service: string): string | undefined {
    const offset = this.byService.get(service);
    return offset === undefined ? undefined : intToIpv4(this.cidr.base + offset);
  }

  release(service: string): void {
    this.releaseService(service);
  }

  private releaseService(service: string): void {
    const offset = this.byService.get(service);
    if (offset === undefined) return;
    this.byService.delete(service);
    this.byOffset.delete(offset);
  }
}

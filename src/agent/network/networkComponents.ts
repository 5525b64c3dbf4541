/**
 * How the agent composes its network module: the flags (`--mesh-port`, `--service-vips`,
 * …) as options, and the three parts the module drives (the mesh, the VIP table, the name
 * server) as factories. `defaultNetworkComponents` is the one place that names the real
 * classes; the in-process tests and the hollow-node simulator pass their own or none.
 */
import { isIP } from "node:net";
import type { Clock } from "../../lib/clock.js";
import type { Logger } from "../../observe/logger.js";
import type { MeshHooks, MeshRuntime, ServiceDirectory, VipProgrammer } from "./networkTypes.js";

export type ServiceVipMode = "auto" | "on" | "off";

/** The mesh listener's default port (the coordinator's API is 7443). */
export const defaultMeshPort = 7444;
/** The name server's default port on 127.0.0.1; the DNS VIP forwards port 53 to it. */
export const defaultDnsPort = 10_053;
/** --advertise-address values at most: a node has a handful of addresses worth dialling. */
export const maxAdvertiseAddresses = 16;

export interface AgentNetworkOptions {
  /** --mesh-port; 0 picks a free port (tests, several agents on one host). */
  meshPort: number;
  /** --mesh-host: the address the mesh listens on. */
  meshHost: string;
  /** --advertise-address: where other nodes can dial this one. */
  advertiseAddresses: string[];
  /** --relay: join streams for nodes behind NAT. */
  relay: boolean;
  /** --service-vips: program the VIP table (auto: when this host can). */
  serviceVips: ServiceVipMode;
  /** --dns-port on 127.0.0.1; 0 picks a free port. */
  dnsPort: number;
  /** The parts; default defaultNetworkComponents(). */
  components?: NetworkComponents;
}

/** The node's credentials as the mesh reads them (they change when the certificate renews). */
export interface MeshIdentity {
  clusterName: string;
  nodeName: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

export interface MeshConstruction extends MeshHooks {
  identity: () => MeshIdentity;
  host: string;
  port: number;
  relay: boolean;
  logger: Logger;
  clock: Clock;
}

export interface NetworkComponents {
  createMesh?: (options: MeshConstruction) => MeshRuntime;
  vips?: {
    /** Why this host cannot program VIPs (no nft, not root), or undefined when it can. */
    unavailableReason(): string | undefined | Promise<string | undefined>;
    create(logger: Logger): VipProgrammer;
  };
  createDns?: (options: { host: string; port: number; logger: Logger }) => ServiceDirectory;
}

/**
 * The real mesh, VIP table and name server. They are built in their own folders
 * (mesh/, vips/, dns/) and plugged in here when the branches meet; until then the
 * module runs the proxy alone: endpoints on this node only, no VIPs, no DNS.
 */
export function defaultNetworkComponents(): NetworkComponents {
  return {};
}

/**
 * The VIP table per --service-vips: `off` none; `auto` one when the host can program
 * it; `on` one, or a one-line error saying why not.
 */
export async function vipsFor(
  mode: ServiceVipMode,
  components: NetworkComponents,
  logger: Logger,
): Promise<VipProgrammer | undefined> {
  if (mode === "off") return undefined;
  const vips = components.vips;
  const reason = vips
    ? await vips.unavailableReason()
    : "this build has no service VIP support (nftables)";
  if (reason === undefined && vips) return vips.create(logger);
  if (mode === "on") {
    throw new Error(
      `--service-vips on: ${reason}; fix that or start with --service-vips auto or off`,
    );
  }
  logger.info(
    { reason },
    "service VIPs are off (--service-vips auto): replicas reach services through 127.0.0.1 and the proxy's ports",
  );
  return undefined;
}

/** The agent command's network flags as given (strings, before checking). */
export interface NetworkFlags {
  meshPort: string;
  meshHost: string;
  advertiseAddress: string[];
  relay: boolean;
  serviceVips: string;
  dnsPort: string;
}

/**
 * Checks the agent's network flags; throws an Error whose message is one line naming the
 * flag, what was wrong and what to give instead.
 */
export function parseNetworkFlags(flags: NetworkFlags): AgentNetworkOptions {
  const meshPort = portFlag("--mesh-port", flags.meshPort);
  const dnsPort = portFlag("--dns-port", flags.dnsPort);
  if (isIP(flags.meshHost) === 0) {
    throw new Error(
      `--mesh-host ${flags.meshHost}: expected an IP address to listen on, such as 0.0.0.0 or 10.0.0.5`,
    );
  }
  if (flags.advertiseAddress.length > maxAdvertiseAddresses) {
    throw new Error(
      `--advertise-address given ${flags.advertiseAddress.length} times; at most ${maxAdvertiseAddresses} (limit maxAdvertiseAddresses)`,
    );
  }
  const advertiseAddresses: string[] = [];
  for (const address of flags.advertiseAddress) {
    if (isIP(address) === 0) {
      throw new Error(
        `--advertise-address ${address}: expected an IP address other nodes can dial, such as 203.0.113.5`,
      );
    }
    // Nobody can dial "any address".
    if (address === "0.0.0.0" || address === "::") {
      throw new Error(
        `--advertise-address ${address}: an unspecified address cannot be dialled; give this node's reachable IP`,
      );
    }
    if (!advertiseAddresses.includes(address)) advertiseAddresses.push(address);
  }
  const serviceVips = flags.serviceVips;
  if (serviceVips !== "auto" && serviceVips !== "on" && serviceVips !== "off") {
    throw new Error(`--service-vips ${serviceVips}: expected auto, on or off`);
  }
  return {
    meshPort,
    meshHost: flags.meshHost,
    advertiseAddresses,
    relay: flags.relay,
    serviceVips,
    dnsPort,
  };
}

function portFlag(flag: string, text: string): number {
  const port = /^\d{1,5}$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new Error(`${flag} ${text}: expected a port number from 0 to 65535 (0 picks a free one)`);
  }
  return port;
}

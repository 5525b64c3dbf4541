/**
 * The real parts of the agent's network module (ADR 0046): the mTLS mesh (mesh/), the
 * nftables VIP table (vips/) and the name server (dns/), adapted to the narrow interfaces
 * the module drives (networkTypes.ts). Kept apart from networkComponents.ts so that the
 * module's own tests never load nftables or TLS code they do not use.
 */

import { systemClock } from "../../lib/clock.js";
import type { Logger } from "../../observe/logger.js";
import { DnsServer } from "./dns/dnsServer.js";
import { MeshNode } from "./mesh/meshNode.js";
import type { NetworkComponents } from "./networkComponents.js";
import type { VipForward, VipProgrammer } from "./networkTypes.js";
import { ServiceVips } from "./vips/serviceVips.js";

/** The one nftables table the agent owns (ip family). */
export const vipTableName = "cloudless";

/**
 * The VIP table for the service range the coordinator names: it is known only from the
 * first snapshot, and a changed range (a re-created cluster) replaces the table.
 */
class SnapshotVips implements VipProgrammer {
  private current: { cidr: string; vips: ServiceVips } | undefined;

  constructor(private readonly logger: Logger) {}

  async apply(forwards: VipForward[], serviceCidr: string): Promise<void> {
    if (this.current?.cidr !== serviceCidr) {
      await this.current?.vips.remove();
      this.current = {
        cidr: serviceCidr,
        vips: new ServiceVips({ table: vipTableName, serviceCidr, logger: this.logger }),
      };
    }
    await this.current.vips.apply(forwards);
  }

  async remove(): Promise<void> {
    await this.current?.vips.remove();
    this.current = undefined;
  }
}

export function realNetworkComponents(): NetworkComponents {
  return {
    createMesh: (options) =>
      new MeshNode({
        identity: options.identity,
        host: options.host,
        port: options.port,
        relay: options.relay,
        resolveLocal: (target) => options.resolveLocal(target),
        logger: options.logger,
        clock: options.clock,
        onPathChange: (peer, from, to, via) => options.onPathChange(peer, from, to, via),
      }),
    vips: {
      unavailableReason: () => ServiceVips.unavailableReason(),
      create: (logger) => new SnapshotVips(logger),
    },
    createDns: (options) => {
      const server = new DnsServer({
        host: options.host,
        port: options.port,
        logger: options.logger,
        clock: systemClock,
      });
      return {
        setServices: (domain, services) => server.setServices(domain, services),
        start: () => server.start(),
        stop: () => server.stop(),
        stats: () => {
          const stats = server.stats();
          return { queries: stats.queries, answers: stats.answered };
        },
      };
    },
  };
}

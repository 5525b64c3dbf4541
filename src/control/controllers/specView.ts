import type { Placement, Resources, Toleration } from "../scheduler/types.js";

/**
 * What the controllers read from an applied workload document (defaults already
 * applied by the schema). Kept narrow so the controllers do not depend on every
 * field of the spec.
 */
export interface AppliedSpecView {
  metadata: { name: string; namespace: string };
  spec: {
    image?: string;
    command?: string[];
    resources: Resources;
    replicas: number;
    minAvailable: number;
    rollout: { maxSurge: number; maxUnavailable: number };
    placement: {
      strategy: "binpack" | "spread";
      regions: { required: string[]; preferred: string[] };
      zones: { required: string[]; preferred: string[] };
      antiAffinity: boolean;
      spreadAcrossZones: boolean;
      nodeSelector: Record<string, string>;
      tolerations: Toleration[];
      /** Absent in specs applied before it existed: then true, the default. */
      rebalance?: boolean;
    };
  };
}

export function asSpecView(spec: unknown): AppliedSpecView {
  return spec as AppliedSpecView;
}

export function driverOfSpec(spec: AppliedSpecView): "container" | "process" {
  return spec.spec.image ? "container" : "process";
}

/** Whether the rebalancer may move this workload's replicas (ADR 0035). */
export function rebalanceOf(spec: AppliedSpecView): boolean {
  return spec.spec.placement.rebalance ?? true;
}

export function placementOf(spec: AppliedSpecView): Placement {
  const placement = spec.spec.placement;
  return {
    strategy: placement.strategy,
    regions: placement.regions,
    zones: placement.zones,
    antiAffinity: placement.antiAffinity,
    spreadAcrossZones: placement.spreadAcrossZones,
    nodeSelector: placement.nodeSelector,
    tolerations: placement.tolerations,
  };
}

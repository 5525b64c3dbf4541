import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import type { Placement } from "../scheduler/types.js";

/**
 * An applied workload document as the store holds it (the parser's output, defaults
 * applied): the schema's own type (api/workload/spec.ts), not a mirror of it. Specs
 * applied before a field existed lack it, so readers default what they need (rebalance).
 */
export type AppliedSpecView = WorkloadSpecDocument;

/**
 * The stored document, typed. Not re-parsed: a re-parse reorders keys (the minAvailable
 * transform), which would change the spec text and digest sent to agents, and the API
 * parsed it before storing it (ADR 0044).
 */
export function asSpecView(spec: unknown): AppliedSpecView {
  return spec as AppliedSpecView;
}

export function driverOfSpec(spec: AppliedSpecView): "container" | "process" {
  return spec.spec.image ? "container" : "process";
}

/** Whether the rebalancer may move this workload's replicas (ADR 0035). */
export function rebalanceOf(spec: AppliedSpecView): boolean {
  // Absent in specs applied before it existed: then true, the default.
  return (spec.spec.placement.rebalance as boolean | undefined) ?? true;
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

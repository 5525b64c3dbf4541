/**
 * What the policies judge about a workload, read from its spec (the edge where a spec
 * becomes policy facts). Fields of a `securityContext` are read when the spec has them;
 * without one a replica of either driver runs as its workload's unprivileged dynamic user
 * with no capabilities and the default seccomp filter (ADR 0050, 0054) — a container no
 * longer runs as its image says — so what the spec states is what the replica gets, and
 * `runAsRoot` rules judge `runAsUser: 0` for both drivers.
 */
import type { WorkloadSpecDocument } from "../workload/spec.js";
import type { WorkloadFacts } from "./evaluate.js";

interface SecurityContextView {
  runAsUser?: unknown;
  capabilitiesAdd?: unknown;
  seccompProfile?: unknown;
}

export function workloadFacts(doc: WorkloadSpecDocument): WorkloadFacts {
  const security = ((doc.spec as { securityContext?: SecurityContextView }).securityContext ??
    {}) as SecurityContextView;
  const capabilities = Array.isArray(security.capabilitiesAdd)
    ? security.capabilitiesAdd.filter((c): c is string => typeof c === "string")
    : [];
  return {
    namespace: doc.metadata.namespace,
    name: doc.metadata.name,
    labels: doc.metadata.labels,
    ...(doc.spec.image !== undefined ? { image: doc.spec.image } : {}),
    runsAsRoot: security.runAsUser === 0,
    capabilitiesAdded: capabilities,
    seccompUnconfined: security.seccompProfile === "unconfined",
  };
}

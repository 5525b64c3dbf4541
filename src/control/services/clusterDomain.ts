/** The cluster's DNS domain (`--cluster-domain`): service names end in `.svc.<domain>`. */

export const defaultClusterDomain = "cluster.local";
export const defaultServiceCidr = "10.43.0.0/16";

const labelPattern = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/**
 * A service's name is `<63>.<63>.svc.<domain>` and a DNS name is at most 253 characters:
 * 100 leaves room for the longest service and namespace names.
 */
export const maxClusterDomainChars = 100;

/** Parses a cluster domain; throws an Error with a one-line reason. */
export function parseClusterDomain(text: string): string {
  const domain = text.trim().replace(/\.$/, "");
  const hint =
    "expected a DNS name such as cluster.local: dot-separated labels of lowercase letters, " +
    `digits and '-', at most ${maxClusterDomainChars} characters`;
  if (domain.length === 0 || domain.length > maxClusterDomainChars) {
    throw new Error(`cluster domain "${text.slice(0, 120)}": ${hint}`);
  }
  for (const label of domain.split(".")) {
    if (!labelPattern.test(label)) throw new Error(`cluster domain "${text}": ${hint}`);
  }
  return domain;
}

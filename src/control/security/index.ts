/** Public surface of the cluster's identity and security primitives (named exports only). */
export type { Action, AuthorizationResult, Identity, IdentityKind } from "./identity.js";
export { authorize } from "./identity.js";
export type {
  CaCreateOptions,
  CertificateIdentity,
  CertificateUsage,
  IssuedCertificate,
  IssueOptions,
  NameValidation,
  PkiErrorKind,
  SpiffeId,
} from "./pki.js";
export {
  CA_CERT_FILE,
  CA_KEY_FILE,
  CertificateAuthority,
  CLOCK_SKEW_ALLOWANCE_MS,
  certificateValidity,
  clusterIdFromCaPem,
  clusterIdFromFingerprint,
  createCertificateAuthority,
  generateKeyAndCsr,
  identityFromCertificate,
  loadOrCreateCa,
  PkiError,
  parseSpiffeUri,
  renewalDueAtMs,
  spiffeUri,
  validateClusterName,
  validateNodeName,
  verifyIssuedBy,
} from "./pki.js";
export type { GeneratedToken, ParsedToken } from "./tokens.js";
export {
  generateToken,
  hashTokenSecret,
  parseToken,
  redactToken,
  secretMatches,
  TOKEN_PREFIX,
} from "./tokens.js";

/**
 * The checks on a secret's name and data (REQ-063), shared by the CLI (before it sends) and
 * the coordinator (before any work), so both refuse with the same words (ADR 0026). Errors
 * name the field, key and limit, never a value. The checks themselves are shared with
 * configs (keyValueData.ts); only the limits differ.
 */
import { type KeyValueLimits, validateKeyValueData, validateObjectName } from "./keyValueData.js";
import { limits } from "./limits.js";

export const secretDataLimits: KeyValueLimits = {
  noun: "secret",
  keys: { max: limits.secretKeysPerSecret, limit: "secretKeysPerSecret" },
  keyNameChars: { max: limits.secretKeyNameChars, limit: "secretKeyNameChars" },
  valueBytes: { max: limits.secretValueBytes, limit: "secretValueBytes" },
  totalBytes: { max: limits.secretTotalBytes, limit: "secretTotalBytes" },
};

/** Checks a namespace and name (DNS labels, as for workloads); errors name the field. */
export function validateSecretName(namespace: string, name: string): void {
  validateObjectName(namespace, name);
}

/**
 * Checks a secret's data against the limits before any work; errors name the key and the
 * limit, never a value.
 */
export function validateSecretData(data: ReadonlyMap<string, Uint8Array>): void {
  validateKeyValueData(data, secretDataLimits);
}

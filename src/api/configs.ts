/**
 * The checks on a config's name and data (issue 15, configuration with hot reload), shared
 * by the CLI (before it sends) and the coordinator (before any work), so both refuse with
 * the same words (ADR 0026). The same checks as secrets (keyValueData.ts) with the config
 * limits: a config has no per-value bound of its own, so one value may fill the total.
 */
import { type KeyValueLimits, validateKeyValueData, validateObjectName } from "./keyValueData.js";
import { limits } from "./limits.js";

export const configDataLimits: KeyValueLimits = {
  noun: "config",
  keys: { max: limits.configKeysPerConfig, limit: "configKeysPerConfig" },
  keyNameChars: { max: limits.configKeyNameChars, limit: "configKeyNameChars" },
  valueBytes: { max: limits.configTotalBytes, limit: "configTotalBytes" },
  totalBytes: { max: limits.configTotalBytes, limit: "configTotalBytes" },
};

/** Checks a namespace and name (DNS labels, as for workloads); errors name the field. */
export function validateConfigName(namespace: string, name: string): void {
  validateObjectName(namespace, name);
}

/** Checks a config's data against the limits before any work; errors name key and limit. */
export function validateConfigData(data: ReadonlyMap<string, Uint8Array>): void {
  validateKeyValueData(data, configDataLimits);
}

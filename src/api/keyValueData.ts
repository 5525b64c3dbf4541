/**
 * The checks shared by secrets and configs (REQ-063, issue 15): both are a namespaced name
 * and a map of keys (file names under a mount path) to values, bounded by per-kind limits.
 * Used by the CLI (before it sends) and the coordinator (before any work), so both refuse
 * with the same words (ADR 0026). Errors name the field, key and limit, never a value.
 */
import { CloudlessError } from "./errors.js";
import { formatBytes, type LimitName, limitRef } from "./limits.js";

const dnsLabelPattern = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** A key becomes a file name under the mount path: no slashes, not "." or "..". */
const keyNamePattern = /^[-._a-zA-Z0-9]+$/;

/** Checks a namespace and name (DNS labels, as for workloads); errors name the field. */
export function validateObjectName(namespace: string, name: string): void {
  for (const [field, value] of [
    ["namespace", namespace],
    ["name", name],
  ] as const) {
    if (value.length > 63 || !dnsLabelPattern.test(value)) {
      throw CloudlessError.invalid(
        `${field} "${value.slice(0, 80)}" must be a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit`,
      );
    }
  }
}

/** The limits of one kind of key/value object, each with the limit's name for the error. */
export interface KeyValueLimits {
  /** "secret" or "config": how errors name the object. */
  noun: string;
  keys: { max: number; limit: LimitName };
  keyNameChars: { max: number; limit: LimitName };
  valueBytes: { max: number; limit: LimitName };
  totalBytes: { max: number; limit: LimitName };
}

/** Checks a key/value object's data against its limits before any work. */
export function validateKeyValueData(
  data: ReadonlyMap<string, Uint8Array>,
  bounds: KeyValueLimits,
): void {
  const { noun } = bounds;
  if (data.size === 0) {
    throw CloudlessError.invalid(
      `a ${noun} needs at least one key; give --from-literal or --from-file`,
    );
  }
  if (data.size > bounds.keys.max) {
    throw CloudlessError.invalid(
      `a ${noun} holds at most ${bounds.keys.max} keys, got ${data.size} ${limitRef(bounds.keys.limit)}; split it into several ${noun}s`,
    );
  }
  let totalBytes = 0;
  for (const [key, value] of data) {
    if (
      key.length > bounds.keyNameChars.max ||
      !keyNamePattern.test(key) ||
      key === "." ||
      key === ".."
    ) {
      throw CloudlessError.invalid(
        `${noun} key "${key.slice(0, 80)}" must be 1 to ${bounds.keyNameChars.max} letters, digits, '-', '_' or '.' (it becomes a file name) ${limitRef(bounds.keyNameChars.limit)}`,
      );
    }
    if (value.byteLength > bounds.valueBytes.max) {
      throw CloudlessError.invalid(
        `the value of ${noun} key "${key}" is larger than ${formatBytes(bounds.valueBytes.max)} ${limitRef(bounds.valueBytes.limit)}`,
      );
    }
    totalBytes += value.byteLength;
  }
  if (totalBytes > bounds.totalBytes.max) {
    throw CloudlessError.invalid(
      `the values of one ${noun} are larger than ${formatBytes(bounds.totalBytes.max)} together ${limitRef(bounds.totalBytes.limit)}; split it into several ${noun}s`,
    );
  }
}

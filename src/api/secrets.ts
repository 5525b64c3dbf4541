/**
 * The checks on a secret's name and data (REQ-063), shared by the CLI (before it sends) and
 * the coordinator (before any work), so both refuse with the same words (ADR 0026). Errors
 * name the field, key and limit, never a value.
 */
import { CloudlessError } from "./errors.js";
import { formatBytes, limitRef, limits } from "./limits.js";

const dnsLabelPattern = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** A key becomes a file name under the mount path: no slashes, not "." or "..". */
const keyNamePattern = /^[-._a-zA-Z0-9]+$/;

/** Checks a namespace and name (DNS labels, as for workloads); errors name the field. */
export function validateSecretName(namespace: string, name: string): void {
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

/**
 * Checks a secret's data against the limits before any work; errors name the key and the
 * limit, never a value.
 */
export function validateSecretData(data: ReadonlyMap<string, Uint8Array>): void {
  if (data.size === 0) {
    throw CloudlessError.invalid(
      "a secret needs at least one key; give --from-literal or --from-file",
    );
  }
  if (data.size > limits.secretKeysPerSecret) {
    throw CloudlessError.invalid(
      `a secret holds at most ${limits.secretKeysPerSecret} keys, got ${data.size} ${limitRef("secretKeysPerSecret")}; split it into several secrets`,
    );
  }
  let totalBytes = 0;
  for (const [key, value] of data) {
    if (
      key.length > limits.secretKeyNameChars ||
      !keyNamePattern.test(key) ||
      key === "." ||
      key === ".."
    ) {
      throw CloudlessError.invalid(
        `secret key "${key.slice(0, 80)}" must be 1 to ${limits.secretKeyNameChars} letters, digits, '-', '_' or '.' (it becomes a file name) ${limitRef("secretKeyNameChars")}`,
      );
    }
    if (value.byteLength > limits.secretValueBytes) {
      throw CloudlessError.invalid(
        `the value of secret key "${key}" is larger than ${formatBytes(limits.secretValueBytes)} ${limitRef("secretValueBytes")}`,
      );
    }
    totalBytes += value.byteLength;
  }
  if (totalBytes > limits.secretTotalBytes) {
    throw CloudlessError.invalid(
      `the values of one secret are larger than ${formatBytes(limits.secretTotalBytes)} together ${limitRef("secretTotalBytes")}; split it into several secrets`,
    );
  }
}

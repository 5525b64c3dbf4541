import { CloudlessError } from "../../lib/errors.js";

/** Bounds on what a request may carry, so a malformed or hostile request is refused early. */
export const limits = {
  csrPemBytes: 16 * 1024,
  labelCount: 64,
  labelKeyBytes: 63,
  labelValueBytes: 253,
  localityBytes: 63,
  descriptionBytes: 256,
} as const;

const labelKeyPattern = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$/;
const localityPattern = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function validateLabels(labels: Record<string, string>, field = "labels"): void {
  const entries = Object.entries(labels);
  if (entries.length > limits.labelCount) {
    throw CloudlessError.invalid(`${field}: at most ${limits.labelCount} labels are allowed`);
  }
  for (const [key, value] of entries) {
    if (!labelKeyPattern.test(key)) {
      throw CloudlessError.invalid(
        `${field}: label key "${key.slice(0, 80)}" is invalid; use letters, digits, '.', '_', '-', '/' (max 63 chars, alphanumeric at both ends)`,
      );
    }
    if (value.length > limits.labelValueBytes) {
      throw CloudlessError.invalid(
        `${field}: label "${key}" value is longer than ${limits.labelValueBytes} characters`,
      );
    }
  }
}

export function validateLocality(value: string, field: "region" | "zone"): void {
  if (value === "") return;
  if (!localityPattern.test(value)) {
    throw CloudlessError.invalid(
      `${field} "${value.slice(0, 80)}" is invalid; use lowercase letters, digits and '-' (max 63 chars)`,
    );
  }
}

import { CloudlessError } from "../../api/errors.js";
import { limitRef, limits } from "../../api/limits.js";

const labelKeyPattern = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$/;
const localityPattern = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function validateLabels(labels: Record<string, string>, field = "labels"): void {
  const entries = Object.entries(labels);
  if (entries.length > limits.labelCount) {
    throw CloudlessError.invalid(
      `${field}: at most ${limits.labelCount} labels are allowed ${limitRef("labelCount")}`,
    );
  }
  for (const [key, value] of entries) {
    if (!labelKeyPattern.test(key)) {
      throw CloudlessError.invalid(
        `${field}: label key "${key.slice(0, 80)}" is invalid; use letters, digits, '.', '_', '-', '/' (max 63 chars, alphanumeric at both ends)`,
      );
    }
    if (value.length > limits.labelValueChars) {
      throw CloudlessError.invalid(
        `${field}: label "${key}" value is longer than ${limits.labelValueChars} characters ${limitRef("labelValueChars")}`,
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
